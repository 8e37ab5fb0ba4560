"""A read-only DICOMweb subset (QIDO-RS search, WADO-RS metadata, instances and frames) under
/api/dicomweb/, so that a DICOMweb client (OHIF, dicomweb-client, Cornerstone's DICOM image
loader) can open the studies a user may see:

- QIDO-RS: `studies`, `studies/{study}/series`, `studies/{study}/series/{series}/instances`;
- WADO-RS metadata: `.../series/{series}/metadata`, `.../instances/{instance}/metadata`;
- WADO-RS retrieve: `.../instances/{instance}` (the de-identified DICOM copy, multipart) and
  `.../instances/{instance}/frames/1` (the stored pixels, little-endian, multipart).

Same rule as the pages: login required (session or token), and a study the user may not see
(`cases.permissions.can_view_study`) is a 404 like one that does not exist. UIDs are the
de-identified ones the app stores; they are looked up in the database, never joined onto a
path. Attributes come from the database rows (what the viewer needs: geometry, pixel format,
a default lung window); pixel values are Hounsfield units (slope 1, intercept 0).
"""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import numpy as np
from django.core.files.storage import default_storage
from django.db.models import Count, Q, QuerySet
from django.http import Http404, HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request

from cases import permissions
from cases.api.files import FileView
from cases.models import ReferenceCase, Series, Slice, Study, slice_dicom_name

DICOM_JSON = "application/dicom+json"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
MAX_LIMIT = 1000


UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")


class DicomUidConverter:
    """A DICOM UID in a URL: digits and dots, at most 64 characters."""

    regex = UID_RE.pattern

    def to_python(self, value: str) -> str:
        if len(value) > 64:
            raise ValueError("UID too long")
        return value

    def to_url(self, value: str) -> str:
        return value


def _attr(vr: str, *values: Any) -> dict:
    """One DICOM JSON attribute (PS3.18 F.2); no Value when every value is empty."""
    kept = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _da(date) -> str | None:
    return date.strftime("%Y%m%d") if date else None


def _json(payload: Any) -> HttpResponse:
    import json

    response = HttpResponse(json.dumps(payload), content_type=DICOM_JSON)
    response["Cache-Control"] = "private, no-store"
    return response


def visible_studies(*, user: Any) -> QuerySet[Study]:
    """Every study `user` may see (`can_view_study` as one query): all for experts and admins,
    else the user's uploads and the studies of approved reference cases."""
    qs = Study.objects.select_related("patient")
    if permissions.sees_all_studies(user):
        return qs
    approved = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).values("study_id")
    return qs.filter(Q(uploaded_by=user) | Q(pk__in=approved))


def _study(*, user: Any, uid: str) -> Study:
    study = visible_studies(user=user).filter(study_instance_uid=uid).first()
    if study is None:
        raise Http404("No such study.")
    return study


def _series(*, study: Study, uid: str) -> Series:
    series = study.series.filter(series_instance_uid=uid).first()
    if series is None:
        raise Http404("No such series.")
    return series


def _instance(*, series: Series, uid: str) -> Slice:
    slice_ = series.slices.filter(sop_instance_uid=uid).first()
    if slice_ is None:
        raise Http404("No such instance.")
    return slice_


def _base(request: Request) -> str:
    return request.build_absolute_uri(reverse("dicomweb-studies")).rstrip("/")


def _study_attrs(study: Study, *, n_series: int, n_instances: int, base: str) -> dict:
    return {
        "00080020": _attr("DA", _da(study.study_date)),
        "00080061": _attr("CS", "CT"),
        "00081030": _attr("LO", study.description),
        "00081190": _attr("UR", f"{base}/{study.study_instance_uid}"),
        "00100020": _attr("LO", study.patient.display_id),
        "0020000D": _attr("UI", study.study_instance_uid),
        "00201206": _attr("IS", n_series),
        "00201208": _attr("IS", n_instances),
    }


def _series_attrs(series: Series, *, study_uid: str, n_instances: int, base: str) -> dict:
    return {
        "00080060": _attr("CS", series.modality),
        "0008103E": _attr("LO", series.description),
        "00081190": _attr("UR", f"{base}/{study_uid}/series/{series.series_instance_uid}"),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series.series_instance_uid),
        "00200011": _attr("IS", series.series_number),
        "00201209": _attr("IS", n_instances),
    }


def _instance_attrs(slice_: Slice, *, series: Series, study_uid: str, base: str) -> dict:
    series_url = f"{base}/{study_uid}/series/{series.series_instance_uid}"
    url = f"{series_url}/instances/{slice_.sop_instance_uid}"
    return {
        "00080016": _attr("UI", SECONDARY_CAPTURE if slice_.is_windowed else CT_IMAGE_STORAGE),
        "00080018": _attr("UI", slice_.sop_instance_uid),
        "00081190": _attr("UR", url),
        "0020000D": _attr("UI", study_uid),
        "0020000E": _attr("UI", series.series_instance_uid),
        "00200013": _attr("IS", slice_.instance_number or slice_.index + 1),
        "00280010": _attr("US", series.rows or None),
        "00280011": _attr("US", series.columns or None),
    }


