"""The study's processing status machine, its job row and the messages that start the stages.

- `study_status_set` is the one writer of `Study.status` in the pipeline: queueing
  (`study_enqueue_processing`), the end of a run (`study_finish`) and failures
  (`study_mark_failed`) all go through it, on a row they have locked.
- `job_new_run` starts a new run of a study's `StudyJob` (new `run_id`): messages of an older
  run become no-ops (see `retrieval.pipeline.stages`).
- Messages are sent by task *name* (`task_signature`), never by importing `retrieval.tasks`:
  the tasks call the pipeline, the pipeline does not call back, so the import graph has no
  cycle. The queue of each task is chosen by the routes in `ildreview/celery.py`, which apply
  to messages sent by name as well.
"""

from __future__ import annotations

import logging
import uuid

from celery import chain, current_app
from celery.canvas import Signature
from django.db import transaction
from django.utils import timezone

from cases.models import Study
from retrieval.models import ModelVersion, StudyJob

logger = logging.getLogger(__name__)

# The stages of a run, in order; each is the task `retrieval.tasks.study_<stage>`. The study is
# ready after `retrieve`; CAMs follow as separate jobs (`retrieval.pipeline.stages`).
STAGES = ("prepare", "embed", "retrieve")
TASKS_MODULE = "retrieval.tasks"


def task_name(short: str) -> str:
    """The registered name of a pipeline task (`retrieval.tasks.<short>`)."""
    return f"{TASKS_MODULE}.{short}"


def task_signature(short: str, *args, immutable: bool = False) -> Signature:
    """A signature of the task `short` with positional `args`, bound to the current app."""
    return current_app.signature(task_name(short), args=args, immutable=immutable)


def task_publish(short: str, *args) -> None:
    """Send the task `short` with positional `args` (runs it at once in eager mode)."""
    task_signature(short, *args).apply_async()


def study_status_set(
    *,
    study: Study,
    status: str,
    message: str = "",
    stage: str | None = None,
    percent: int | None = None,
) -> None:
    """Move a study, locked by the caller (`select_for_update`), to `status` with `message`
    (cut to 2000 characters; "" clears a previous failure) and, when given, the progress
    `stage` and `percent`. Raises ValueError when the status machine forbids the move."""
    if not study.can_transition(status):
        raise ValueError(f"study {study.pk} cannot go from status {study.status} to {status}")
    study.status = status
    study.status_message = message[:2000]
    fields = ["status", "status_message", "updated_at"]
    if stage is not None:
        study.progress_stage = stage
        fields.append("progress_stage")
    if percent is not None:
        study.progress_percent = percent
        fields.append("progress_percent")
    study.save(update_fields=fields)


def job_new_run(*, study_id: int, model_version: ModelVersion | None) -> StudyJob:
    """Start a new run of the study's job (created on first use), queued, pinned to
    `model_version`. Call inside a transaction: the job row is locked."""
    job, _ = StudyJob.objects.select_for_update().get_or_create(
        study_id=study_id, defaults={"run_id": ""}
    )
    job.run_id = uuid.uuid4().hex
    job.model_version = model_version
    job.stage = "queued"
    job.state = StudyJob.State.QUEUED
    job.worker = ""
    job.attempts += 1
    job.heartbeat_at = timezone.now()
    job.started_at = None
    job.finished_at = None
    job.save()
    return job


def study_enqueue_processing(*, study: Study) -> StudyJob:
    """Queue `study` for processing (upload, API, or the Retry action on a failed study).

    Moves the study to `processing` (stage "queued"), starts a new run (new `run_id`, so any
    message of an older run becomes a no-op) pinned to the active model version, and publishes
    the stage chain on commit. Raises ValueError when the status machine forbids it. Inside
    an outer transaction (an upload) the job commits or rolls back with it.
    """
    from retrieval.selectors import model_version_active

    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if not locked.can_transition(Study.Status.PROCESSING):
            raise ValueError(f"study {study.pk} cannot be processed from status {locked.status}")
        study_status_set(study=locked, status=Study.Status.PROCESSING, stage="queued", percent=0)
        job = job_new_run(study_id=locked.pk, model_version=model_version_active())
        run_id = job.run_id
        transaction.on_commit(lambda: run_publish(study_id=locked.pk, run_id=run_id))
    study.refresh_from_db()
    return job


def study_pipeline_signature(*, study_id: int, run_id: str):
    """The chain prepare -> embed -> retrieve of one run of a study."""
    return chain(
        *(task_signature(f"study_{stage}", study_id, run_id, immutable=True) for stage in STAGES)
    )


def run_publish(*, study_id: int, run_id: str) -> None:
    """Send the run's stage chain to the broker (called on commit). When the broker refuses
    it, the committed job is left queued with no heartbeat, which the recovery sweep takes as
    "never sent" and sends again; the upload itself has succeeded and stays so."""
    signature = study_pipeline_signature(study_id=study_id, run_id=run_id)
    try:
        signature.apply_async()
    except Exception:
        if signature.app.conf.task_always_eager:
            raise  # eager mode ran the stages here: this is their own error
        logger.exception(
            "study %s: run %s not sent to the broker; recovery resends it", study_id, run_id
        )
        StudyJob.objects.filter(
            study_id=study_id, run_id=run_id, state=StudyJob.State.QUEUED
        ).update(heartbeat_at=None)


def study_finish(*, study_id: int, run_id: str) -> bool:
    """Mark the run done and the study ready_for_review (100 %)."""
    with transaction.atomic():
        job = StudyJob.objects.select_for_update().filter(study_id=study_id).first()
        study = Study.objects.select_for_update().get(pk=study_id)
        if job is None or job.run_id != run_id or study.status != Study.Status.PROCESSING:
            return False
        study_status_set(
            study=study, status=Study.Status.READY_FOR_REVIEW, stage="done", percent=100
        )
        job.stage = "done"
        job.state = StudyJob.State.DONE
        job.finished_at = timezone.now()
        job.save(update_fields=["stage", "state", "finished_at", "updated_at"])
    return True


def study_mark_failed(*, study_id: int, run_id: str | None, message: str) -> bool:
    """Put the study in `failed` with `message` (its run only, when `run_id` is given).

    Returns False when the run is no longer current (a newer run owns the study) or the status
    machine does not allow it.
    """
    with transaction.atomic():
        study = Study.objects.select_for_update().filter(pk=study_id).first()
        if study is None:
            return False
        job = StudyJob.objects.select_for_update().filter(study_id=study_id).first()
        if run_id is not None and (job is None or job.run_id != run_id):
            return False
        if not study.can_transition(Study.Status.FAILED):
            return False
        study_status_set(study=study, status=Study.Status.FAILED, message=message)
        if job is not None:
            job.state = StudyJob.State.FAILED
            job.finished_at = timezone.now()
            job.save(update_fields=["state", "finished_at", "updated_at"])
    return True
