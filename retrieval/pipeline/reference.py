"""Keeping the reference index's source of truth (`ReferenceEmbedding`) in step with the
approved library and with model versions.

- `reference_case_sync`: on approve, embed the case's slices with the active version (and with
  a version being re-embedded, if any finished meanwhile the catch-up pass covers it); on
  retire/reject, delete its rows in every version. Workers pick the change up at their next
  query through the incremental `index_sync`.
- `library_reconcile`: make a version's rows match the approved library exactly (embed the
  approved cases it lacks, delete rows of cases no longer approved); idempotent.
- `model_version_activate_and_reembed`: reconcile the new version while the old one keeps
  answering queries, activate it, reconcile again for cases approved during the re-embed.
- `model_version_bootstrap`: when no version is active and the library has approved cases of at
  least two diagnoses, train a head-only model on it with the engine, register, activate and
  embed — so a fresh install (demo) and the tests have a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cases.models import ReferenceCase, Slice
from retrieval.models import ModelVersion, ReferenceEmbedding, SliceFeatures
from retrieval.pipeline.runtime import (
    PipelineDataError,
    model_fov_mm,
    model_image_size,
    model_load,
    slice_prepare,
    vector_to_bytes,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _case_slices(reference_case: ReferenceCase) -> list[Slice]:
    return list(
        Slice.objects.filter(series__study_id=reference_case.study_id).order_by(
            "series__series_number", "series_id", "index"
        )
    )


def reference_case_embed(*, reference_case: ReferenceCase, model_version: ModelVersion) -> int:
    """Embed the slices with enough lung of one case under `model_version`; returns the number
    of `ReferenceEmbedding` rows it has afterwards. Idempotent (rows keyed by (version, slice);
    rows of slices that no longer qualify are deleted)."""
    from retrieval.pipeline.stages import embed_with_radiomics, min_lung_fraction, slice_radiomics

    model = model_load(model_version=model_version)
    size = model_image_size(model)
    keep: list[tuple[Slice, object, np.ndarray, dict]] = []
    fractions: dict[int, float] = {}
    for slice_obj in _case_slices(reference_case):
        prepared = slice_prepare(slice_obj=slice_obj, size=size, fov_mm=model_fov_mm(model))
        fractions[slice_obj.pk] = float(prepared.lung_fraction)
        rad, main = slice_radiomics(model=model, prepared=prepared, threshold=min_lung_fraction())
        if rad is not None:
            keep.append((slice_obj, prepared, rad, main))
    vectors = np.zeros((0, 0), np.float32)
    if keep:
        batch = settings.ILDREVIEW_EMBED_BATCH
        parts = [
            embed_with_radiomics(
                model=model,
                prepared=[k[1] for k in keep[i : i + batch]],
                radiomics=np.vstack([k[2] for k in keep[i : i + batch]]),
            )
            for i in range(0, len(keep), batch)
        ]
        vectors = np.vstack(parts)
    with transaction.atomic():
        # The case may have been retired while we computed: only write for an approved case.
        current = ReferenceCase.objects.select_for_update().get(pk=reference_case.pk)
        if current.state != ReferenceCase.State.APPROVED:
            ReferenceEmbedding.objects.filter(reference_case=current).delete()
            return 0
        for slice_id, fraction in fractions.items():
            Slice.objects.filter(pk=slice_id).update(lung_fraction=fraction)
        for (slice_obj, _prep, rad, main), vec in zip(keep, vectors, strict=True):
            SliceFeatures.objects.update_or_create(
                slice_id=slice_obj.pk,
                model_version=model_version,
                defaults={
                    "lung_fraction": fractions[slice_obj.pk],
                    "usable": True,
                    "radiomics": rad.tobytes(),
                    "radiomics_main": main,
                },
            )
            ReferenceEmbedding.objects.update_or_create(
                model_version=model_version,
                slice_id=slice_obj.pk,
                defaults={
                    "reference_case": current,
                    "vector": vector_to_bytes(vec),
                    "lung_fraction": fractions[slice_obj.pk],
                },
            )
        kept = [k[0].pk for k in keep]
        ReferenceEmbedding.objects.filter(
            model_version=model_version, reference_case=current
        ).exclude(slice_id__in=kept).delete()
    return len(keep)


def reference_case_sync(*, reference_case_id: int) -> int:
    """Bring the index rows of one reference case in line with its state (see module doc).
    Returns the number of rows the case has in the active version afterwards."""
    from retrieval.selectors import model_version_active

    rc = ReferenceCase.objects.filter(pk=reference_case_id).first()
    if rc is None:
        return 0
    if rc.state != ReferenceCase.State.APPROVED:
        ReferenceEmbedding.objects.filter(reference_case=rc).delete()
        return 0
    active = model_version_active()
    if active is None:
        logger.info("reference case %s approved but no active model yet", rc.pk)
        return 0
    return reference_case_embed(reference_case=rc, model_version=active)


def library_reconcile(*, model_version: ModelVersion, progress: Progress | None = None) -> int:
    """Make `model_version`'s rows match the approved library; returns cases embedded now."""
    approved = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
    ReferenceEmbedding.objects.filter(model_version=model_version).exclude(
        reference_case__in=approved
    ).delete()
    done_ids = set(
        ReferenceEmbedding.objects.filter(model_version=model_version).values_list(
            "reference_case_id", flat=True
        )
    )
    todo = list(approved.exclude(pk__in=done_ids).order_by("pk"))
    for i, rc in enumerate(todo):
        try:
            reference_case_embed(reference_case=rc, model_version=model_version)
        except PipelineDataError as exc:  # one unreadable case must not block the library
            logger.warning("reference case %s not embedded: %s", rc.pk, exc)
        if progress:
            progress(i + 1, len(todo))
    return len(todo)


