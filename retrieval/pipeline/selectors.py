"""Reads of pipeline records for the pages and the API."""

from __future__ import annotations

import numpy as np

from cases.models import Study
from retrieval.models import ModelVersion, SimilarCase, SliceFeatures, StudyResult


def study_result_get(
    *, study: Study, model_version: ModelVersion | None = None
) -> StudyResult | None:
    """The stored result of `study` for `model_version` (default: the latest one stored)."""
    qs = StudyResult.objects.filter(study=study).select_related(
        "suggested_diagnosis", "key_slice", "model_version"
    )
    if model_version is not None:
        qs = qs.filter(model_version=model_version)
    return qs.order_by("-created_at", "-id").first()


def similar_case_list(
    *, result: StudyResult, diagnosis_code: str | None = None
) -> list[SimilarCase]:
    """The stored similar cases of a result, best first, optionally of one diagnosis."""
    qs = result.cases.select_related(
        "reference_case__diagnosis", "reference_case__study", "query_slice", "reference_slice"
    )
    if diagnosis_code:
        qs = qs.filter(reference_case__diagnosis__code=diagnosis_code)
    return list(qs.order_by("rank"))


def study_similar_search(
    *,
    study: Study,
    model_version: ModelVersion,
    k: int,
    diagnosis_code: str | None = None,
    hierarchical: bool = False,
):
    """Query the live index on demand with the study's stored slice embeddings (no network
    run): for another k, a diagnosis filter that must still return k cases when enough
    exist, or the class-first search (`hierarchical`). The version's abstain thresholds apply.
    Returns the engine's QueryResult and the embedding-id metadata (case id, diagnosis
    code, slice id), or None when the study has no embeddings for this version."""
    from cases.models import ReferenceCase
    from retrieval.engine.query import abstain_thresholds
    from retrieval.pipeline.index_store import index_query

    rows = list(
        SliceFeatures.objects.filter(
            model_version=model_version,
            slice__series__study=study,
            usable=True,
            embedding__isnull=False,
        )
        .order_by("slice__series__series_number", "slice__series_id", "slice__index")
        .values_list("slice_id", "embedding")
    )
    if not rows:
        return None
    vectors = np.vstack([np.frombuffer(bytes(r[1]), dtype=np.float32) for r in rows])
    own = set(ReferenceCase.objects.filter(study=study).values_list("id", flat=True))
    result, meta = index_query(
        model_version=model_version,
        query_vectors=vectors,
        k_cases=k,
        label_filter=diagnosis_code,
        exclude_case_ids=own,
        hierarchical=hierarchical,
        abstain=abstain_thresholds(model_version.config, model_version.metrics),
    )
    return result, meta, [r[0] for r in rows]
