"""Processing of an uploaded study: prepare -> embed -> retrieve, then CAMs in the background.

Each stage is a service taking `study_id` and `run_id` and is run by its own Celery task
(`retrieval.tasks.study_<stage>`, sent by `retrieval.pipeline.enqueue`), so the heavy parts can
go to the `gpu` queue:

- prepare (cpu queue): load HU slices, engine `prepare_slice` (window, resize, k-means lung
  mask), `Slice.lung_fraction`, raw pyradiomics vector + main features (`SliceFeatures`).
  The k-means segmentation is numpy code with no CUDA path, so it runs next to radiomics on
  the cpu queue instead of occupying a GPU worker.
- embed (gpu queue): backbone + GeM deep features and the fusion head -> `SliceFeatures.embedding`
  for slices with enough lung (`ILDREVIEW_MIN_LUNG_FRACTION`).
- retrieve (cpu queue): incremental index sync + `rank_cases` -> `StudyResult` (votes, suggestion
  or "no close match" under the model's abstain thresholds) + `SimilarCase`;
  the study becomes ready_for_review (`enqueue.study_finish`) at once, and one CAM job per
  retrieved case is published, best rank first (`retrieval.tasks.similar_case_explain`).
- explain (gpu queue, one task per similar case, after the study is ready): similarity CAM of
  the case's best slice pair, saved as PNG overlays with deterministic names (written through
  `_media_write`) and recorded on the `SimilarCase`. The review page shows a "computing"
  placeholder until then. CAMs were the largest stage; first results no longer wait for them.

Idempotency: every write is keyed by unique fields (`update_or_create` on (slice, version);
results deleted and re-created in one transaction; CAM files written under fixed names after
removing the old ones), so re-running a stage after a crash gives the same rows and files.
A stage whose `run_id` is no longer the study's current run (a message redelivered after a
worker died, when the study was already re-enqueued) does nothing and returns False; a CAM job
whose similar case was deleted (a newer run replaced the result) does nothing either.
"""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from cases.models import Diagnosis, ReferenceCase, Slice, Study
from retrieval.engine.query import abstain_thresholds
from retrieval.engine.radiomics import MAIN_FEATURES
from retrieval.models import ModelVersion, SimilarCase, SliceFeatures, StudyJob, StudyResult
from retrieval.pipeline import progress as prog
from retrieval.pipeline.enqueue import STAGES, study_finish, task_publish
from retrieval.pipeline.runtime import (
    PipelineDataError,
    model_image_size,
    model_load,
    slice_prepare,
    vector_from_bytes,
    vector_to_bytes,
)

logger = logging.getLogger(__name__)


def results_top_k() -> int:
    return settings.ILDREVIEW_RESULTS_TOP_K


def min_lung_fraction() -> float:
    return float(settings.ILDREVIEW_MIN_LUNG_FRACTION)


# ---------------------------------------------------------------------------------------------
# Stage plumbing
# ---------------------------------------------------------------------------------------------


def _current_job(*, study_id: int, run_id: str) -> StudyJob | None:
    """The study's job if `run_id` is its current run and the study is processing."""
    job = (
        StudyJob.objects.select_related("model_version", "study").filter(study_id=study_id).first()
    )
    if job is None or job.run_id != run_id:
        logger.info("study %s: run %s is not current, skipping", study_id, run_id)
        return None
    if job.study.status != Study.Status.PROCESSING:
        logger.info("study %s is %s, not processing; skipping", study_id, job.study.status)
        return None
    return job


def _job_model_version(job: StudyJob) -> ModelVersion:
    """The version pinned at enqueue time; the active one if none was active then."""
    if job.model_version is None:
        from retrieval.selectors import model_version_active

        active = model_version_active()
        if active is None:
            raise PipelineDataError(
                "no active retrieval model version: an admin must train/activate one "
                "(python manage.py bootstrap_model), then press Retry"
            )
        StudyJob.objects.filter(pk=job.pk).update(model_version=active)
        job.model_version = active
    return job.model_version