def _instance_metadata(slice_: Slice, *, series: Series, study_uid: str, base: str) -> dict:
    """What a viewer needs to show the instance: identity, geometry, pixel format, window."""
    attrs = _instance_attrs(slice_, series=series, study_uid=study_uid, base=base)
    windowed = slice_.is_windowed
    z = slice_.z_position if slice_.z_position is not None else float(slice_.index)
    spacing = [series.pixel_spacing_row, series.pixel_spacing_col]
    url = attrs["00081190"]["Value"][0]
    attrs.update(
        {
            "00020010": _attr("UI", EXPLICIT_VR_LE),
            "00080060": _attr("CS", "OT" if windowed else series.modality),
            "00180050": _attr("DS", series.slice_thickness),
            "00200032": _attr("DS", 0.0, 0.0, z),
            "00200037": _attr("DS", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            "00280002": _attr("US", 1),
            "00280004": _attr("CS", "MONOCHROME2"),
            "00280030": _attr("DS", *spacing) if all(spacing) else _attr("DS"),
            "00280100": _attr("US", 8 if windowed else 16),
            "00280101": _attr("US", 8 if windowed else 16),
            "00280102": _attr("US", 7 if windowed else 15),
            "00280103": _attr("US", 0 if windowed else 1),
            "00281050": _attr("DS", 128 if windowed else -600),
            "00281051": _attr("DS", 256 if windowed else 1500),
            "00281052": _attr("DS", 0),
            "00281053": _attr("DS", 1),
            "00281054": _attr("LO", "US" if windowed else "HU"),
            "7FE00010": {"vr": "OB" if windowed else "OW", "BulkDataURI": f"{url}/frames/1"},
        }
    )
    return attrs


def _multipart(part: bytes, *, content_type: str, transfer_syntax: str | None = None):
    """A one-part multipart/related body (PS3.18 8.7.3.3), as WADO-RS answers."""
    boundary = uuid.uuid4().hex
    header = f"Content-Type: {content_type}"
    if transfer_syntax:
        header += f";transfer-syntax={transfer_syntax}"
    body = f"--{boundary}\r\n{header}\r\n\r\n".encode() + part + f"\r\n--{boundary}--\r\n".encode()
    response = HttpResponse(
        body, content_type=f'multipart/related; type="{content_type}"; boundary={boundary}'
    )
    response["Cache-Control"] = "private, max-age=600"
    return response


def _int_param(request: Request, name: str, default: int, *, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: ["A non-negative integer is required."]}) from None
    if value < 0 or (maximum is not None and value > maximum):
        raise ValidationError({name: [f"Must be between 0 and {maximum or 'any'}."]})
    return value


UID = OpenApiTypes.STR
DICOM_LIST = OpenApiResponse(
    {"type": "array", "items": {"type": "object", "additionalProperties": True}},
    description="DICOM JSON (PS3.18 F.2): one object per match, keyed by tag.",
)
PAGING = [
    OpenApiParameter("limit", int, description=f"At most this many matches (<= {MAX_LIMIT})."),
    OpenApiParameter("offset", int, description="Skip this many matches."),
]


def _path(*names: str) -> list[OpenApiParameter]:
    return [
        OpenApiParameter(n, UID, OpenApiParameter.PATH, description="A DICOM UID.") for n in names
    ]


class StudiesView(FileView):
    @extend_schema(
        operation_id="dicomweb_search_studies",
        summary="QIDO-RS: search the studies the user may see",
        parameters=[
            *PAGING,
            OpenApiParameter("StudyInstanceUID", str, description="Exact match."),
            OpenApiParameter("PatientID", str, description="Exact match (the display id)."),
        ],
        responses={(200, DICOM_JSON): DICOM_LIST},
    )
    def get(self, request: Request) -> HttpResponse:
        limit = _int_param(request, "limit", 100, maximum=MAX_LIMIT)
        offset = _int_param(request, "offset", 0)
        qs = visible_studies(user=request.user).order_by("-created_at", "-id")
        if uid := request.query_params.get("StudyInstanceUID"):
            if not UID_RE.fullmatch(uid) or len(uid) > 64:
                raise ValidationError({"StudyInstanceUID": ["Not a DICOM UID."]})
            qs = qs.filter(study_instance_uid=uid)
        if pid := request.query_params.get("PatientID"):
            if len(pid) > 64 or not pid.isprintable():
                raise ValidationError({"PatientID": ["At most 64 printable characters."]})
            qs = qs.filter(patient__display_id=pid)
        qs = qs.annotate(
            n_series=Count("series", distinct=True), n_instances=Count("series__slices")
        )
        base = _base(request)
        return _json(
            [
                _study_attrs(s, n_series=s.n_series, n_instances=s.n_instances, base=base)
                for s in qs[offset : offset + limit]
            ]
        )


