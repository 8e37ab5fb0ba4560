"""Training launched from the admin: a `TrainingRun` executed by a task on the `gpu` queue.

The run trains on the approved reference library (the same recipe as the bootstrap, epochs
from the run's params), registers the result as a new inactive `ModelVersion` and keeps the
admin informed through `progress_percent` and `message`. Activating the new version is a
separate admin step that re-embeds the library in the background
(`retrieval.tasks.model_version_activate_and_reembed`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cases.models import ReferenceCase
from retrieval.models import ModelVersion, TrainingRun

logger = logging.getLogger(__name__)


# Options an admin may choose for a run (TrainingRun.params); None means the setting's default.
TRAINING_WEIGHTS = ("imagenet", "random")
# Fractions of the progress bar: slice preparation, then training, then the evaluation report.
_PREPARE_END, _TRAIN_END = 50, 70


def training_run_start(
    *,
    user,
    epochs: int | None = None,
    backbone: str | None = None,
    weights: str | None = None,
    size: int | None = None,
) -> TrainingRun:
    """Record a training run and queue it on the gpu queue once the transaction commits.

    `backbone` (a key of `retrieval.engine.backbones.BACKBONES`), `weights` ("imagenet" or
    "random") and `size` (slice side in pixels) default to `ILDREVIEW_BACKBONE`,
    `ILDREVIEW_BOOTSTRAP_WEIGHTS` and `ILDREVIEW_BOOTSTRAP_SIZE`.
    """
    from retrieval.engine.backbones import BACKBONES

    backbone = backbone or settings.ILDREVIEW_BACKBONE
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r} (one of {', '.join(BACKBONES)})")
    if weights and weights not in TRAINING_WEIGHTS:
        raise ValueError(f"unknown weights {weights!r} (one of {', '.join(TRAINING_WEIGHTS)})")
    run = TrainingRun.objects.create(
        created_by=user if getattr(user, "is_authenticated", False) else None,
        params={
            "epochs": int(epochs or settings.ILDREVIEW_BOOTSTRAP_EPOCHS),
            "backbone": backbone,
            "weights": weights or settings.ILDREVIEW_BOOTSTRAP_WEIGHTS,
            "size": int(size or settings.ILDREVIEW_BOOTSTRAP_SIZE),
        },
    )

    def publish(run_id=run.pk):
        from retrieval.pipeline.enqueue import task_publish

        task_publish("model_version_train", run_id)

    transaction.on_commit(publish)
    return run


def training_run_execute(*, training_run_id: int) -> ModelVersion | None:
    """Gate, train, save, evaluate and register (inactive); the run records progress and
    outcome. The held-out gate's table (`retrieval.pipeline.gate.library_gate_table`) is stored
    on the version; activating it goes through the gate (`services.model_version_activate`).

    The evaluation report (`report.json` / `report.html` in the artefact's `report/` folder,
    the version's `report_dir`) is a leave-one-case-out retrieval over the library the model
    was trained on: optimistic, but it shows at once whether training separated the classes;
    `manage.py evaluate_retrieval` gives held-out figures.
    """
    from retrieval.pipeline.bootstrap import (
        artefact_train,
        library_prepare,
        library_recipe_config,
    )
    from retrieval.pipeline.gate import library_gate_table, library_patients
    from retrieval.selectors import model_version_active
    from retrieval.services import model_version_register

    run = TrainingRun.objects.get(pk=training_run_id)
    if run.state == TrainingRun.State.DONE:
        return run.model_version  # a redelivered message: already trained
    TrainingRun.objects.filter(pk=run.pk).update(
        state=TrainingRun.State.RUNNING, progress_percent=0, message=""
    )

    def percent(value: int) -> None:
        TrainingRun.objects.filter(pk=run.pk).update(progress_percent=min(int(value), 99))

    params = run.params or {}
    backbone = params.get("backbone") or settings.ILDREVIEW_BACKBONE
    weights = params.get("weights") or settings.ILDREVIEW_BOOTSTRAP_WEIGHTS
    size = int(params.get("size") or settings.ILDREVIEW_BOOTSTRAP_SIZE)
    epochs = int(params.get("epochs") or settings.ILDREVIEW_BOOTSTRAP_EPOCHS)
    cases = list(
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).select_related("diagnosis")
    )
    name = f"trained-{timezone.now():%Y%m%d-%H%M%S}-{run.pk}"
    out = Path(settings.ILDREVIEW_MODEL_DIR) / name
    try:
        if len({c.diagnosis_id for c in cases}) < 2:
            raise ValueError("the approved library needs cases of at least two diagnoses")
        # Feature extraction dominates the time: it drives the first half of the bar.
        prepared, labels, class_names, case_ids = library_prepare(
            cases=cases,
            size=size,
            progress=lambda done, total: percent(_PREPARE_END * done / max(total, 1)),
        )
        # The held-out gate's table (the recipe on part of the patients, against the frozen
        # backbone and the active version); activation compares these figures.
        patients = library_patients(case_ids=case_ids)
        holdout = library_gate_table(
            prepared=prepared,
            labels=[class_names[i] for i in labels],
            patients=patients,
            class_names=class_names,
            config=library_recipe_config(
                backbone_name=backbone, weights=weights, size=size, epochs=epochs
            ),
            active=model_version_active(),
        )
        artefact_train(
            prepared=prepared,
            labels=labels,
            class_names=class_names,
            out_dir=out,
            backbone_name=backbone,
            weights=weights,
            size=size,
            epochs=epochs,
            patients=patients,
        )
        percent(_TRAIN_END)
        report = library_report_write(
            artefact_dir=out,
            prepared=prepared,
            labels=[class_names[i] for i in labels],
            groups=case_ids,
            out_dir=out / "report",
            meta={
                "training_run": run.pk,
                "backbone": backbone,
                "weights": weights,
                "size": size,
                "epochs": epochs,
                "cases": len(cases),
            },
        )
        version = model_version_register(
            artefact_dir=out, name=name, report_dir=str(out / "report"), holdout=holdout
        )
        # The headline figures beside the training metrics, for the admin's list.
        version.metrics = {**version.metrics, **_headline(report)}
        version.save(update_fields=["metrics"])
    except Exception as exc:
        TrainingRun.objects.filter(pk=run.pk).update(
            state=TrainingRun.State.FAILED, message=f"{type(exc).__name__}: {exc}"[:2000]
        )
        raise
    TrainingRun.objects.filter(pk=run.pk).update(
        state=TrainingRun.State.DONE,
        progress_percent=100,
        model_version=version,
        message=f"registered {name}; activate it to re-embed the library",
    )
    return version


def _headline(report: dict) -> dict:
    keys = ("macro_f1", "accuracy", "map_at_10", "precision_at_10")
    return {k: report[k] for k in keys if k in report}


def library_report_write(
    *,
    artefact_dir: Path,
    prepared: list,
    labels: list[str],
    groups: list[int],
    out_dir: Path,
    meta: dict | None = None,
) -> dict:
    """Leave-one-group-out retrieval evaluation of a saved model on prepared slices, written
    as `report.json` + `report.html` in `out_dir` (engine report format); returns the report.

    Each slice queries every slice of the *other* groups (cases), ranked by cosine
    similarity; fewer than 10 candidates are padded with non-relevant entries (a missing result
    is not a relevant one)."""
    from retrieval.engine.artefact import RetrievalModel
    from retrieval.engine.metrics import embedding_metrics, l2_normalise, retrieval_metrics
    from retrieval.engine.report import write_report

    model = RetrievalModel.load(artefact_dir, imagenet_file=settings.ILDREVIEW_RESNET50_WEIGHTS)
    emb = l2_normalise(model.embed(prepared))
    labels_arr = np.asarray(labels).astype(str)
    groups_arr = np.asarray(groups)
    sims = emb @ emb.T
    sims[groups_arr[:, None] == groups_arr[None, :]] = -np.inf  # never the query's own case
    depth = 10
    order = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    retrieved = np.where(
        np.take_along_axis(sims, order, axis=1) > -np.inf, labels_arr[order], "(none)"
    )
    if retrieved.shape[1] < depth:
        pad = np.full((len(retrieved), depth - retrieved.shape[1]), "(none)")
        retrieved = np.hstack([retrieved, pad])
    class_names = sorted(set(labels_arr.tolist()))
    row = {
        **retrieval_metrics(labels_arr, retrieved, labels=class_names),
        **embedding_metrics(emb, labels_arr.tolist()),
    }
    report = {
        **row,
        "headline": "trained model",
        "ablation": {"trained model": row},
        "meta": {
            "evaluation": "leave-one-case-out retrieval on the approved library the model was "
            "trained on (optimistic; manage.py evaluate_retrieval gives held-out figures)",
            "slices": len(labels),
            "cases": len(set(groups)),
            **(meta or {}),
        },
    }
    write_report(report, out_dir, projection=(emb, labels_arr.tolist(), None))
    return report
