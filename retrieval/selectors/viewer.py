"""The review page's viewer configuration (static/viewer/viewer.js, built from frontend/).

One JSON object tells the viewer everything it draws: the query series (slice ids in order,
pixel spacing, each slice's position within the lungs), the start slice and window, and for
every similar case shown the reference series, the matched slice pair and the two CAM URLs.
Pixels are fetched by the viewer itself from `/api/files/slices/<id>.npy`, which applies the
study's visibility rule again; a reference case the user may not see is left out here too.

Linked scrolling needs "the same place in both chests": `lung_position` maps each slice to its
relative position between the first and the last slice with lungs (0 = lung apex end, 1 = base
end, outside 0..1 beyond the lungs), from the lung fraction the pipeline stores per slice; a
series without stored fractions falls back to the index fraction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.urls import reverse

from cases.models import Series, Slice, Study
from cases.permissions import can_view_study

# Window presets of the viewer (level, width) in HU.
VIEWER_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (40.0, 400.0),
    "bone": (400.0, 1800.0),
}
# Grey levels of 8-bit images that are already windowed: shown as stored.
GREY_WINDOW = (128.0, 256.0)
# The study page's preset names map onto the viewer's ("mediastinal" -> "mediastinum").
_PRESET_ALIASES = {"mediastinal": "mediastinum"}
# A slice counts as "in the lungs" when its lung fraction reaches this share of the series'
# largest one (relative, so thin apices and bases still count and a noisy speck does not).
LUNG_SHARE = 0.1

_PK_PLACEHOLDER = 999999999


def _template(name: str, **kwargs: Any) -> str:
    url = reverse(name, kwargs={"pk": _PK_PLACEHOLDER, **kwargs})
    return url.replace(str(_PK_PLACEHOLDER), "{pk}")


def lung_positions(*, fractions: Sequence[float | None]) -> tuple[list[float], bool]:
    """Relative position of each slice within the lungs, and whether lung fractions were used.

    Slices are in order along the slice normal. With stored fractions the first and last slices
    whose fraction reaches `LUNG_SHARE` of the maximum map to 0 and 1 (linear in between and
    beyond); without them (or with no lung slice) the index fraction is used.
    """
    n = len(fractions)
    if n == 0:
        return [], False
    known = [f for f in fractions if f is not None]
    top = max(known) if known else 0.0
    if len(known) == n and top > 0:
        inside = [i for i, f in enumerate(fractions) if f >= LUNG_SHARE * top]
        first, last = inside[0], inside[-1]
        if last > first:
            return [round((i - first) / (last - first), 4) for i in range(n)], True
    if n == 1:
        return [0.5], False
    return [round(i / (n - 1), 4) for i in range(n)], False


def _series_rows(series_ids: Iterable[int]) -> dict[int, list[tuple[int, float | None, bool]]]:
    """{series id: [(slice id, lung fraction, windowed), ...] in index order}, one query."""
    rows: dict[int, list[tuple[int, float | None]]] = {}
    qs = (
        Slice.objects.filter(series_id__in=set(series_ids))
        .order_by("series_id", "index")
        .values_list("series_id", "pk", "lung_fraction", "is_windowed")
    )
    for series_id, pk, fraction, windowed in qs:
        rows.setdefault(series_id, []).append((pk, fraction, windowed))
    return rows


def _series_payload(series: Series, rows: list[tuple[int, float | None, bool]]) -> dict[str, Any]:
    positions, by_lungs = lung_positions(fractions=[f for _, f, _ in rows])
    return {
        "id": series.pk,
        "slices": [pk for pk, _, _ in rows],
        # 8-bit images already windowed (2-D references imported from PNG/JPEG): no HU.
        "windowed": any(w for _, _, w in rows),
        "positions": positions,
        "positionsFromLungs": by_lungs,
        "spacing": [series.pixel_spacing_row or 1.0, series.pixel_spacing_col or 1.0],
        "thickness": series.slice_thickness,
        "description": series.description,
    }


def review_viewer_config(
    *,
    user: Any,
    study: Study,
    series: Series | None,
    start_index: int,
    preset: str | None,
    hits: Sequence[Any],
    selected_rank: int | None,
) -> dict[str, Any] | None:
    """The viewer's JSON config for the review page of `study` (None without a series).

    `hits` are the page's `ReviewHit`s with `query_cam_url`/`reference_cam_url` set by the
    view; each one becomes a comparison the viewer can open beside the query.
    """
    if series is None:
        return None
    ref_slices = {
        s.pk: s
        for s in Slice.objects.select_related(
            "series__study__patient", "series__study__uploaded_by"
        ).filter(pk__in=[h.reference_slice_id for h in hits])
    }
    visible_studies: dict[int, bool] = {}
    comparisons = []
    for hit in hits:
        ref = ref_slices.get(hit.reference_slice_id)
        if ref is None:
            continue
        ref_study = ref.series.study
        if ref_study.pk not in visible_studies:
            visible_studies[ref_study.pk] = can_view_study(user, ref_study)
        if not visible_studies[ref_study.pk]:
            continue
        comparisons.append((hit, ref))
    rows = _series_rows([series.pk, *(ref.series_id for _, ref in comparisons)])
    query = _series_payload(series, rows.get(series.pk, []))
    if not query["slices"]:
        return None
    series_cache: dict[int, dict[str, Any]] = {}
    results = []
    for hit, ref in comparisons:
        if ref.series_id not in series_cache:
            series_cache[ref.series_id] = _series_payload(ref.series, rows.get(ref.series_id, []))
        ref_series = series_cache[ref.series_id]
        results.append(
            {
                "rank": hit.rank,
                "label": ref.series.study.patient.display_id,
                "diagnosis": hit.diagnosis.name,
                "score": round(float(hit.score), 4),
                "series": ref_series,
                "querySlice": hit.query_slice_id,
                "referenceSlice": hit.reference_slice_id,
                "queryCam": getattr(hit, "query_cam_url", None),
                "referenceCam": getattr(hit, "reference_cam_url", None),
                "camReady": bool(hit.cam_ready),
            }
        )
    name = _PRESET_ALIASES.get(preset or "", preset or "")
    return {
        "pixelsUrl": _template("api-file-slice-npy"),
        "presets": {k: list(v) for k, v in VIEWER_PRESETS.items()},
        "greyWindow": list(GREY_WINDOW),
        "preset": name if name in VIEWER_PRESETS else "lung",
        "query": {**query, "label": study.patient.display_id, "index": start_index},
        "results": results,
        "selected": selected_rank if any(r["rank"] == selected_rank for r in results) else None,
    }
