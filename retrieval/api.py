"""REST API of the retrieval app (included under /api/ by ildreview/api_urls.py): a study's
similar-case results and the CAM overlays they point to. The same authentication, visibility
rules, errors and file serving as the cases app's API (`cases.api`)."""

from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.api.files import FileView, binary_response, file_errors, stored_file_response
from cases.api.schema import BAD_REQUEST
from cases.api.serializers import DiagnosisBriefSerializer
from cases.models import Study
from cases.selectors import study_get_visible
from retrieval.pipeline.progress import study_queue_get
from retrieval.selectors.review import K_MAX, similar_case_get_visible, study_result_for_api
from retrieval.services import CAM_SIDES, SEARCH_MODES

READY_STATES = (Study.Status.READY_FOR_REVIEW, Study.Status.REVIEWED)


class QueueSerializer(serializers.Serializer):
    """Where a study being processed stands while it waits (`progress.QueueState`)."""

    state = serializers.ChoiceField(choices=["queued", "between_stages"])
    position = serializers.IntegerField(allow_null=True, help_text="1 = next to start")
    total = serializers.IntegerField(allow_null=True, help_text="Runs waiting to start")
    estimate_s = serializers.IntegerField(
        allow_null=True, help_text="Seconds until it starts; null when unknown (no history)"
    )
    text = serializers.CharField()


class NotReadySerializer(serializers.Serializer):
    detail = serializers.CharField()
    status = serializers.CharField()
    progress_stage = serializers.CharField()
    progress_percent = serializers.IntegerField()
    queue = QueueSerializer(allow_null=True, help_text="Set while the study waits for a worker")


