"""REST API of the retrieval app (included under /api/ by ildreview/api_urls.py): a study's
similar-case results and the CAM overlays they point to. The same authentication, visibility
rules, errors and file serving as the cases app's API (`cases.api`)."""

from __future__ import annotations

from django.http import FileResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.api.files import FileView, binary_response, file_errors, stored_file_response
from cases.api.serializers import DiagnosisBriefSerializer
from cases.models import Study
from cases.selectors import study_get_visible
from retrieval.pipeline.progress import study_queue_get
from retrieval.selectors.review import similar_case_get_visible, study_result_for_api
from retrieval.services import CAM_SIDES

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


class StudyResultSerializer(serializers.Serializer):
    """The similar-case answer for a study under the model version that produced it."""

    study = serializers.IntegerField(source="study_id")
    model_version = serializers.CharField(source="model_version.name")
    created_at = serializers.DateTimeField()
    suggested_diagnosis = DiagnosisBriefSerializer(allow_null=True)
    votes = serializers.DictField(
        child=serializers.FloatField(), help_text="Share of votes per diagnosis code"
    )
    key_slice = SliceRefSerializer(allow_null=True)
    query_slice_count = serializers.IntegerField()
    excluded_slice_count = serializers.IntegerField()
    similar_cases = SimilarCaseSerializer(many=True, source="ordered_cases")


class StudyResultsView(APIView):
    @extend_schema(
        summary="Similar-case results of a study",
        description="Top similar reference cases with scores, best slice pairs and CAM image "
        "URLs, the suggested diagnosis and the vote distribution. 409 while the study is "
        "still being processed (or failed).",
        responses={200: StudyResultSerializer, 409: NotReadySerializer},
    )
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
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
        return Response(StudyResultSerializer(result, context={"request": request}).data)


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