def model_version_activate_and_reembed(
    *, model_version_id: int, override_reason: str = "", actor_id: int | None = None
) -> int:
    """Re-embed the approved library with the version, then activate it through the held-out
    gate (`override_reason` as in `services.model_version_activate`, checked before the costly
    re-embedding too); the previously active version answers queries until the switch.
    Returns the number of cases embedded."""
    from django.contrib.auth import get_user_model

    from retrieval.services import (
        ModelVersionGateError,
        model_version_activate,
        model_version_gate_check,
    )

    version = ModelVersion.objects.get(pk=model_version_id)
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    reasons = model_version_gate_check(version=version)["reasons"]
    if reasons and not override_reason.strip():
        raise ModelVersionGateError(f"{version.name} is not activated: " + "; ".join(reasons))
    n = library_reconcile(model_version=version)
    model_version_activate(version=version, actor=actor, override_reason=override_reason)
    # Cases approved while we were embedding were synced into the old version only.
    n += library_reconcile(model_version=version)
    return n


def model_version_bootstrap(*, force: bool = False, progress: Progress | None = None):
    """Train, gate, register, activate and embed a first model from the approved library.

    Does nothing (returns None) when a version is active (unless `force`) or the library has
    fewer than two diagnoses. Backbone: `ILDREVIEW_BACKBONE` with `ILDREVIEW_BOOTSTRAP_WEIGHTS`
    ("imagenet" by default; tests use "random"), image size `ILDREVIEW_BOOTSTRAP_SIZE`.
    The held-out gate (`retrieval.pipeline.gate.library_train_gated`) decides what serves: the
    trained version when it is not worse than the frozen backbone on held-out library patients,
    else a version serving the frozen backbone (the trained one stays registered, inactive).
    Returns the activated version; None too when, with `force`, the gate refuses both against
    the active version (which then keeps serving).
    """
    from retrieval.pipeline.bootstrap import library_prepare, library_recipe_config
    from retrieval.pipeline.gate import library_patients, library_train_gated
    from retrieval.selectors import model_version_active
    from retrieval.services import ModelVersionGateError, model_version_activate

    active = model_version_active()
    if active is not None and not force:
        return None
    approved = list(
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).select_related("diagnosis")
    )
    if len({rc.diagnosis_id for rc in approved}) < 2:
        logger.info("bootstrap: the approved library needs cases of at least two diagnoses")
        return None
    size = int(settings.ILDREVIEW_BOOTSTRAP_SIZE)
    prepared, labels, class_names, case_ids = library_prepare(
        cases=approved, size=size, progress=progress
    )
    name = f"bootstrap-{timezone.now():%Y%m%d-%H%M%S}"
    _trained, version = library_train_gated(
        prepared=prepared,
        labels=[class_names[i] for i in labels],
        patients=library_patients(case_ids=case_ids),
        class_names=class_names,
        config=library_recipe_config(
            backbone_name=settings.ILDREVIEW_BACKBONE,
            weights=settings.ILDREVIEW_BOOTSTRAP_WEIGHTS,
            size=size,
            epochs=int(settings.ILDREVIEW_BOOTSTRAP_EPOCHS),
        ),
        out_dir=Path(settings.ILDREVIEW_MODEL_DIR) / name,
        name=name,
        active=active,
    )
    library_reconcile(model_version=version)
    try:
        model_version_activate(version=version)
    except ModelVersionGateError as exc:
        logger.warning("bootstrap: %s", exc)
        return None
    library_reconcile(model_version=version)
    return version
