"""Re-enqueue studies whose worker died mid-processing, so nothing is lost.

With Redis, the unacknowledged message of a SIGKILLed worker comes back on its own, but only
after the broker's `visibility_timeout`; with the embedded filesystem broker it never comes
back. So workers also recover on their own:

- at `worker_ready`, a job `running` on a worker with this worker's name whose heartbeat is
  older than this process's start was running in a previous incarnation of this worker that
  died: re-enqueued at once;
- every `ILDREVIEW_RECOVERY_INTERVAL_S` (a thread in the worker's main process), any job
  `running` with a heartbeat older than `ILDREVIEW_STALE_AFTER_S`, or `queued` with a heartbeat
  older than `ILDREVIEW_QUEUED_STALE_AFTER_S` (a message lost by a broker without
  redelivery), is re-enqueued; so is a `queued` job without heartbeat at once (its message
  was never sent: the broker refused it right after the commit, see `enqueue.run_publish`);
- a study still `uploaded` (committed by an upload but never queued: no job, or a job whose
  run never started) `ILDREVIEW_UPLOADED_GRACE_S` after its last change is queued.
- runs `waiting` in the fair queue (`enqueue.jobs_admit`) whose user is under the cap are sent:
  normally the end of a run sends the next one on commit, but a process that died right
  after that commit, or a database error then, would leave them waiting forever. A lost run
  re-enqueued above keeps its user's slot (it is sent at once, `queued`).
- CAM jobs of ready studies whose overlays are still missing after
  `ILDREVIEW_QUEUED_STALE_AFTER_S` are sent again (`stages.cams_missing_resend`).

Re-enqueueing starts a new run (new run_id) under a row lock, so two workers sweeping at once
re-enqueue a study once, and the old run's message, if it is ever redelivered, is a no-op.
Queueing an uploaded study locks its row and re-checks its status first, for the same reason.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from cases.models import Study
from retrieval.models import StudyJob
from retrieval.pipeline.enqueue import (
    job_new_run,
    jobs_admit,
    run_publish,
    study_enqueue_processing,
)
from retrieval.pipeline.stages import cams_missing_resend

logger = logging.getLogger(__name__)

PROCESS_STARTED = timezone.now()


def stale_jobs_requeue(
    *, hostname: str | None = None, started: datetime | None = None
) -> list[int]:
    """Re-enqueue lost jobs, queue forgotten uploads and send admissible waiting runs (see the
    module docstring); returns the study ids re-enqueued, queued or sent."""
    now = timezone.now()
    stale_running = now - timedelta(seconds=settings.ILDREVIEW_STALE_AFTER_S)
    stale_queued = now - timedelta(seconds=settings.ILDREVIEW_QUEUED_STALE_AFTER_S)
    cond = (
        Q(state=StudyJob.State.RUNNING, heartbeat_at__lt=stale_running)
        | Q(state=StudyJob.State.QUEUED, heartbeat_at__lt=stale_queued)
        | Q(state=StudyJob.State.QUEUED, heartbeat_at__isnull=True)
    )
    if hostname and started:
        cond |= Q(state=StudyJob.State.RUNNING, worker=hostname, heartbeat_at__lt=started)
    requeued = []
    candidates = StudyJob.objects.filter(cond, study__status=Study.Status.PROCESSING)
    for job_id, run_id in candidates.values_list("id", "run_id"):
        study_id = _requeue_one(job_id=job_id, run_id=run_id)
        if study_id is not None:
            requeued.append(study_id)
    if requeued:
        logger.warning("re-enqueued studies whose worker was lost: %s", requeued)
    queued = uploaded_studies_enqueue()
    admitted = jobs_admit()
    if admitted:
        logger.warning("sent waiting runs the fair queue admits: %s", admitted)
    cams_missing_resend(older_than_s=settings.ILDREVIEW_CAM_RESEND_AFTER_S)
    return requeued + queued + admitted


def uploaded_studies_enqueue() -> list[int]:
    """Queue uploaded studies left unqueued past the grace period; returns their ids."""
    grace = timedelta(seconds=settings.ILDREVIEW_UPLOADED_GRACE_S)
    candidates = Study.objects.filter(
        status=Study.Status.UPLOADED,
        source=Study.Source.UPLOAD,
        updated_at__lt=timezone.now() - grace,
    ).order_by("pk")
    queued = []
    for study_id in candidates.values_list("pk", flat=True):
        if _uploaded_enqueue_one(study_id=study_id):
            queued.append(study_id)
    if queued:
        logger.warning("queued uploaded studies that were never queued: %s", queued)
    return queued


def _uploaded_enqueue_one(*, study_id: int) -> bool:
    with transaction.atomic():
        study = (
            Study.objects.select_for_update()
            .filter(pk=study_id, status=Study.Status.UPLOADED)
            .first()
        )
        if study is None:  # queued by another sweep or a user meanwhile
            return False
        study_enqueue_processing(study=study)
    return True


def _requeue_one(*, job_id: int, run_id: str) -> int | None:
    with transaction.atomic():
        job = StudyJob.objects.select_for_update().filter(pk=job_id, run_id=run_id).first()
        if job is None:  # another worker re-enqueued it, or it moved on meanwhile
            return None
        job = job_new_run(study_id=job.study_id, model_version=job.model_version)
        Study.objects.filter(pk=job.study_id).update(
            progress_stage="queued", progress_percent=0, updated_at=timezone.now()
        )
        study_id, new_run = job.study_id, job.run_id
        transaction.on_commit(lambda: run_publish(study_id=study_id, run_id=new_run))
    return study_id


def recovery_thread_start(*, hostname: str) -> threading.Thread:
    """Sweep for lost jobs now and then every ILDREVIEW_RECOVERY_INTERVAL_S in a daemon thread."""
    interval = settings.ILDREVIEW_RECOVERY_INTERVAL_S
    started = PROCESS_STARTED

    def loop():
        first = True
        while True:
            try:
                stale_jobs_requeue(hostname=hostname if first else None, started=started)
            except Exception:  # a DB hiccup must not kill the sweeper
                logger.exception("recovery sweep failed")
            finally:
                close_old_connections()
            first = False
            threading.Event().wait(interval)

    thread = threading.Thread(target=loop, name="ildreview-recovery", daemon=True)
    thread.start()
    return thread