def _study_slices(study_id: int) -> list[Slice]:
    return list(
        Slice.objects.filter(series__study_id=study_id)
        .select_related("series")
        .order_by("series__series_number", "series_id", "index")
    )


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def slice_radiomics(
    *, model, prepared, threshold: float
) -> tuple[np.ndarray | None, dict[str, float]]:
    """Raw radiomics vector and main features of a prepared slice, or (None, {}) when the
    slice is not usable: too little lung (its radiomics would be noise and are costly), or a
    mask pyradiomics cannot work with (the slice is skipped, not the study)."""
    from retrieval.engine.radiomics import RadiomicsError

    if prepared.lung_fraction < threshold:
        return None, {}
    try:
        vec = np.asarray(model.radiomics.extract(prepared.image, prepared.mask), dtype=np.float64)
    except RadiomicsError as exc:
        logger.info("slice skipped, no radiomics: %s", exc)
        return None, {}
    names = list(model.radiomics.feature_names)
    main = {n: float(vec[names.index(n)]) for n in MAIN_FEATURES if n in names}
    return vec, main


def study_prepare(*, study_id: int, run_id: str) -> bool:
    """Stage 1: lung masks, lung fractions and radiomics of every slice of the study."""
    job = _current_job(study_id=study_id, run_id=run_id)
    if job is None:
        return False
    version = _job_model_version(job)
    progress = prog.stage_start(job=job, stage="prepare")
    model = model_load(model_version=version)
    size = model_image_size(model)
    slices = _study_slices(study_id)
    if not slices:
        raise PipelineDataError(f"study {study_id} has no slices to process")
    threshold = min_lung_fraction()
    for i, slice_obj in enumerate(slices):
        prepared = slice_prepare(slice_obj=slice_obj, size=size)
        fraction = float(prepared.lung_fraction)
        rad, main = slice_radiomics(model=model, prepared=prepared, threshold=threshold)
        with transaction.atomic():
            Slice.objects.filter(pk=slice_obj.pk).update(lung_fraction=fraction)
            SliceFeatures.objects.update_or_create(
                slice_id=slice_obj.pk,
                model_version=version,
                defaults={
                    "lung_fraction": fraction,
                    "usable": rad is not None,
                    "radiomics": rad.tobytes() if rad is not None else b"",
                    "radiomics_main": main,
                    "embedding": None,
                },
            )
        progress(i + 1, len(slices))
    prog.stage_done(study_id=study_id, run_id=run_id)
    return True


def study_embed(*, study_id: int, run_id: str) -> bool:
    """Stage 2: fused embeddings of the slices with enough lung."""
    job = _current_job(study_id=study_id, run_id=run_id)
    if job is None:
        return False
    version = _job_model_version(job)
    progress = prog.stage_start(job=job, stage="embed")
    model = model_load(model_version=version)
    size = model_image_size(model)
    feats = list(
        SliceFeatures.objects.filter(
            model_version=version, slice__series__study_id=study_id, usable=True
        )
        .select_related("slice")
        .order_by("slice__series__series_number", "slice__series_id", "slice__index")
    )
    batch = settings.ILDREVIEW_EMBED_BATCH
    for start in range(0, len(feats), batch):
        chunk = feats[start : start + batch]
        prepared = [slice_prepare(slice_obj=f.slice, size=size) for f in chunk]
        rad = np.vstack([np.frombuffer(bytes(f.radiomics), dtype=np.float64) for f in chunk])
        vectors = embed_with_radiomics(model=model, prepared=prepared, radiomics=rad)
        with transaction.atomic():
            for f, vec in zip(chunk, vectors, strict=True):
                SliceFeatures.objects.filter(pk=f.pk).update(embedding=vector_to_bytes(vec))
        progress(start + len(chunk), len(feats))
    prog.stage_done(study_id=study_id, run_id=run_id)
    return True


