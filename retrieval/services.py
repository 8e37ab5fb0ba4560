"""Writes of the retrieval app: registering and activating trained model versions; the review
page's CAM overlays computed on demand, and its Retry action.

Live queries of the review page (another k, a diagnosis filter) can return slice pairs the
pipeline did not explain. Their CAM overlay is computed the first time the page asks for it,
with the same engine calls as the explain stage (`cam.similarity_cam` + `overlay_png`), and
cached in media under a deterministic name, so later requests only read the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from cases.models import Slice, Study
from cases.services.audit import audit_event_record
from retrieval.models import ModelVersion

CAM_SIDES = ("query", "reference")


class ModelVersionError(ValueError):
    """A model version cannot be registered or activated (reason in the message)."""


def _artefact_summary(artefact_dir: Path) -> dict:
    """Backbone, weights hash, config and metrics of a saved artefact, read from its JSON
    description without loading any weights (registration must stay cheap)."""
    from retrieval.engine.artefact import read_artefact_meta

    try:
        return read_artefact_meta(artefact_dir)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ModelVersionError(f"{artefact_dir}: not a readable model artefact ({exc})") from exc


@transaction.atomic
def model_version_register(
    *, artefact_dir: Path | str, name: str, activate: bool = False, report_dir: str = ""
) -> ModelVersion:
    """Record a saved artefact folder as a model version (optionally making it the active one).

    Raises ModelVersionError when the folder is not an artefact or the name is taken; nothing
    is saved then.
    """
    artefact_dir = Path(artefact_dir).resolve()
    if not artefact_dir.is_dir():
        raise ModelVersionError(f"{artefact_dir}: artefact folder does not exist")
    if ModelVersion.objects.filter(name=name).exists():
        raise ModelVersionError(f"a model version named {name!r} already exists")
    meta = _artefact_summary(artefact_dir)
    version = ModelVersion.objects.create(
        name=name,
        artefact_dir=str(artefact_dir),
        backbone=meta.get("backbone_name", ""),
        backbone_weights_sha256=meta.get("backbone_weights_sha256", "") or "",
        config=meta.get("config", {}) or {},
        metrics=meta.get("metrics", {}) or {},
        report_dir=report_dir,
    )
    audit_event_record(actor=None, verb="model_version.register", obj=version)
    if activate:
        model_version_activate(version=version)
    return version


@transaction.atomic
def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Make `version` the one active model version (the previous one is deactivated)."""
    ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
    version.is_active = True
    version.save(update_fields=["is_active"])
    audit_event_record(actor=None, verb="model_version.activate", obj=version)
    return version


# --- the review page: CAM overlays on demand, Retry ----------------------------------------


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
    from retrieval.pipeline.enqueue import study_enqueue_processing

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
