"""Processing of an uploaded study: prepare -> embed -> retrieve, then CAMs in the background.

Each stage is a service taking `study_id` and `run_id` and is run by its own Celery task
(`retrieval.tasks.study_<stage>`, sent by `retrieval.pipeline.enqueue`), so the heavy parts can
go to the `gpu` queue:

- prepare (cpu queue): load HU slices, engine `prepare_slice` (window, resize, k-means lung
  mask), `Slice.lung_fraction`, raw pyradiomics vector + main features (`SliceFeatures`).
  The k-means segmentation is numpy code with no CUDA path, so it runs next to radiomics on
  the cpu queue instead of occupying a GPU worker.
  Where the worker serves the gpu queue too (one machine; `ILDREVIEW_PREPARE_EMBEDS`), it
  also computes the embeddings: the backbone runs in a thread on the slices segmented so far
  while the next ones are segmented and their radiomics computed, which halves the time to
  results on two cores. Prepared slices stay in a per-process cache (`runtime.slice_prepare`)
  for the embed stage and the CAM jobs.
- embed (gpu queue): backbone + GeM deep features and the fusion head -> `SliceFeatures.embedding`
  for slices with enough lung (`ILDREVIEW_MIN_LUNG_FRACTION`) that prepare did not embed.
- retrieve (cpu queue): incremental index sync + `rank_cases` -> `StudyResult` (votes, suggestion
  or "no close match" under the model's abstain thresholds) + `SimilarCase`;
  the study becomes ready_for_review (`enqueue.study_finish`) at once, and one CAM job per
  retrieved case is published, best rank first (`retrieval.tasks.similar_case_explain`).
- explain (gpu queue, one task per similar case, after the study is ready): similarity CAM of
  the case's best slice pair (both directions in one Grad-CAM pass, from the embeddings and
  radiomics stored for the two slices), saved as PNG overlays with deterministic names
  (written through `_media_write`) and recorded on the `SimilarCase`. The review page shows a
  "computing" placeholder until then. First results do not wait for them.

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
    model_fov_mm,
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


def prepare_embeds() -> bool:
    """Whether the prepare stage computes the embeddings too (`ILDREVIEW_PREPARE_EMBEDS`)."""
    from retrieval.pipeline.runtime import worker_serves_queue

    mode = str(settings.ILDREVIEW_PREPARE_EMBEDS).strip().lower()
    if mode in ("true", "1", "yes", "on"):
        return True
    if mode in ("false", "0", "no", "off"):
        return False
    return worker_serves_queue("gpu")


def deep_batch_size(model) -> int:
    """Slices per backbone forward pass: ILDREVIEW_EMBED_BATCH on a GPU; 2 on the CPU, where
    larger batches are slower (activations of 8 slices at 512 px spill out of the caches)."""
    if getattr(model.device, "type", "cpu") == "cuda":
        return max(1, int(settings.ILDREVIEW_EMBED_BATCH))
    return 2


class _DeepFeatures:
    """The backbone over slices in a background thread, fed while the caller segments the next
    slices and computes their radiomics. Torch and most of pyradiomics (SimpleITK, numpy)
    release the GIL, so on two cores the deep features cost little extra wall time."""

    def __init__(self, model):
        from concurrent.futures import ThreadPoolExecutor

        self.model = model
        self.batch = deep_batch_size(model)
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deep-features")
        self.pending: list[tuple[int, np.ndarray]] = []
        self.futures: list[tuple[list[int], list[np.ndarray], object]] = []

    def _run(self, images: list[np.ndarray]) -> np.ndarray:
        from retrieval.engine.features import FeatureExtractor

        extractor = FeatureExtractor(
            self.model.backbone,
            self.model.radiomics,
            len(images),
            input_size=self.model.config.get("input_size"),
        )
        return extractor.deep(images)

    def _flush(self) -> None:
        if self.pending:
            keys = [k for k, _ in self.pending]
            images = [im for _, im in self.pending]
            self.futures.append((keys, images, self.pool.submit(self._run, images)))
            self.pending = []

    def add(self, key: int, image: np.ndarray) -> None:
        self.pending.append((key, image))
        if len(self.pending) >= self.batch:
            self._flush()

    def result(self) -> dict[int, np.ndarray]:
        """Deep feature vector of every key added (waits for the thread)."""
        self._flush()
        out: dict[int, np.ndarray] = {}
        try:
            # The caller has no slices left to segment: it takes the batches the thread has not
            # started, last first, while the thread works through the first ones, so both cores
            # work on the backlog (the backbone is the slower half on the CPU).
            for keys, images, future in reversed(self.futures):
                if future.cancel():
                    out.update(zip(keys, self._run(images), strict=True))
            for keys, _images, future in self.futures:
                if not future.cancelled():
                    out.update(zip(keys, future.result(), strict=True))
        finally:
            self.close()
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def study_prepare(*, study_id: int, run_id: str) -> bool:
    """Stage 1: lung masks, lung fractions and radiomics of every slice of the study; with
    `prepare_embeds()` also the embeddings (backbone in a thread alongside), which leaves the
    embed stage nothing to do."""
    job = _current_job(study_id=study_id, run_id=run_id)
    if job is None:
        return False
    version = _job_model_version(job)
    progress = prog.stage_start(job=job, stage="prepare")
    model = model_load(model_version=version)
    size, fov_mm = model_image_size(model), model_fov_mm(model)
    slices = _study_slices(study_id)
    if not slices:
        raise PipelineDataError(f"study {study_id} has no slices to process")
    threshold = min_lung_fraction()
    deep = _DeepFeatures(model) if prepare_embeds() else None
    usable: dict[int, np.ndarray] = {}  # slice id -> raw radiomics
    try:
        for i, slice_obj in enumerate(slices):
            prepared = slice_prepare(slice_obj=slice_obj, size=size, fov_mm=fov_mm)
            fraction = float(prepared.lung_fraction)
            if deep is not None and fraction >= threshold:
                deep.add(slice_obj.pk, prepared.image)  # before radiomics: they overlap
            rad, main = slice_radiomics(model=model, prepared=prepared, threshold=threshold)
            if rad is not None:
                usable[slice_obj.pk] = rad
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
        if deep is not None and usable:
            features = deep.result()
            ids = list(usable)
            vectors = model.embed_features(
                np.vstack([features[pk] for pk in ids]), np.vstack([usable[pk] for pk in ids])
            )
            _embeddings_write(version=version, slice_ids=ids, vectors=vectors)
    finally:
        if deep is not None:
            deep.close()
    prog.stage_done(study_id=study_id, run_id=run_id)
    return True


def _embeddings_write(*, version: ModelVersion, slice_ids: list[int], vectors) -> None:
    with transaction.atomic():
        for pk, vec in zip(slice_ids, vectors, strict=True):
            SliceFeatures.objects.filter(slice_id=pk, model_version=version).update(
                embedding=vector_to_bytes(vec)
            )


def study_embed(*, study_id: int, run_id: str) -> bool:
    """Stage 2: fused embeddings of the usable slices (enough lung, radiomics computed) that
    the prepare stage did not embed already (prepare resets every embedding of the run, so
    one present now belongs to this run)."""
    job = _current_job(study_id=study_id, run_id=run_id)
    if job is None:
        return False
    version = _job_model_version(job)
    progress = prog.stage_start(job=job, stage="embed")
    feats = list(
        SliceFeatures.objects.filter(
            model_version=version,
            slice__series__study_id=study_id,
            usable=True,
            embedding__isnull=True,
        )
        .select_related("slice")
        .order_by("slice__series__series_number", "slice__series_id", "slice__index")
    )
    if feats:
        model = model_load(model_version=version)
        size, fov_mm = model_image_size(model), model_fov_mm(model)
        batch = settings.ILDREVIEW_EMBED_BATCH
        for start in range(0, len(feats), batch):
            chunk = feats[start : start + batch]
            prepared = [slice_prepare(slice_obj=f.slice, size=size, fov_mm=fov_mm) for f in chunk]
            rad = np.vstack([np.frombuffer(bytes(f.radiomics), dtype=np.float64) for f in chunk])
            vectors = embed_with_radiomics(model=model, prepared=prepared, radiomics=rad)
            _embeddings_write(
                version=version, slice_ids=[f.slice_id for f in chunk], vectors=vectors
            )
            progress(start + len(chunk), len(feats))
    prog.stage_done(study_id=study_id, run_id=run_id)
    return True


def embed_with_radiomics(*, model, prepared: list, radiomics: np.ndarray) -> np.ndarray:
    """Embeddings (N, E) of prepared slices whose raw radiomics were computed already: deep
    features through the backbone, then the model's fusion (`RetrievalModel.embed`)."""
    return model.embed(prepared, radiomics=radiomics, batch_size=deep_batch_size(model))


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