def embed_with_radiomics(*, model, prepared: list, radiomics: np.ndarray) -> np.ndarray:
    """Embeddings (N, E) of prepared slices whose raw radiomics were computed already: deep
    features through the backbone, then the model's fusion (`RetrievalModel.embed`)."""
    return model.embed(prepared, radiomics=radiomics, batch_size=8)


def study_retrieve(*, study_id: int, run_id: str) -> bool:
    """Stage 3: rank the reference cases for the study's slices and store the result."""
    from retrieval.pipeline.index_store import index_query

    job = _current_job(study_id=study_id, run_id=run_id)
    if job is None:
        return False
    version = _job_model_version(job)
    progress = prog.stage_start(job=job, stage="retrieve")
    rows = list(
        SliceFeatures.objects.filter(
            model_version=version,
            slice__series__study_id=study_id,
            usable=True,
            embedding__isnull=False,
        )
        .order_by("slice__series__series_number", "slice__series_id", "slice__index")
        .values_list("slice_id", "embedding")
    )
    total = Slice.objects.filter(series__study_id=study_id).count()
    if not rows:
        raise PipelineDataError(
            f"study {study_id}: no slice has a lung fraction of at least {min_lung_fraction():.2f}"
            " (is this a chest CT?)"
        )
    query_slice_ids = [r[0] for r in rows]
    vectors = np.vstack([vector_from_bytes(r[1]) for r in rows])
    own = set(ReferenceCase.objects.filter(study_id=study_id).values_list("id", flat=True))
    result, meta = index_query(
        model_version=version,
        query_vectors=vectors,
        k_cases=results_top_k(),
        exclude_case_ids=own,
        abstain=abstain_thresholds(version.config, version.metrics),
    )
    codes = {d.code: d for d in Diagnosis.objects.all()}
    with transaction.atomic():
        _results_delete(study_id=study_id, model_version_id=version.pk)
        suggested = codes.get(result.suggested_label) if result.suggested_label else None
        key_slice = query_slice_ids[result.cases[0].query_slice_index] if result.cases else None
        sr = StudyResult.objects.create(
            study_id=study_id,
            model_version=version,
            suggested_diagnosis=suggested,
            votes={str(k): float(v) for k, v in result.votes.items()},
            key_slice_id=key_slice,
            query_slice_count=len(rows),
            excluded_slice_count=total - len(rows),
            abstained=result.abstained,
            abstain_reason=result.abstain_reason[:300],
            top_similarity=result.top_similarity,
            vote_margin=result.vote_margin,
        )
        SimilarCase.objects.bulk_create(
            [
                SimilarCase(
                    result=sr,
                    rank=rank,
                    reference_case_id=hit.case_id,
                    score=float(hit.score),
                    n_hits=int(hit.n_hits),
                    query_slice_id=query_slice_ids[hit.query_slice_index],
                    reference_slice_id=meta[hit.best_slice_id][2],
                )
                for rank, hit in enumerate(result.cases, start=1)
            ]
        )
    progress(1, 1, force=True)
    finished = study_finish(study_id=study_id, run_id=run_id)
    if finished:
        case_ids = list(sr.cases.order_by("rank").values_list("pk", flat=True))
        transaction.on_commit(lambda: similar_cases_explain_publish(similar_case_ids=case_ids))
    return finished


def similar_cases_explain_publish(*, similar_case_ids: list[int]) -> None:
    """Send one CAM job per similar case, in the order given (best rank first)."""
    for pk in similar_case_ids:
        try:
            task_publish("similar_case_explain", pk)
        except Exception:
            if settings.CELERY_TASK_ALWAYS_EAGER:
                raise  # eager mode ran the job here: this is its own error
            # The results stand; the review page sends the job again when it asks for the CAM.
            logger.exception("similar case %s: CAM job not sent to the broker", pk)


