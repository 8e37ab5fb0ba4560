"""REST API views: thin wrappers around the same selectors and services as the pages.

Permissions match the pages: every endpoint needs an authenticated user (session or token);
clinicians see only their own studies and the approved reference library; labels, proposals
and decisions are for experts (403 for others).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.api import serializers as s
from cases.api.parsers import DepthLimitedJSONParser
from cases.api.schema import TOO_MANY_REQUESTS
from cases.models import ReferenceCase, Study
from cases.permissions import is_admin, is_expert
from cases.selectors import (
    diagnosis_list,
    reference_case_list_visible,
    study_get_visible,
    study_label_history,
    study_list_visible,
    study_list_with_current_label,
)
from cases.services import review as review_services


class Pagination(PageNumberPagination):
    """Page-number pagination whose `page_size` is checked, not silently replaced by the
    default when it is not a whole number from 1 to `max_page_size` (400)."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            raise ValidationError(
                {"page_size": [f"A whole number from 1 to {self.max_page_size}."]}
            )
        return int(raw)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"]["minimum"] = 1
            elif parameter["name"] == self.page_size_query_param:
                parameter["schema"].update(minimum=1, maximum=self.max_page_size)
        return parameters


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
        filters = s.StudyFilterSerializer(data=self.request.query_params.dict())
        filters.is_valid(raise_exception=True)
        params = filters.validated_data
        qs = study_list_visible(
            user=self.request.user,
            status=params.get("status") or None,
            q=params.get("q") or None,
            diagnosis=params.get("diagnosis") or None,
        )
        return study_list_with_current_label(studies=qs)

    @extend_schema(
        summary="List studies",
        description="Studies the user may see (clinicians: their own), newest first, with "
        "processing status, progress and current diagnosis.",
        parameters=[s.StudyFilterSerializer],
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
        studies = study_list_with_current_label(
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


class StudyLabelsView(APIView):
    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsExpert()]
        return [IsAuthenticated()]

    @extend_schema(summary="Label history of a study", responses=s.ExpertLabelSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        study = study_get_visible(user=request.user, pk=pk)
        return Response(s.ExpertLabelSerializer(study_label_history(study=study), many=True).data)

    @extend_schema(
        summary="Confirm or correct the diagnosis (experts)",
        description="Adds a label (the history is kept); a study ready for review becomes "
        "reviewed.",
        request=s.ExpertLabelCreateSerializer,
        responses={201: s.ExpertLabelSerializer},
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
        parameters=[s.ReferenceCaseFilterSerializer],
        responses=s.ReferenceCaseSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = s.ReferenceCaseFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        qs = reference_case_list_visible(
            user=request.user,
            state=filters.validated_data.get("state") or None,
            diagnosis=filters.validated_data.get("diagnosis") or None,
        )
        page = self.paginate_queryset(qs)
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        summary="Propose a study as a reference case (experts)",
        request=s.ReferenceCaseProposeSerializer,
        responses={201: s.ReferenceCaseSerializer},
    )
    def post(self, request: Request) -> Response:
        data = s.ReferenceCaseProposeSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            study = study_get_visible(user=request.user, pk=data.validated_data["study"])
        except Http404 as exc:
            # A field of the body, not the resource addressed: a validation error.
            raise ValidationError({"study": ["No such study, or one you may not see."]}) from exc
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
    """One action on a reference case: `service(reference_case=, <actor_arg>=user[, comment=])`,
    then the case as it is now. Subclasses name the service, and document the operation with
    `extend_schema_view(post=...)`."""

    permission_classes = [IsAuthenticated, IsExpert]
    # The body's serializer; None for an action that takes no body (its body is not read).
    decision_serializer: type[s.serializers.Serializer] | None = s.ReferenceDecisionSerializer
    service: Any = None
    actor_arg = "expert"

    def post(self, request: Request, pk: int) -> Response:
        reference = get_object_or_404(ReferenceCase, pk=pk)
        kwargs = {"reference_case": reference, self.actor_arg: request.user}
        if self.decision_serializer is not None:
            data = self.decision_serializer(data=request.data)
            data.is_valid(raise_exception=True)
            kwargs["comment"] = data.validated_data.get("comment", "")
        service_call(type(self).service, **kwargs)
        reference.refresh_from_db()
        return Response(s.ReferenceCaseSerializer(reference, context={"request": request}).data)


DECISION_RESPONSES = {200: s.ReferenceCaseSerializer}


@extend_schema_view(
    post=extend_schema(
        summary="Approve a proposed reference case (a second expert)",
        description="The approver must differ from the proposer. The case is then embedded "
        "with the active model and added to the index in the background.",
        request=s.ReferenceDecisionSerializer,
        responses=DECISION_RESPONSES,
    )
)
class ReferenceCaseApproveView(_ReferenceActionView):
    service = review_services.reference_case_approve


@extend_schema_view(
    post=extend_schema(
        summary="Reject a proposed reference case (a second expert; reason required)",
        request=s.ReferenceRejectSerializer,
        responses=DECISION_RESPONSES,
    )
)
class ReferenceCaseRejectView(_ReferenceActionView):
    decision_serializer = s.ReferenceRejectSerializer
    service = review_services.reference_case_reject


@extend_schema_view(
    post=extend_schema(
        summary="Retire an approved reference case (removes it from the index)",
        request=None,
        responses=DECISION_RESPONSES,
    )
)
class ReferenceCaseRetireView(_ReferenceActionView):
    permission_classes = [IsAuthenticated, IsExpertOrAdmin]
    decision_serializer = None
    service = review_services.reference_case_retire
    actor_arg = "actor"


class DiagnosisListView(generics.ListAPIView):
    serializer_class = s.DiagnosisSerializer
    pagination_class = None

    def get_queryset(self):
        return diagnosis_list()

    @extend_schema(summary="List diagnoses (the label taxonomy)")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)


@extend_schema_view(
    post=extend_schema(
        summary="Obtain an API token",
        description="Exchange a username and password for the user's token; send it as "
        "`Authorization: Token <key>`. Failed attempts count towards the login lockout. "
        "Admins can also create and revoke tokens in the admin.",
        request=s.TokenRequestSerializer,
        responses={200: s.TokenSerializer, 429: TOO_MANY_REQUESTS},
    )
)
class TokenObtainView(ObtainAuthToken):
    # ObtainAuthToken names its own parsers, bypassing DEFAULT_PARSER_CLASSES; this anonymous
    # endpoint needs the nesting limit most. Form encodings stay for `curl -d`.
    parser_classes = [DepthLimitedJSONParser, FormParser, MultiPartParser]
    # Exchanging credentials needs no authentication: a stale token or a session cookie
    # (whose CSRF check applies to session-authenticated POSTs) must not turn it into a 403.
    authentication_classes = []


@extend_schema(exclude=True)
class ApiNotFoundView(APIView):
    """Any /api/ URL no route matches (an id that is not a number, a misspelt path), whatever
    the method: the same JSON answers as the real views (403 when not logged in, else 404),
    not the HTML page meant for browsers."""

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        raise NotFound()