def _stored_slice_vectors(
    *, slice_ids: list[int], model_version_id: int
) -> dict[int, tuple[np.ndarray | None, np.ndarray | None]]:
    """slice id -> (fused embedding, raw radiomics) stored under the version, each None when
    not stored: query slices keep their embedding on `SliceFeatures`, reference slices in
    `ReferenceEmbedding`; both keep their raw radiomics on `SliceFeatures`."""
    from retrieval.models import ReferenceEmbedding

    out: dict[int, tuple[np.ndarray | None, np.ndarray | None]] = {
        pk: (None, None) for pk in slice_ids
    }
    rows = SliceFeatures.objects.filter(
        slice_id__in=slice_ids, model_version_id=model_version_id, usable=True
    ).values_list("slice_id", "embedding", "radiomics")
    for pk, emb, rad in rows:
        out[pk] = (
            vector_from_bytes(emb) if emb else None,
            np.frombuffer(bytes(rad), dtype=np.float64) if rad else None,
        )
    refs = ReferenceEmbedding.objects.filter(
        slice_id__in=slice_ids, model_version_id=model_version_id
    ).values_list("slice_id", "vector")
    for pk, vec in refs:
        if out[pk][0] is None:
            out[pk] = (vector_from_bytes(vec), out[pk][1])
    return out


