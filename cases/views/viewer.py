"""The slice viewer's context, built in one place for the study page and the review page
(`templates/cases/_viewer.html`, `static/viewer.js`)."""

from __future__ import annotations

from typing import Any

from django.urls import reverse

from cases import selectors
from cases.imaging import DEFAULT_PRESET, WINDOW_PRESETS
from cases.models import Study

# A placeholder pk substituted by the viewer's script to build each slice's image URL.
_PK_PLACEHOLDER = 999999999


def _int(value: str | None, *, default: int) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default


def slice_viewer_context(
    *,
    study: Study,
    wanted_series: str | None = None,
    focus_slice_id: int | None = None,
    wanted_index: str | None = None,
    wanted_preset: str | None = None,
) -> dict[str, Any]:
    """Series, slice ids, start slice and window of the viewer of `study`.

    The series shown is that of `focus_slice_id` (the review page's selected result or key
    slice), else `wanted_series` (`?series=`, a pk), else the first series with slices; it starts
    at the focus slice, else in the middle, unless `wanted_index` (`?slice=`) asks for another
    (clamped to the series). An unknown `wanted_preset` (`?preset=`) falls back to the default.
    """
    series_list = selectors.series_list(study=study)
    focus = selectors.slice_get(pk=focus_slice_id) if focus_slice_id else None
    current = (
        (focus.series if focus else None)
        or next((s for s in series_list if wanted_series and str(s.pk) == wanted_series), None)
        or next((s for s in series_list if s.slice_count), series_list[0] if series_list else None)
    )
    slice_ids = selectors.series_slice_ids(series=current) if current else []
    start = slice_ids.index(focus.pk) if focus and focus.pk in slice_ids else len(slice_ids) // 2
    index = _int(wanted_index, default=start)
    index = min(max(index, 0), max(len(slice_ids) - 1, 0))
    preset = wanted_preset if wanted_preset in WINDOW_PRESETS else DEFAULT_PRESET
    url_template = reverse("cases:slice_png", args=[_PK_PLACEHOLDER]).replace(
        str(_PK_PLACEHOLDER), "{pk}"
    )
    return {
        "series_list": series_list,
        "current_series": current,
        "slice_ids": slice_ids,
        "slice_index": index,
        "current_slice_id": slice_ids[index] if slice_ids else None,
        "preset": preset,
        "presets": WINDOW_PRESETS,
        "viewer_config": {
            "slices": slice_ids,
            "index": index,
            "preset": preset,
            "urlTemplate": url_template,
        },
    }