class SliceRefSerializer(serializers.Serializer):
    """A slice: its position and the URL of its PNG (lung window; `?preset=mediastinal`)."""

    id = serializers.IntegerField()
    index = serializers.IntegerField()
    series = serializers.IntegerField(source="series_id")
    image_url = serializers.SerializerMethodField()

    def get_image_url(self, slice_obj) -> str:
        url = reverse("cases:slice_png", args=[slice_obj.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url


class SimilarCaseSerializer(serializers.Serializer):
    """One retrieved reference case: its diagnosis, similarity, best slice pair and CAMs."""

    rank = serializers.IntegerField()
    reference_case = serializers.IntegerField(source="reference_case_id")
    study = serializers.IntegerField(source="reference_case.study_id")
    diagnosis = DiagnosisBriefSerializer(source="reference_case.diagnosis")
    score = serializers.FloatField(help_text="Cosine similarity of the best slice pair")
    n_hits = serializers.IntegerField()
    query_slice = SliceRefSerializer()
    reference_slice = SliceRefSerializer()
    query_cam_url = serializers.SerializerMethodField()
    reference_cam_url = serializers.SerializerMethodField()
    cam_status = serializers.SerializerMethodField(
        help_text="`ready` when both CAM URLs are set; `computing` while a worker computes the "
        "overlays (results are served before their CAMs: poll again)"
    )

    def get_cam_status(self, case) -> str:
        return "ready" if case.query_cam and case.reference_cam else "computing"

    def _file_url(self, case, side: str) -> str | None:
        # The overlay by the similar case's id (never its storage key); None until its explain
        # job (a worker, after the study is ready) stored it.
        if not (case.query_cam if side == "query" else case.reference_cam):
            return None
        url = reverse("api-file-similar-case-cam", args=[case.pk, side])
        request = self.context.get("request")
        return request.build_absolute_uri(url) if request else url

    def get_query_cam_url(self, case) -> str | None:
        return self._file_url(case, "query")

    def get_reference_cam_url(self, case) -> str | None:
        return self._file_url(case, "reference")


class LiveCaseSerializer(serializers.Serializer):
    """One reference case of a worker's live answer (class-first search): ids, no CAM URLs
    (the review page computes those on demand)."""

    rank = serializers.IntegerField()
    reference_case = serializers.IntegerField(source="reference_case.pk")
    study = serializers.IntegerField(source="reference_case.study_id")
    diagnosis = DiagnosisBriefSerializer(source="reference_case.diagnosis")
    score = serializers.FloatField(help_text="Case similarity")
    n_hits = serializers.IntegerField()
    query_slice = serializers.IntegerField(source="query_slice_id")
    reference_slice = serializers.IntegerField(source="reference_slice_id")


class StudyResultSerializer(serializers.Serializer):
    """The similar-case answer for a study under the model version that produced it."""

    study = serializers.IntegerField(source="study_id")
    model_version = serializers.CharField(source="model_version.name")
    created_at = serializers.DateTimeField()
    suggested_diagnosis = DiagnosisBriefSerializer(
        allow_null=True, help_text="null when the model abstained (no close match)"
    )
    votes = serializers.DictField(
        child=serializers.FloatField(),
        help_text="Share of the similarity-weighted, class-balanced votes per diagnosis code",
    )
    abstained = serializers.BooleanField(
        help_text="No close match: the best similarity or the vote margin is below the model's "
        "thresholds"
    )
    abstain_reason = serializers.CharField(allow_blank=True)
    top_similarity = serializers.FloatField(
        allow_null=True, help_text="Best (query slice, reference slice) cosine similarity"
    )
    vote_margin = serializers.FloatField(
        allow_null=True, help_text="Heaviest diagnosis's vote share minus the runner-up's"
    )
    key_slice = SliceRefSerializer(allow_null=True)
    query_slice_count = serializers.IntegerField()
    excluded_slice_count = serializers.IntegerField()
    similar_cases = SimilarCaseSerializer(many=True, source="ordered_cases")


class ClassFirstResultSerializer(serializers.Serializer):
    """`mode=hierarchical`: the class-first search's cases beside the stored suggestion."""

    mode = serializers.CharField()
    predicted_class = serializers.CharField(
        allow_null=True, help_text="The diagnosis code the search was restricted to"
    )
    k = serializers.IntegerField()
    similar_cases = LiveCaseSerializer(many=True)


class PendingSearchSerializer(serializers.Serializer):
    detail = serializers.CharField()
    mode = serializers.CharField()


class StudyResultsView(APIView):
    @extend_schema(
        summary="Similar-case results of a study",
        description="Top similar reference cases with scores, best slice pairs and CAM image "
        "URLs, the suggested diagnosis (null when the model abstained: no close match) and the "
        "vote distribution. `mode=hierarchical` searches class first (the predicted class, "
        "then its most similar cases; `k` cases, default the stored answer's): a worker "
        "computes it, so the first request may answer 202 (ask again). 409 while the study "
        "is still being processed (or failed).",
        parameters=[
            OpenApiParameter(
                "mode", OpenApiTypes.STR, OpenApiParameter.QUERY, enum=("similar", "hierarchical")
            ),
            OpenApiParameter(
                "k",
                {"type": "integer", "minimum": 1, "maximum": K_MAX},
                OpenApiParameter.QUERY,
            ),
        ],
        responses={
            200: StudyResultSerializer,
            202: OpenApiResponse(
                PendingSearchSerializer, description="The class-first search is being computed."
            ),
            400: BAD_REQUEST,
            409: NotReadySerializer,
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        mode = request.query_params.get("mode", "similar")
        if mode not in SEARCH_MODES:
            return Response(
                {"detail": f"mode must be one of {', '.join(SEARCH_MODES)}"},
                status=status.HTTP_400_BAD_REQUEST,
            )
        k = request.query_params.get("k")
        if k is not None and not (k.isdigit() and 1 <= int(k) <= K_MAX):
            return Response(
                {"detail": f"k must be a whole number from 1 to {K_MAX}"},
                status=status.HTTP_400_BAD_REQUEST,
            )
        result = study_result_for_api(study=study) if study.status in READY_STATES else None
        if result is None:
            queue = (
                study_queue_get(study_id=study.pk)
                if study.status == Study.Status.PROCESSING
                else None
            )
            waiting = queue is not None and queue.state == "queued"
            return Response(
                {
                    "detail": "results not ready",
                    "status": study.status,
                    "progress_stage": "queued" if waiting else study.progress_stage,
                    "progress_percent": 0 if waiting else study.progress_percent,
                    "queue": queue.as_dict() if queue else None,
                },
                status=status.HTTP_409_CONFLICT,
            )
        data = StudyResultSerializer(result, context={"request": request}).data
        if mode == "similar":
            return Response(data)
        live = _class_first(study=study, k=int(k) if k else None)
        if live.pending:
            return Response(
                {"detail": "computing the class-first search; ask again", "mode": mode},
                status=status.HTTP_202_ACCEPTED,
                headers={"Retry-After": "2"},
            )
        data.update(
            ClassFirstResultSerializer(
                {
                    "mode": mode,
                    "predicted_class": live.predicted_class,
                    "k": live.k,
                    "similar_cases": live.hits,
                }
            ).data
        )
        return Response(data)


def _class_first(*, study: Study, k: int | None):
    """The class-first answer as the review page reads it; asks a worker when there is none
    yet (in eager mode the job has run by then: read again)."""
    from retrieval.selectors.review import study_review_results
    from retrieval.services import study_live_query_request

    results = study_review_results(study=study, k=k, mode="hierarchical")
    if results.pending:
        study_live_query_request(
            study=study,
            model_version=results.model_version,
            k=results.k,
            diagnosis_code=None,
            mode="hierarchical",
        )
        results = study_review_results(study=study, k=k, mode="hierarchical")
    return results


class SimilarCaseCamView(FileView):
    """A stored CAM overlay by the id of its similar case (see `cases.api.files`)."""

    @extend_schema(
        operation_id="file_similar_case_cam",
        summary="CAM overlay of a similar case (PNG)",
        description="The similarity CAM over the query slice (`query`) or over the reference "
        "slice (`reference`) of one retrieved case; the URLs are `query_cam_url` and "
        "`reference_cam_url` of the results endpoint.",
        parameters=[
            OpenApiParameter("side", OpenApiTypes.STR, OpenApiParameter.PATH, enum=CAM_SIDES)
        ],
        responses={
            (200, "image/png"): binary_response("The PNG overlay."),
            **file_errors("overlay"),
        },
    )
    def get(self, request: Request, pk: int, side: str) -> FileResponse:
        case = similar_case_get_visible(user=request.user, pk=pk, side=side)
        field = case.query_cam if side == "query" else case.reference_cam
        return stored_file_response(
            name=field.name, content_type="image/png", filename=f"case-{case.pk}-{side}.png"
        )
