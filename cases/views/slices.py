"""Slice images rendered server-side as PNG at a display window."""

from __future__ import annotations

import numpy as np
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.http import require_GET

from cases import selectors
from cases.forms import WindowForm
from cases.imaging import DEFAULT_PRESET, WINDOW_PRESETS, slice_png_bytes


@require_GET
def slice_png(request: HttpRequest, pk: int) -> HttpResponse:
    """The slice `pk` as PNG: `?preset=lung|mediastinal`, or `?level=&width=` in HU; `?size=`
    bounds the longer side (thumbnails). Same visibility as the study (404 otherwise)."""
    slice_ = selectors.slice_get_visible(user=request.user, pk=pk)
    form = WindowForm(request.GET)
    if not form.is_valid():
        return HttpResponseBadRequest(f"Bad window parameters: {form.errors.as_text()}")
    data = form.cleaned_data
    level, width = WINDOW_PRESETS[data["preset"] or DEFAULT_PRESET]
    if data["level"] is not None and data["width"] is not None:
        level, width = data["level"], data["width"]
    with slice_.pixels.open("rb") as fh:
        pixels = np.load(fh, allow_pickle=False)
    body = slice_png_bytes(
        pixels, is_windowed=slice_.is_windowed, level=level, width=width, max_size=data["size"]
    )
    response = HttpResponse(body, content_type="image/png")
    # Stored pixels never change, so the browser may keep the image; `private` because it is
    # patient data that shared caches must not hold.
    response["Cache-Control"] = "private, max-age=3600"
    return response