class StudySeriesView(FileView):
    @extend_schema(
        operation_id="dicomweb_search_series",
        summary="QIDO-RS: the series of a study",
        parameters=_path("study_uid"),
        responses={(200, DICOM_JSON): DICOM_LIST},
    )
    def get(self, request: Request, study_uid: str) -> HttpResponse:
        study = _study(user=request.user, uid=study_uid)
        series = study.series.annotate(n=Count("slices")).order_by("series_number", "id")
        base = _base(request)
        return _json(
            [_series_attrs(s, study_uid=study_uid, n_instances=s.n, base=base) for s in series]
        )


class SeriesInstancesView(FileView):
    @extend_schema(
        operation_id="dicomweb_search_instances",
        summary="QIDO-RS: the instances of a series",
        parameters=[*_path("study_uid", "series_uid"), *PAGING],
        responses={(200, DICOM_JSON): DICOM_LIST},
    )
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        limit = _int_param(request, "limit", MAX_LIMIT, maximum=MAX_LIMIT)
        offset = _int_param(request, "offset", 0)
        series = _series(study=_study(user=request.user, uid=study_uid), uid=series_uid)
        base = _base(request)
        slices = series.slices.order_by("index")[offset : offset + limit]
        return _json(
            [_instance_attrs(s, series=series, study_uid=study_uid, base=base) for s in slices]
        )


class SeriesMetadataView(FileView):
    @extend_schema(
        operation_id="dicomweb_series_metadata",
        summary="WADO-RS: metadata of every instance of a series",
        parameters=_path("study_uid", "series_uid"),
        responses={(200, DICOM_JSON): DICOM_LIST},
    )
    def get(self, request: Request, study_uid: str, series_uid: str) -> HttpResponse:
        series = _series(study=_study(user=request.user, uid=study_uid), uid=series_uid)
        base = _base(request)
        return _json(
            [
                _instance_metadata(s, series=series, study_uid=study_uid, base=base)
                for s in series.slices.order_by("index")
            ]
        )


class InstanceMetadataView(FileView):
    @extend_schema(
        operation_id="dicomweb_instance_metadata",
        summary="WADO-RS: metadata of one instance",
        parameters=_path("study_uid", "series_uid", "instance_uid"),
        responses={(200, DICOM_JSON): DICOM_LIST},
    )
    def get(
        self, request: Request, study_uid: str, series_uid: str, instance_uid: str
    ) -> HttpResponse:
        series = _series(study=_study(user=request.user, uid=study_uid), uid=series_uid)
        slice_ = _instance(series=series, uid=instance_uid)
        return _json(
            [_instance_metadata(slice_, series=series, study_uid=study_uid, base=_base(request))]
        )


class InstanceView(FileView):
    @extend_schema(
        operation_id="dicomweb_retrieve_instance",
        summary="WADO-RS: the de-identified DICOM instance",
        description='multipart/related; type="application/dicom" with one part (404 for '
        "reference images imported from PNG/JPEG, which have no DICOM copy).",
        parameters=_path("study_uid", "series_uid", "instance_uid"),
        responses={
            (200, "multipart/related"): OpenApiResponse(
                OpenApiTypes.BINARY, description="One application/dicom part."
            )
        },
    )
    def get(
        self, request: Request, study_uid: str, series_uid: str, instance_uid: str
    ) -> HttpResponse:
        series = _series(study=_study(user=request.user, uid=study_uid), uid=series_uid)
        slice_ = _instance(series=series, uid=instance_uid)
        name = slice_dicom_name(slice_=slice_)
        if not name:
            raise Http404("This instance has no stored DICOM copy.")
        try:
            with default_storage.open(name, "rb") as fh:
                data = fh.read()
        except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
            raise Http404("This instance has no stored DICOM copy.") from exc
        return _multipart(data, content_type="application/dicom")


class FrameView(FileView):
    @extend_schema(
        operation_id="dicomweb_retrieve_frame",
        summary="WADO-RS: the pixels of frame 1",
        description='multipart/related; type="application/octet-stream": rows x columns '
        "little-endian values (int16 Hounsfield units; uint8 for windowed 2-D images).",
        parameters=[
            *_path("study_uid", "series_uid", "instance_uid"),
            OpenApiParameter("frame", int, OpenApiParameter.PATH, description="Only 1."),
        ],
        responses={
            (200, "multipart/related"): OpenApiResponse(
                OpenApiTypes.BINARY, description="One application/octet-stream part."
            )
        },
    )
    def get(
        self, request: Request, study_uid: str, series_uid: str, instance_uid: str, frame: int
    ) -> HttpResponse:
        series = _series(study=_study(user=request.user, uid=study_uid), uid=series_uid)
        slice_ = _instance(series=series, uid=instance_uid)
        if frame != 1:
            raise Http404("Single-frame instance: only frame 1 exists.")
        try:
            with default_storage.open(slice_.pixels.name, "rb") as fh:
                pixels = np.load(io.BytesIO(fh.read()), allow_pickle=False)
        except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
            raise Http404("The stored pixels are missing.") from exc
        dtype = "<u1" if pixels.dtype == np.uint8 else "<i2"
        data = np.ascontiguousarray(pixels.astype(dtype, copy=False)).tobytes()
        return _multipart(
            data, content_type="application/octet-stream", transfer_syntax=EXPLICIT_VR_LE
        )
