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

Fair queue. The broker is first in, first out, and every stage message of a run goes to the
back of the queue when the previous stage ends; if every run were sent at once, one user's
batch of 10 studies would sit in front of another user's single study. So a run is *admitted*
(sent to the broker, state `queued`) only while its uploader has fewer than
`ILDREVIEW_QUEUE_PER_USER` (K, default 1) runs sent and unfinished (`queued` or `running`);
otherwise it is created `waiting` and has no message yet. When a run ends (`study_finish`,
`study_mark_failed`), `jobs_admit` runs on commit and sends the waiting runs that became
admissible, choosing among the users under their cap the one with the fewest unfinished runs,
then the oldest waiting run. The broker thus holds at most K runs per user, and a single study
of a newcomer is sent at once, behind at most K runs of each other user. Nothing is lost when a
worker dies: the recovery sweep (`retrieval.pipeline.recovery`) re-sends a lost run (it keeps
its user's slot) and also calls `jobs_admit`. A study with no uploader counts as one user.

The upload guarantees hold: the job row is created in the caller's transaction; an admitted
run is published on commit, and a broker refusal leaves it for the sweep (`run_publish`).
"""

from __future__ import annotations

import logging
import uuid

from celery import chain, current_app
from celery.canvas import Signature
from django.conf import settings
from django.contrib.auth import get_user_model
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


def job_new_run(
    *, study_id: int, model_version: ModelVersion | None, waiting: bool = False
) -> StudyJob:
    """Start a new run of the study's job (created on first use), pinned to `model_version`:
    `queued` (to be published by the caller on commit), or `waiting` for admission by the fair
    queue. Call inside a transaction: the job row is locked."""
    job, _ = StudyJob.objects.select_for_update().get_or_create(
        study_id=study_id, defaults={"run_id": ""}
    )
    now = timezone.now()
    job.run_id = uuid.uuid4().hex
    job.model_version = model_version
    job.stage = "queued"
    job.state = StudyJob.State.WAITING if waiting else StudyJob.State.QUEUED
    job.worker = ""
    job.attempts += 1
    job.heartbeat_at = None if waiting else now
    if waiting or job.enqueued_at is None:
        job.enqueued_at = now
    job.published_at = None if waiting else now
    job.started_at = None
    job.stage_started_at = None
    job.stage_seconds = {}
    job.finished_at = None
    job.save()
    return job


# ---------------------------------------------------------------------------------------------
# Fair queue (see the module docstring)
# ---------------------------------------------------------------------------------------------

UNFINISHED = (StudyJob.State.QUEUED, StudyJob.State.RUNNING)


def queue_per_user() -> int:
    return max(1, int(settings.ILDREVIEW_QUEUE_PER_USER))


def _user_jobs(user_id: int | None):
    """Jobs of studies being processed whose uploader is `user_id` (None: no uploader)."""
    jobs = StudyJob.objects.filter(study__status=Study.Status.PROCESSING)
    if user_id is None:
        return jobs.filter(study__uploaded_by__isnull=True)
    return jobs.filter(study__uploaded_by_id=user_id)


def _user_lock(user_id: int | None) -> None:
    """Serialise admissions of one user (PostgreSQL row lock; SQLite serialises writers)."""
    if user_id is not None:
        list(get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk"))


def user_admits(*, user_id: int | None, exclude_job_id: int | None = None) -> bool:
    """Whether a run of `user_id` may be sent now: fewer than K of the user's runs are sent and
    unfinished. Call inside a transaction; the user's admissions are serialised."""
    _user_lock(user_id)
    unfinished = _user_jobs(user_id).filter(state__in=UNFINISHED).exclude(pk=exclude_job_id)
    return unfinished.count() < queue_per_user()


def _next_admissible() -> tuple[int, int | None] | None:
    """(job id, user id) of the waiting run to send next: among users under their cap, the
    one with the fewest unfinished runs, then the oldest waiting run; None when there is none."""
    waiting = (
        StudyJob.objects.filter(state=StudyJob.State.WAITING, study__status=Study.Status.PROCESSING)
        .order_by("enqueued_at", "pk")
        .values_list("pk", "study__uploaded_by_id")
    )
    oldest: dict[int | None, int] = {}
    for job_id, user_id in waiting:
        oldest.setdefault(user_id, job_id)  # the first seen is the user's oldest
    if not oldest:
        return None
    unfinished: dict[int | None, int] = {}
    for user_id in StudyJob.objects.filter(
        state__in=UNFINISHED, study__status=Study.Status.PROCESSING
    ).values_list("study__uploaded_by_id", flat=True):
        unfinished[user_id] = unfinished.get(user_id, 0) + 1
    cap = queue_per_user()
    order = list(oldest)  # users by their oldest waiting run
    candidates = [u for u in order if unfinished.get(u, 0) < cap]
    if not candidates:
        return None
    user_id = min(candidates, key=lambda u: (unfinished.get(u, 0), order.index(u)))
    return oldest[user_id], user_id


def _admit_one(*, job_id: int, user_id: int | None) -> int | None:
    """Send the waiting run `job_id` if its user is still under the cap; its study id or None."""
    with transaction.atomic():
        if not user_admits(user_id=user_id, exclude_job_id=job_id):
            return None
        now = timezone.now()
        sent = StudyJob.objects.filter(
            pk=job_id, state=StudyJob.State.WAITING, study__status=Study.Status.PROCESSING
        ).update(state=StudyJob.State.QUEUED, published_at=now, heartbeat_at=now, updated_at=now)
        if not sent:  # admitted by another process meanwhile, or the study left processing
            return None
        study_id, run_id = StudyJob.objects.filter(pk=job_id).values_list("study_id", "run_id")[0]
        transaction.on_commit(lambda: run_publish(study_id=study_id, run_id=run_id))
    return study_id


def jobs_admit(*, limit: int = 1000) -> list[int]:
    """Send every waiting run that the fair queue admits now (at most `limit`); returns their
    study ids in the order they were sent. Called when a run ends and by the recovery sweep."""
    sent: list[int] = []
    for _ in range(limit):
        pick = _next_admissible()
        if pick is None:
            break
        study_id = _admit_one(job_id=pick[0], user_id=pick[1])
        if study_id is not None:
            sent.append(study_id)
    return sent


def _jobs_admit_after_end() -> None:
    """On commit of a run's end: send the next waiting runs. A failure here is logged, not
    raised (the run's end is committed); the recovery sweep admits them later."""
    try:
        jobs_admit()
    except Exception:
        if current_app.conf.task_always_eager:
            raise
        logger.exception("admitting waiting runs failed; the recovery sweep retries")


def study_enqueue_processing(*, study: Study) -> StudyJob:
    """Queue `study` for processing (upload, API, or the Retry action on a failed study).

    Moves the study to `processing` (stage "queued"), starts a new run (new `run_id`, so any
    message of an older run becomes a no-op) pinned to the active model version, and publishes
    the stage chain on commit when the fair queue admits it (else the run waits, see the module
    docstring). Raises ValueError when the status machine forbids it. Inside
    an outer transaction (an upload) the job commits or rolls back with it.
    """
    from retrieval.selectors import model_version_active

    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if not locked.can_transition(Study.Status.PROCESSING):
            raise ValueError(f"study {study.pk} cannot be processed from status {locked.status}")
        study_status_set(study=locked, status=Study.Status.PROCESSING, stage="queued", percent=0)
        admitted = user_admits(user_id=locked.uploaded_by_id, exclude_job_id=_job_id(locked.pk))
        job = job_new_run(
            study_id=locked.pk, model_version=model_version_active(), waiting=not admitted
        )
        if admitted:
            run_id = job.run_id
            transaction.on_commit(lambda: run_publish(study_id=locked.pk, run_id=run_id))
    study.refresh_from_db()
    return job


def _job_id(study_id: int) -> int | None:
    return StudyJob.objects.filter(study_id=study_id).values_list("pk", flat=True).first()


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
        now = timezone.now()
        job.stage_seconds = _with_stage_time(job, now)
        job.stage = "done"
        job.state = StudyJob.State.DONE
        job.finished_at = now
        job.save(update_fields=["stage", "state", "stage_seconds", "finished_at", "updated_at"])
        transaction.on_commit(_jobs_admit_after_end)
    return True


def _with_stage_time(job: StudyJob, now) -> dict:
    """The job's stage seconds with the running stage's time added (the last stage ends with
    the run, not with `progress.stage_done`)."""
    seconds = dict(job.stage_seconds or {})
    if job.stage_started_at and job.stage and job.stage not in seconds:
        seconds[job.stage] = round((now - job.stage_started_at).total_seconds(), 3)
    return seconds


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
        transaction.on_commit(_jobs_admit_after_end)
    return True