def cams_missing_resend(*, older_than_s: float) -> list[int]:
    """Send the CAM job again for similar cases of ready studies still without overlays after
    `older_than_s` (a job lost with a broker, or never sent: `similar_cases_explain_publish`
    only logs a refusal); each case at most once per `older_than_s` per process. A repeated
    job is a no-op (`similar_case_explain`). Called by the recovery sweep; returns the ids."""
    from datetime import timedelta

    from django.core.cache import cache
    from django.db.models import Q
    from django.utils import timezone

    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    ids = list(
        SimilarCase.objects.filter(Q(query_cam="") | Q(reference_cam=""))
        .filter(
            result__created_at__lt=cutoff,
            result__study__status__in=(Study.Status.READY_FOR_REVIEW, Study.Status.REVIEWED),
        )
        .order_by("result_id", "rank")
        .values_list("pk", flat=True)
    )
    sent = [pk for pk in ids if cache.add(f"ildreview:cam-resend:{pk}", 1, older_than_s)]
    if sent:
        logger.warning("CAM jobs sent again for similar cases %s", sent)
        similar_cases_explain_publish(similar_case_ids=sent)
    return sent


def cam_name(*, study_id: int, model_version_id: int, rank: int, side: str) -> str:
    """Deterministic media name of a CAM overlay, so re-runs overwrite instead of adding."""
    return f"results/{study_id}/{model_version_id}/rank{rank:02d}-{side}.png"


def _results_dir(study_id: int, model_version_id: int) -> str:
    return f"results/{study_id}/{model_version_id}"


def _results_delete(*, study_id: int, model_version_id: int) -> None:
    """Delete the stored result of (study, version) and its CAM files."""
    StudyResult.objects.filter(study_id=study_id, model_version_id=model_version_id).delete()
    folder = _results_dir(study_id, model_version_id)
    try:
        _dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotImplementedError):
        return
    for name in files:
        default_storage.delete(f"{folder}/{name}")


def _media_write(name: str, data: bytes) -> str:
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:  # a concurrent writer got there first; keep ours under the fixed name
        default_storage.delete(saved)
        raise RuntimeError(f"could not write {name} (storage chose {saved})")
    return saved


def cam_pair_png(*, model, size: int, query_slice: Slice, reference_slice: Slice):
    """PNG overlays (query side, reference side) of the similarity CAM of one slice pair: over
    the query slice towards the reference slice, and the other way round. Each is bounded by
    its slice's lung mask and transparent below the threshold (`engine.cam.lung_cam_png`):
    RGBA, laid over the slice by the page."""
    from retrieval.engine.cam import lung_cam_png, similarity_cam

    query = slice_prepare(slice_obj=query_slice, size=size)
    ref = slice_prepare(slice_obj=reference_slice, size=size)
    q_png = lung_cam_png(similarity_cam(model, query, ref), query.mask)
    r_png = lung_cam_png(similarity_cam(model, ref, query), ref.mask)
    return q_png, r_png


def similar_case_explain(*, similar_case_id: int) -> bool:
    """CAM overlays of one retrieved case's best slice pair (a worker job sent by the retrieve
    stage, or by the review page when a CAM is missing). Returns False when there is nothing
    to do: the case is gone (a newer run replaced the result) or both files exist already."""
    case = (
        SimilarCase.objects.select_related("result", "query_slice", "reference_slice")
        .filter(pk=similar_case_id)
        .first()
    )
    if case is None:
        return False
    if case.query_cam and case.reference_cam:
        return False
    result = case.result
    model = model_load(model_version=result.model_version)
    q_png, r_png = cam_pair_png(
        model=model,
        size=model_image_size(model),
        query_slice=case.query_slice,
        reference_slice=case.reference_slice,
    )
    names = {}
    for side, data in (("query", q_png), ("reference", r_png)):
        name = cam_name(
            study_id=result.study_id,
            model_version_id=result.model_version_id,
            rank=case.rank,
            side=side,
        )
        names[side] = _media_write(name, data)
    SimilarCase.objects.filter(pk=case.pk).update(
        query_cam=names["query"], reference_cam=names["reference"]
    )
    return True


# The service of each stage, in the order of `enqueue.STAGES` (the tasks' chain).
STAGE_SERVICES = dict(zip(STAGES, (study_prepare, study_embed, study_retrieve), strict=True))
