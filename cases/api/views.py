"""REST API views: thin wrappers around the same selectors and services as the pages.

Permissions match the pages: every endpoint needs an authenticated user (session or token);
clinicians see only their own studies and the approved reference library; labels, proposals
and decisions are for experts (403 for others).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.api import serializers as s
from cases.models import ReferenceCase, Study
from cases.permissions import is_admin, is_expert
from cases.selectors import study_get_visible, study_list_visible
from cases.selectors_review import (
    diagnosis_list_active,
    label_history,
    reference_case_list_visible,
    studies_with_current_label,
)
from cases.services import review as review_services

READY_STATES = (Study.Status.READY_FOR_REVIEW, Study.Status.REVIEWED)


class Pagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 200


class IsExpert(BasePermission):
    message = "Only experts may do this."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and is_expert(request.user))


class IsExpertOrAdmin(BasePermission):
    message = "Only experts or admins may do this."

    def has_permission(self, request, view) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and (is_expert(user) or is_admin(user)))


class CanUpload(BasePermission):
    message = "You may not upload studies."

    def has_permission(self, request, view) -> bool:
        return bool(request.user.is_authenticated and request.user.has_perm("cases.add_study"))


def service_call(fn, **kwargs):
    """Run a service and turn its Django ValidationError into a 400 with the message."""
    try:
        return fn(**kwargs)
    except DjangoValidationError as exc:
        raise ValidationError({"detail": " ".join(exc.messages)}) from exc


STATUS_PARAM = OpenApiParameter(
    "status", OpenApiTypes.STR, enum=[c for c, _ in Study.Status.choices], required=False
)


class StudyListView(generics.GenericAPIView):
    """List visible studies (GET) or upload new ones (POST, multipart)."""

    pagination_class = Pagination
    serializer_class = s.StudyListSerializer
    parser_classes = [MultiPartParser]

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), CanUpload()]
        return [IsAuthenticated()]

    def get_queryset(self):
        params = self.request.query_params
        qs = study_list_visible(
            user=self.request.user,
            status=params.get("status") or None,
            q=params.get("q") or None,
            diagnosis=params.get("diagnosis") or None,
        )
        return studies_with_current_label(studies=qs)

    @extend_schema(
        summary="List studies",
        description="Studies the user may see (clinicians: their own), newest first, with "
        "processing status, progress and current diagnosis.",
        parameters=[
            STATUS_PARAM,
            OpenApiParameter(
                "q",
                OpenApiTypes.STR,
                required=False,
                description="Search patient id, description or StudyInstanceUID",
            ),
            OpenApiParameter(
                "diagnosis",
                OpenApiTypes.STR,
                required=False,
                description="Diagnosis code of the current label",
            ),
        ],
        responses=s.StudyListSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        summary="Upload a study",
        description="Multipart upload of DICOM files, folders' files or zip archives in the "
        "`files` field; the same validation as the browser upload. Re-uploading the same "
        "instances creates nothing new (200).",
        request={"multipart/form-data": s.StudyUploadSerializer},
        responses={
            201: s.StudyUploadResultSerializer,
            200: s.StudyUploadResultSerializer,
            400: s.ErrorSerializer,
        },
    )
    def post(self, request: Request) -> Response:
        files = request.FILES.getlist("files")
        if not files:
            from cases.middleware import dropped_files_reason

            reason = dropped_files_reason(request._request)
            raise ValidationError(
                {"detail": reason or "No files: send them in the multipart field 'files'."}
            )
        from cases.services.ingestion import IngestionError
        from cases.services.upload import study_upload

        try:
            result = study_upload(files=files, uploader=request.user)
        except IngestionError as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
        created = sum(result.created)
        pks = [study.pk for study in result.studies]
        studies = studies_with_current_label(
            studies=Study.objects.filter(pk__in=pks).select_related("patient", "uploaded_by")
        )
        body = {
            "created": created,
            "studies": s.StudyListSerializer(
                studies, many=True, context=self.get_serializer_context()
            ).data,
        }
        # 201 when the upload wrote anything (a new study, or new series of a known one).
        wrote = created or any(result.new_series)
        return Response(body, status=status.HTTP_201_CREATED if wrote else status.HTTP_200_OK)


class StudyDetailView(APIView):
    @extend_schema(summary="Get a study", responses=s.StudyDetailSerializer)
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        return Response(s.StudyDetailSerializer(study, context={"request": request}).data)


class StudyResultsView(APIView):
    @extend_schema(
        summary="Similar-case results of a study",
        description="Top similar reference cases with scores, best slice pairs and CAM image "
        "URLs, the suggested diagnosis and the vote distribution. 409 while the study is "
        "still being processed (or failed).",
        responses={200: s.StudyResultSerializer, 409: s.NotReadySerializer},
    )
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        result = None
        if study.status in READY_STATES:
            from cases.selectors_review import study_result_for_api

            result = study_result_for_api(study=study)
        if result is None:
            return Response(
                {
                    "detail": "results not ready",
                    "status": study.status,
                    "progress_stage": study.progress_stage,
                    "progress_percent": study.progress_percent,
                },
                status=status.HTTP_409_CONFLICT,
            )
        return Response(s.StudyResultSerializer(result, context={"request": request}).data)


class StudyLabelsView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsExpert()]
        return [IsAuthenticated()]

    @extend_schema(summary="Label history of a study", responses=s.ExpertLabelSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        return Response(s.ExpertLabelSerializer(label_history(study=study), many=True).data)

    @extend_schema(
        summary="Confirm or correct the diagnosis (experts)",
        description="Adds a label (the history is kept); a study ready for review becomes "
        "reviewed.",
        request=s.ExpertLabelCreateSerializer,
        responses={201: s.ExpertLabelSerializer, 400: s.ErrorSerializer},
    )
    def post(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        data = s.ExpertLabelCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        label = service_call(
            review_services.expert_label_set,
            study=study,
            diagnosis=data.validated_data["diagnosis"],
            expert=request.user,
            comment=data.validated_data.get("comment", ""),
        )
        return Response(s.ExpertLabelSerializer(label).data, status=status.HTTP_201_CREATED)


REFERENCE_STATE_PARAM = OpenApiParameter(
    "state", OpenApiTypes.STR, enum=[c for c, _ in ReferenceCase.State.choices], required=False
)
DIAGNOSIS_PARAM = OpenApiParameter(
    "diagnosis", OpenApiTypes.STR, required=False, description="Diagnosis code"
)


class ReferenceCaseListView(generics.GenericAPIView):
    """The reference library and proposals (GET), or propose a study (POST, experts)."""

    pagination_class = Pagination
    serializer_class = s.ReferenceCaseSerializer

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsExpert()]
        return [IsAuthenticated()]

    @extend_schema(
        summary="List reference cases",
        description="Experts see every state; clinicians the approved library only.",
        parameters=[REFERENCE_STATE_PARAM, DIAGNOSIS_PARAM],
        responses=s.ReferenceCaseSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        code = request.query_params.get("diagnosis")
        diagnosis = get_object_or_404(diagnosis_list_active(), code=code) if code else None
        qs = reference_case_list_visible(
            user=request.user, state=request.query_params.get("state") or None, diagnosis=diagnosis
        )
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        summary="Propose a study as a reference case (experts)",
        request=s.ReferenceCaseProposeSerializer,
        responses={201: s.ReferenceCaseSerializer, 400: s.ErrorSerializer},
    )
    def post(self, request: Request) -> Response:
        data = s.ReferenceCaseProposeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        study = study_get_visible(user=request.user, pk=data.validated_data["study"])
        reference = service_call(
            review_services.reference_case_propose,
            study=study,
            expert=request.user,
            diagnosis=data.validated_data.get("diagnosis"),
            comment=data.validated_data.get("comment", ""),
        )
        return Response(
            self.get_serializer(reference).data,
            status=status.HTTP_201_CREATED,
        )


class ReferenceCaseDetailView(APIView):
    @extend_schema(summary="Get a reference case", responses=s.ReferenceCaseSerializer)
    def get(self, request: Request, pk: int) -> Response:
        reference = get_object_or_404(reference_case_list_visible(user=request.user), pk=pk)
        return Response(s.ReferenceCaseSerializer(reference, context={"request": request}).data)


class _ReferenceActionView(APIView):
    permission_classes = [IsAuthenticated, IsExpert]

    def act(self, request: Request, reference: ReferenceCase, comment: str) -> None:
        raise NotImplementedError

    def post(self, request: Request, pk: int) -> Response:
        reference = get_object_or_404(ReferenceCase, pk=pk)
        data = s.ReferenceDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        self.act(request, reference, data.validated_data.get("comment", ""))
        reference.refresh_from_db()
        return Response(s.ReferenceCaseSerializer(reference, context={"request": request}).data)


DECISION_RESPONSES = {200: s.ReferenceCaseSerializer, 400: s.ErrorSerializer}


class ReferenceCaseApproveView(_ReferenceActionView):
    @extend_schema(
        summary="Approve a proposed reference case (a second expert)",
        description="The approver must differ from the proposer. The case is then embedded "
        "with the active model and added to the index in the background.",
        request=s.ReferenceDecisionSerializer,
        responses=DECISION_RESPONSES,
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)

    def act(self, request, reference, comment):
        service_call(
            review_services.reference_case_approve,
            reference_case=reference,
            expert=request.user,
            comment=comment,
        )


class ReferenceCaseRejectView(_ReferenceActionView):
    @extend_schema(
        summary="Reject a proposed reference case (a second expert; reason required)",
        request=s.ReferenceDecisionSerializer,
        responses=DECISION_RESPONSES,
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)

    def act(self, request, reference, comment):
        service_call(
            review_services.reference_case_reject,
            reference_case=reference,
            expert=request.user,
            comment=comment,
        )


class ReferenceCaseRetireView(_ReferenceActionView):
    permission_classes = [IsAuthenticated, IsExpertOrAdmin]

    @extend_schema(
        summary="Retire an approved reference case (removes it from the index)",
        request=None,
        responses=DECISION_RESPONSES,
    )
    def post(self, request: Request, pk: int) -> Response:
        return super().post(request, pk)

    def act(self, request, reference, comment):
        service_call(
            review_services.reference_case_retire, reference_case=reference, actor=request.user
        )


class DiagnosisListView(generics.ListAPIView):
    serializer_class = s.DiagnosisSerializer
    pagination_class = None

    def get_queryset(self):
        return diagnosis_list_active()

    @extend_schema(summary="List diagnoses (the label taxonomy)")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


@extend_schema_view(
    post=extend_schema(
        summary="Obtain an API token",
        description="Exchange a username and password for the user's token; send it as "
        "`Authorization: Token <key>`. Failed attempts count towards the login lockout. "
        "Admins can also create and revoke tokens in the admin.",
    )
)
class TokenObtainView(ObtainAuthToken):
    pass
