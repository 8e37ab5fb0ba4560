"""Numbers of the review page a reader can interpret.

- Radiomics as z-scores against the library: for each main feature, the query's and the
  result's value relative to the approved library's slices under the same model version
  (mean and standard deviation over those slices), with the unit and a one-line meaning.
- Case similarity by one definition whatever the filter (`retrieval.engine.case_similarity`),
  computed from the stored, L2-normalised slice embeddings (a dot product, no model), and
  "matched on N of M query slices".

Library statistics and per-case similarities are cached (they change only with the library
or a new result), so a page view reads them, it does not recompute them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from django.core.cache import cache
from django.db.models import Count, Max, Sum

from retrieval.engine.case_similarity import case_score, matched_slices, per_slice_best
from retrieval.models import ModelVersion, ReferenceEmbedding, SliceFeatures, StudyResult

CACHE_S = 3600
Z_CAP = 3.0  # bars are drawn on -3..+3 standard deviations

# Radiomics are computed on the lung-windowed slice scaled to grey levels 0..255 (see
# retrieval/engine/radiomics.py), in pixels of the model's input size.
FEATURE_INFO: dict[str, tuple[str, str, str]] = {
    "original_firstorder_Mean": (
        "Mean density",
        "grey level 0–255 (lung window)",
        "Average brightness of the lung: higher with ground glass or consolidation.",
    ),
    "original_firstorder_Skewness": (
        "Density skewness",
        "no unit",
        "Asymmetry of the density histogram: lower when dense regions add a bright tail.",
    ),
    "original_firstorder_Kurtosis": (
        "Density kurtosis",
        "no unit",
        "Peakedness of the histogram: high for uniform aerated lung, lower in disease.",
    ),
    "original_firstorder_Entropy": (
        "Density entropy",
        "bits",
        "Spread of densities: higher when the lung mixes air and tissue patterns.",
    ),
    "original_glcm_Contrast": (
        "Texture contrast",
        "grey level²",
        "Local intensity differences between neighbours: high for reticulation.",
    ),
    "original_glcm_Correlation": (
        "Texture correlation",
        "−1 to 1",
        "How predictable a pixel is from its neighbour: high for smooth, coarse texture.",
    ),
    "original_glrlm_RunLengthNonUniformity": (
        "Run-length non-uniformity",
        "runs",
        "Unevenness of runs of equal density: grows with patchy, heterogeneous lung.",
    ),
    "original_glszm_ZoneEntropy": (
        "Zone entropy",
        "bits",
        "Variety of zones of equal density: higher for heterogeneous patterns.",
    ),
    "original_ngtdm_Coarseness": (
        "Coarseness",
        "no unit",
        "Slow spatial change of density: lower for fine, busy texture such as honeycombing.",
    ),
    "original_shape2D_PixelSurface": (
        "Lung area",
        "pixels²",
        "Area of the segmented lung on this slice (at the model's input size).",
    ),
}


@dataclass(frozen=True)
class ZRow:
    """One feature of the z-score table: values, z-scores against the library, their bars."""

    feature: str
    label: str
    unit: str
    meaning: str
    query: float | None
    result: float | None
    query_z: float | None
    result_z: float | None

    @staticmethod
    def _bar(z: float | None) -> dict:
        if z is None:
            return {"neg": 0.0, "pos": 0.0}
        width = round(100.0 * min(abs(z), Z_CAP) / Z_CAP, 1)
        return {"neg": width if z < 0 else 0.0, "pos": width if z > 0 else 0.0}

    @property
    def query_bar(self) -> dict:
        return self._bar(self.query_z)

    @property
    def result_bar(self) -> dict:
        return self._bar(self.result_z)


def _stats_key(model_version: ModelVersion) -> str:
    # The library's state as `review.library_checksum` reads it (count, max id, id sum of the
    # version's embeddings); read here so that the two modules do not import each other.
    agg = ReferenceEmbedding.objects.filter(model_version=model_version).aggregate(
        n=Count("id"), mx=Max("id"), s=Sum("id")
    )
    n, mx, total = agg["n"] or 0, agg["mx"] or 0, int(agg["s"] or 0)
    born = model_version.created_at.timestamp() if model_version.created_at else 0
    return f"ildreview:radiomics-stats:{model_version.pk}:{born}:{n}:{mx}:{total}"


def library_radiomics_stats(*, model_version: ModelVersion) -> dict[str, tuple[float, float]]:
    """{feature: (mean, standard deviation)} of the main radiomics over the library's embedded
    slices under `model_version` (features with fewer than 2 values are left out)."""
    key = _stats_key(model_version)
    stats = cache.get(key)
    if stats is not None:
        return stats
    slice_ids = ReferenceEmbedding.objects.filter(model_version=model_version).values("slice_id")
    rows = SliceFeatures.objects.filter(
        model_version=model_version, slice_id__in=slice_ids
    ).values_list("radiomics_main", flat=True)
    values: dict[str, list[float]] = {}
    for main in rows.iterator(chunk_size=2000):
        for name, value in (main or {}).items():
            if value is not None and math.isfinite(float(value)):
                values.setdefault(name, []).append(float(value))
    stats = {}
    for name, vals in values.items():
        if len(vals) >= 2:
            arr = np.asarray(vals, dtype=np.float64)
            stats[name] = (float(arr.mean()), float(arr.std(ddof=1)))
    cache.set(key, stats, CACHE_S)
    return stats


def _z(value: float | None, stat: tuple[float, float] | None) -> float | None:
    if value is None or stat is None or not stat[1] > 0:
        return None
    return round((float(value) - stat[0]) / stat[1], 2)


def radiomics_z_rows(*, rows: list, stats: dict[str, tuple[float, float]]) -> list[ZRow]:
    """z-score rows of side-by-side radiomics rows (`retrieval.selectors.review.RadiomicsRow`)."""
    out = []
    for row in rows:
        label, unit, meaning = FEATURE_INFO.get(row.feature, (row.label, "", ""))
        stat = stats.get(row.feature)
        out.append(
            ZRow(
                feature=row.feature,
                label=label,
                unit=unit,
                meaning=meaning,
                query=row.query,
                result=row.result,
                query_z=_z(row.query, stat),
                result_z=_z(row.result, stat),
            )
        )
    return out


def _query_vectors(*, result: StudyResult) -> np.ndarray:
    rows = SliceFeatures.objects.filter(
        model_version_id=result.model_version_id,
        slice__series__study_id=result.study_id,
        usable=True,
        embedding__isnull=False,
    ).values_list("embedding", flat=True)
    vecs = [np.frombuffer(bytes(v), dtype=np.float32) for v in rows]
    return np.vstack(vecs) if vecs else np.zeros((0, 0), dtype=np.float32)


def _case_best(*, result: StudyResult, case_ids: set[int]) -> dict[int, np.ndarray]:
    """{case id: per-query-slice best similarity} for the cases, from the cache or computed
    from the stored embeddings (cases without embeddings under the version are left out)."""
    # The creation time too: a re-run re-creates the result (a row id may come back).
    born = result.created_at.timestamp() if result.created_at else 0
    prefix = f"ildreview:case-best:{result.pk}:{born}:{result.model_version_id}"
    found = cache.get_many([f"{prefix}:{c}" for c in case_ids])
    out = {c: found[f"{prefix}:{c}"] for c in case_ids if f"{prefix}:{c}" in found}
    missing = case_ids - set(out)
    if not missing:
        return out
    query = _query_vectors(result=result)
    if not query.size:
        return out
    by_case: dict[int, list[np.ndarray]] = {}
    rows = ReferenceEmbedding.objects.filter(
        model_version_id=result.model_version_id, reference_case_id__in=missing
    ).values_list("reference_case_id", "vector")
    for case_id, vector in rows.iterator(chunk_size=4000):
        by_case.setdefault(case_id, []).append(np.frombuffer(bytes(vector), dtype=np.float32))
    fresh = {c: per_slice_best(query, np.vstack(v)) for c, v in by_case.items()}
    cache.set_many({f"{prefix}:{c}": v for c, v in fresh.items()}, CACHE_S)
    out.update(fresh)
    return out


def hits_explain(*, hits: list, result: StudyResult) -> None:
    """Set `similarity` (one definition, whatever the filter), `matched` and `query_slices`
    on each hit (`ReviewHit`); hits whose case has no stored embeddings keep their ranking
    score and get no `matched`. When every hit has its similarity, the list is put in that
    order and renumbered (the page shows best first by the number it shows; the index's own
    order can differ slightly, since its score counts only the slice hits it retrieved)."""
    stored_cases = set(result.cases.values_list("reference_case_id", flat=True))
    shown = {h.reference_case.pk for h in hits}
    best = _case_best(result=result, case_ids=stored_cases | shown)
    for hit in hits:
        case_id = hit.reference_case.pk
        mine = best.get(case_id)
        if mine is None:
            continue
        others = [best[c] for c in stored_cases if c != case_id and c in best]
        hit.similarity = round(case_score(mine), 4)
        hit.matched = matched_slices(mine, others)
        hit.query_slices = int(mine.size)
    if hits and all(h.similarity is not None for h in hits):
        hits.sort(key=lambda h: (-h.similarity, h.rank))
        for rank, hit in enumerate(hits, start=1):
            hit.rank = rank
