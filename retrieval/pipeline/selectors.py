"""Reads of pipeline records for the pages and the API."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cases.models import Study
from retrieval.models import ModelVersion, SimilarCase, SliceFeatures, StudyJob, StudyResult


@dataclass(frozen=True)
class StudyProgress:
    """What the progress bar shows: status, stage, percent, failure reason, whether an expert
    may press Retry."""

    status: str
    stage: str
    percent: int
    message: str
    can_retry: bool


def study_progress(*, study: Study) -> StudyProgress:
    return StudyProgress(
        status=study.status,
        stage=study.progress_stage,
        percent=study.progress_percent,
        message=study.status_message,
        can_retry=study.status == Study.Status.FAILED,
    )


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


def slice_radiomics_main(*, slice_id: int, model_version: ModelVersion) -> dict[str, float]:
    """{feature: value} of the main radiomics features of a slice ({} when not computed)."""
    row = SliceFeatures.objects.filter(slice_id=slice_id, model_version=model_version).first()
    return dict(row.radiomics_main) if row else {}


def radiomics_side_by_side(
    *, similar_case: SimilarCase
) -> list[tuple[str, float | None, float | None]]:
    """Rows (feature, query value, reference value) for the review page's comparison table."""
    version = similar_case.result.model_version
    q = slice_radiomics_main(slice_id=similar_case.query_slice_id, model_version=version)
    r = slice_radiomics_main(slice_id=similar_case.reference_slice_id, model_version=version)
    return [(name, q.get(name), r.get(name)) for name in sorted(set(q) | set(r))]


def study_similar_search(
    *, study: Study, model_version: ModelVersion, k: int, diagnosis_code: str | None = None
):
    """Query the live index on demand with the study's stored slice embeddings (no network
    run): for another k or a diagnosis filter that must still return k cases when enough
    exist. Returns the engine's QueryResult and the embedding-id metadata (case id, diagnosis
    code, slice id), or None when the study has no embeddings for this version."""
    from cases.models import ReferenceCase
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
    )
    return result, meta, [r[0] for r in rows]


def study_job_get(*, study: Study) -> StudyJob | None:
    return StudyJob.objects.filter(study=study).first()
