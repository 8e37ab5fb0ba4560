"""The held-out gate on the approved library (the Django side of `retrieval.engine.holdout`).

`library_gate_table` trains the library's recipe on part of the library's patients and scores
the frozen backbone, the active version and that candidate on the others; the table is stored
on the version (`ModelVersion.holdout`) and `retrieval.services.model_version_activate` refuses
a version that it shows worse than the frozen backbone or the active version unless an override
reason is given. `library_train_gated` is the bootstrap's path: it trains on the whole library,
registers the version with its table and, when the trained one is worse than the frozen
backbone (or cannot be evaluated), also registers a version that serves the frozen backbone
and returns that one to activate.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from django.conf import settings

from cases.models import ReferenceCase
from retrieval.models import ModelVersion
from retrieval.pipeline.runtime import (
    PipelineDataError,
    model_fov_mm,
    model_image_size,
    model_load,
)

logger = logging.getLogger(__name__)


def library_patients(*, case_ids: list[int]) -> list[str]:
    """The (pseudonymous) patient of each reference case id, for patient-level splits."""
    patient_of = dict(
        ReferenceCase.objects.filter(pk__in=set(case_ids)).values_list("pk", "study__patient_id")
    )
    return [str(patient_of[c]) for c in case_ids]


def recipe_train(prepared, labels, patients, *, config, class_names):
    """`train_retrieval_model` with the patients when the recipe takes them (its inner
    validation split is patient-level then)."""
    from retrieval.engine.recipe import train_retrieval_model

    kwargs = {"class_names": class_names}
    if "patients" in inspect.signature(train_retrieval_model).parameters:
        kwargs["patients"] = list(patients)
    return train_retrieval_model(prepared, list(labels), config, **kwargs)


def library_gate_table(
    *,
    prepared: list,
    labels: list[str],
    patients: list[str],
    class_names: list[str],
    config,
    active: ModelVersion | None = None,
) -> dict:
    """The gate's table of the library recipe `config` (see `gate_table`)."""
    from retrieval.engine.backbones import build_backbone

    return gate_table(
        prepared=prepared,
        labels=labels,
        patients=patients,
        class_names=class_names,
        train=lambda p, y, g: recipe_train(p, y, g, config=config, class_names=class_names),
        frozen_backbone_factory=lambda: build_backbone(
            config.backbone,
            weights=config.weights,
            imagenet_file=config.imagenet_file,
            device=config.device,
        ),
        size=int(config.size),
        active=active,
    )


def gate_table(
    *,
    prepared: list,
    labels: list[str],
    patients: list[str],
    class_names: list[str] | None,
    train,
    frozen_backbone_factory,
    size: int,
    active: ModelVersion | None = None,
) -> dict:
    """The gate's table (see `retrieval.engine.holdout.holdout_evaluate`) for a training
    function `train(prepared, labels, patients) -> RetrievalModel`, with the active version
    scored when it embeds slices of the same `size`; {"skipped": reason} when the data is too
    small to hold patients out."""
    from retrieval.engine.holdout import holdout_evaluate

    active_model, active_name, notes = None, "", []
    if active is not None:
        try:
            model = model_load(model_version=active)
        except PipelineDataError as exc:
            notes.append(f"active version {active.name} not scored: {exc}")
        else:
            if model_fov_mm(model) != settings.ILDREVIEW_FOV_MM:
                notes.append(
                    f"active version {active.name} not scored: it resamples DICOM slices to "
                    f"field of view {model_fov_mm(model)} mm, this recipe "
                    f"{settings.ILDREVIEW_FOV_MM} mm"
                )
            elif model_image_size(model) == int(size):
                active_model, active_name = model, active.name
            else:
                notes.append(
                    f"active version {active.name} not scored: it embeds slices of "
                    f"{model_image_size(model)} px, this recipe {size} px"
                )
    try:
        table = holdout_evaluate(
            prepared=prepared,
            labels=labels,
            patients=patients,
            train=train,
            frozen_backbone_factory=frozen_backbone_factory,
            active_model=active_model,
            active_name=active_name,
            class_names=class_names,
        )
    except ValueError as exc:
        return {"skipped": f"not evaluated on held-out patients: {exc}", "notes": notes}
    return {**table, "notes": notes}


def library_train_gated(
    *,
    prepared: list,
    labels: list[str],
    patients: list[str],
    class_names: list[str],
    config,
    out_dir: Path,
    name: str,
    active: ModelVersion | None = None,
) -> tuple[ModelVersion, ModelVersion]:
    """Gate, train on the whole library, register; returns (trained version, version to
    activate): the trained one when the gate shows it is not worse than the frozen backbone
    or the active version, else a version serving the frozen backbone (registered too)."""
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.holdout import frozen_retrieval_model, frozen_table
    from retrieval.services import model_version_gate_check, model_version_register

    table = library_gate_table(
        prepared=prepared,
        labels=labels,
        patients=patients,
        class_names=class_names,
        config=config,
        active=active,
    )
    model = recipe_train(prepared, labels, patients, config=config, class_names=class_names)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    trained = model_version_register(artefact_dir=out_dir, name=name, holdout=table)
    if table.get("rows") and not model_version_gate_check(version=trained)["reasons"]:
        return trained, trained
    backbone = model.backbone
    if getattr(backbone, "fine_tuned", False):
        backbone = build_backbone(
            config.backbone,
            weights=config.weights,
            imagenet_file=config.imagenet_file,
            device=config.device,
        )
    frozen = frozen_retrieval_model(
        backbone=backbone,
        radiomics=model.radiomics,
        standardizer=model.standardizer,
        class_names=class_names,
        config=model.config,
    )
    frozen_dir = out_dir.with_name(out_dir.name + "-frozen")
    frozen_dir.mkdir(parents=True, exist_ok=True)
    frozen.save(frozen_dir)
    served = model_version_register(
        artefact_dir=frozen_dir, name=name + "-frozen", holdout=frozen_table(table)
    )
    logger.info("gate: %s is worse than the frozen backbone; %s serves it", name, served.name)
    return trained, served
