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

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from cases.models import ReferenceCase
from retrieval.models import ModelVersion, TrainingRun

logger = logging.getLogger(__name__)


def training_run_start(*, user, epochs: int | None = None) -> TrainingRun:
    """Record a training run and queue it on the gpu queue once the transaction commits."""
    run = TrainingRun.objects.create(
        created_by=user if getattr(user, "is_authenticated", False) else None,
        params={"epochs": int(epochs or settings.ILDREVIEW_BOOTSTRAP_EPOCHS)},
    )

    def publish(run_id=run.pk):
        from retrieval.tasks import model_version_train

        model_version_train.delay(run_id)

    transaction.on_commit(publish)
    return run


def training_run_execute(*, training_run_id: int) -> ModelVersion | None:
    """Train, save and register (inactive); the run records progress and the outcome."""
    from retrieval.pipeline.bootstrap import bootstrap_train
    from retrieval.services import model_version_register

    run = TrainingRun.objects.get(pk=training_run_id)
    if run.state == TrainingRun.State.DONE:
        return run.model_version  # a redelivered message: already trained
    TrainingRun.objects.filter(pk=run.pk).update(
        state=TrainingRun.State.RUNNING, progress_percent=0, message=""
    )

    def progress(done: int, total: int) -> None:
        # Feature extraction is most of the time; training itself is the last 10 %.
        percent = int(90 * done / max(total, 1))
        TrainingRun.objects.filter(pk=run.pk).update(progress_percent=percent)

    cases = list(
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).select_related("diagnosis")
    )
    name = f"trained-{timezone.now():%Y%m%d-%H%M%S}-{run.pk}"
    out = Path(settings.ILDREVIEW_MODEL_DIR) / name
    try:
        if len({c.diagnosis_id for c in cases}) < 2:
            raise ValueError("the approved library needs cases of at least two diagnoses")
        bootstrap_train(
            cases=cases, out_dir=out, progress=progress, epochs=run.params.get("epochs")
        )
        version = model_version_register(artefact_dir=out, name=name)
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
