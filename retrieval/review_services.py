"""Writes of the review page: CAM overlays computed on demand, and the Retry action.

Live queries (another k, a diagnosis filter) can return slice pairs the pipeline did not
explain. Their CAM overlay is computed the first time the page asks for it, with the same
engine calls as the explain stage (`cam.similarity_cam` + `overlay_png`), and cached in media
under a deterministic name, so later requests only read the file.
"""

from __future__ import annotations

import logging

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from cases.models import Slice, Study
from retrieval.models import ModelVersion

logger = logging.getLogger(__name__)

CAM_SIDES = ("query", "reference")


def review_cam_name(
    *, study_id: int, model_version_id: int, query_slice_id: int, reference_slice_id: int, side: str
) -> str:
    """Media name of an on-demand CAM overlay (outside the pipeline's `results/` folder, whose
    files the explain stage owns)."""
    return (
        f"review-cams/{study_id}/{model_version_id}/"
        f"q{query_slice_id}-r{reference_slice_id}-{side}.png"
    )


def review_cam_png(
    *,
    study: Study,
    model_version: ModelVersion,
    query_slice: Slice,
    reference_slice: Slice,
    side: str,
) -> bytes:
    """PNG of the similarity CAM of `side` ("query": over the query slice, towards the
    reference slice; "reference": the other way round), from the cache or computed now."""
    if side not in CAM_SIDES:
        raise ValueError(f"side must be one of {CAM_SIDES}, got {side!r}")
    name = review_cam_name(
        study_id=study.pk,
        model_version_id=model_version.pk,
        query_slice_id=query_slice.pk,
        reference_slice_id=reference_slice.pk,
        side=side,
    )
    if default_storage.exists(name):
        with default_storage.open(name, "rb") as fh:
            return fh.read()
    data = _cam_compute(
        model_version=model_version,
        query_slice=query_slice,
        reference_slice=reference_slice,
        side=side,
    )
    saved = default_storage.save(name, ContentFile(data))
    if saved != name:
        # Another request computed the same overlay meanwhile: keep one file.
        default_storage.delete(saved)
    return data


def _cam_compute(
    *, model_version: ModelVersion, query_slice: Slice, reference_slice: Slice, side: str
) -> bytes:
    from retrieval.engine.cam import overlay_png, similarity_cam
    from retrieval.pipeline.runtime import model_image_size, model_load, slice_prepare

    model = model_load(model_version=model_version)
    size = model_image_size(model)
    query = slice_prepare(slice_obj=query_slice, size=size)
    ref = slice_prepare(slice_obj=reference_slice, size=size)
    if side == "query":
        return overlay_png(query.image, similarity_cam(model, query, ref))
    return overlay_png(ref.image, similarity_cam(model, ref, query))


def study_retry(*, study: Study, actor) -> None:
    """Queue a failed (or never processed) study again through the pipeline's enqueue service,
    with an audit event. Raises ValueError with the reason when the status does not allow it.
    """
    from cases.services.audit import audit_event_record
    from retrieval.pipeline.services import study_enqueue_processing

    previous = study.status_message
    if study.status not in (Study.Status.FAILED, Study.Status.UPLOADED):
        raise ValueError(
            f"study {study.pk} is {study.get_status_display().lower()}; only failed or "
            "unprocessed studies can be retried"
        )
    with transaction.atomic():
        study_enqueue_processing(study=study)
        audit_event_record(
            actor=actor, verb="study.retry", obj=study, detail={"previous_error": previous}
        )
