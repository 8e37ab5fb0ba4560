"""Stored files (slice pixels, de-identified DICOM copies) by database id; the retrieval app's
CAM overlays (`retrieval.api.SimilarCaseCamView`) are served the same way.

A URL names a row, never a storage key: the view loads the row, applies the same visibility
rule as the row's page (`cases.permissions.can_view_study` through the selectors; 404 for
anything the user may not see) and streams the file the row points to through the storage API,
so the files may live on a local disk or on an S3-compatible store. No part of the request path
is ever joined onto a folder, so encoded `..`, `%2f`, backslashes or double encoding cannot
reach another file: they do not even match a route.

These live under /api/ so that token clients (which get the CAM URLs from the results
endpoint) and browser sessions are served alike.
"""

from __future__ import annotations

from django.core.files.storage import default_storage
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from cases.api.serializers import ErrorSerializer
from cases.models import Slice, slice_dicom_name
from cases.selectors import slice_get_visible


class _FirstRenderer(BaseContentNegotiation):
    """The file itself bypasses rendering; errors are always JSON whatever the client accepts
    (an `Accept: image/png` must get the 404 body, not a 406)."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


def file_errors(what: str) -> dict:
    return {
        403: OpenApiResponse(ErrorSerializer, description="Not logged in."),
        404: OpenApiResponse(
            ErrorSerializer,
            description=f"No such {what}, or one the user may not see, or its file is gone.",
        ),
    }


def binary_response(description: str) -> OpenApiResponse:
    return OpenApiResponse(OpenApiTypes.BINARY, description=description)


def stored_file_response(*, name: str, content_type: str, filename: str) -> FileResponse:
    """Stream the stored file `name` (a key taken from a database row, never from the request);
    404 when the row has none or the storage lost it."""
    if not name:
        raise Http404("No stored file.")
    try:
        fh = default_storage.open(name, "rb")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise Http404("The stored file is missing.") from exc
    return FileResponse(fh, content_type=content_type, filename=filename)


class FileView(APIView):
    """Base of the file views: the file itself, or a JSON error whatever the client accepts."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _FirstRenderer


def _slice_file_schema(
    *, operation_id: str, summary: str, description: str, media_type: str, body: str
):
    """The OpenAPI description of a slice file view's GET."""
    return extend_schema_view(
        get=extend_schema(
            operation_id=operation_id,
            summary=summary,
            description=description,
            responses={(200, media_type): binary_response(body), **file_errors("slice")},
        )
    )


class _SliceFileView(FileView):
    """One stored file of a slice, with the slice's visibility; subclasses say which."""

    content_type = ""
    suffix = ""

    def stored_name(self, slice_: Slice) -> str:
        raise NotImplementedError

    def get(self, request: Request, pk: int) -> FileResponse:
        slice_ = slice_get_visible(user=request.user, pk=pk)
        return stored_file_response(
            name=self.stored_name(slice_),
            content_type=self.content_type,
            filename=f"slice-{slice_.pk}.{self.suffix}",
        )


@_slice_file_schema(
    operation_id="file_slice_pixels",
    summary="Hounsfield-unit pixels of a slice (.npy)",
    description="The slice's pixels as a NumPy `.npy` array (int16 HU; uint8 for windowed "
    "2-D reference images). Same visibility as the slice's study.",
    media_type="application/octet-stream",
    body="The .npy array.",
)
class SlicePixelsView(_SliceFileView):
    content_type = "application/octet-stream"
    suffix = "npy"

    def stored_name(self, slice_: Slice) -> str:
        return slice_.pixels.name


@_slice_file_schema(
    operation_id="file_slice_dicom",
    summary="De-identified DICOM copy of a slice",
    description="The de-identified DICOM instance the slice was read from (404 for "
    "reference images imported from PNG/JPEG). Same visibility as the slice's study.",
    media_type="application/dicom",
    body="The DICOM file.",
)
class SliceDicomView(_SliceFileView):
    content_type = "application/dicom"
    suffix = "dcm"

    def stored_name(self, slice_: Slice) -> str:
        return slice_dicom_name(slice_=slice_)