def cam_pair_png(
    *,
    model,
    size: int,
    query_slice: Slice,
    reference_slice: Slice,
    model_version_id: int | None = None,
):
    """PNG overlays (query side, reference side) of the similarity CAM of one slice pair: over
    the query slice towards the reference slice, and the other way round, both in one Grad-CAM
    pass. Each is bounded by its slice's lung mask and transparent below the threshold
    (`engine.cam.lung_cam_png`): RGBA, laid over the slice by the page.

    With `model_version_id`, the embeddings and raw radiomics the pipeline stored for the two
    slices under that version are used instead of computing them again (the same values)."""
    from retrieval.engine.cam import lung_cam_png, similarity_cams

    fov_mm = model_fov_mm(model)
    query = slice_prepare(slice_obj=query_slice, size=size, fov_mm=fov_mm)
    ref = slice_prepare(slice_obj=reference_slice, size=size, fov_mm=fov_mm)
    stored = {query_slice.pk: (None, None), reference_slice.pk: (None, None)}
    if model_version_id is not None:
        stored = _stored_slice_vectors(
            slice_ids=[query_slice.pk, reference_slice.pk], model_version_id=model_version_id
        )
    q_emb, q_rad = stored[query_slice.pk]
    r_emb, r_rad = stored[reference_slice.pk]
    q_heat, r_heat = similarity_cams(
        model,
        [query, ref],
        [ref, query],
        other_embeddings=[r_emb, q_emb],
        query_radiomics=[q_rad, r_rad],
    )
    return (
        lung_cam_png(*_on_source_grid(q_heat, query)),
        lung_cam_png(*_on_source_grid(r_heat, ref)),
    )


def _on_source_grid(heat: np.ndarray, prepared) -> tuple[np.ndarray, np.ndarray]:
    """(heat, lung mask) on the grid of the slice the page shows: unchanged for a slice
    resized whole; mapped back through its frame for one resampled to a field of view."""
    if prepared.frame is None:
        return heat, prepared.mask
    from retrieval.engine.geometry import frame_to_source

    shape = prepared.source_shape
    mask = frame_to_source(prepared.mask.astype(np.float32), prepared.frame, shape) >= 0.5
    return frame_to_source(heat, prepared.frame, shape), mask


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
        model_version_id=result.model_version_id,
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
