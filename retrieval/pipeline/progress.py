"""Progress of a running stage: the study's progress bar and the job's heartbeat.

Progress writes use `QuerySet.update` on single rows so that a progress tick never overwrites
other fields another process changed meanwhile; they bump `Study.updated_at` explicitly
(update() skips auto_now) because the worklist shows it as "last activity".
"""

from __future__ import annotations

import socket
import time

from django.utils import timezone

from cases.models import Study
from retrieval.models import StudyJob

# Percent ranges of the stages on the study's progress bar.
STAGE_RANGES: dict[str, tuple[int, int]] = {
    "queued": (0, 0),
    "prepare": (0, 40),
    "embed": (40, 75),
    "retrieve": (75, 80),
    "explain": (80, 100),
}
HEARTBEAT_EVERY_S = 2.0


def worker_name() -> str:
    """Name of this worker process in job records (Celery hostname when inside a worker)."""
    from celery import current_task

    request = getattr(current_task, "request", None)
    hostname = getattr(request, "hostname", None)
    return hostname or f"local@{socket.gethostname()}"


class StageProgress:
    """Progress reporter of one running stage: maps done/total onto the stage's percent range
    and refreshes the job heartbeat, at most every HEARTBEAT_EVERY_S seconds."""

    def __init__(self, *, study_id: int, stage: str):
        self.study_id = study_id
        self.stage = stage
        self.low, self.high = STAGE_RANGES[stage]
        self._last = 0.0

    def __call__(self, done: int, total: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < HEARTBEAT_EVERY_S:
            return
        self._last = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        percent = int(round(self.low + (self.high - self.low) * frac))
        ts = timezone.now()
        Study.objects.filter(pk=self.study_id).update(
            progress_stage=self.stage, progress_percent=percent, updated_at=ts
        )
        StudyJob.objects.filter(study_id=self.study_id).update(heartbeat_at=ts)


def stage_start(*, job: StudyJob, stage: str) -> StageProgress:
    """Mark `job` running `stage` on this worker; the study shows the stage at its start."""
    ts = timezone.now()
    StudyJob.objects.filter(pk=job.pk).update(
        stage=stage,
        state=StudyJob.State.RUNNING,
        worker=worker_name(),
        heartbeat_at=ts,
        started_at=job.started_at or ts,
    )
    progress = StageProgress(study_id=job.study_id, stage=stage)
    progress(0, 1, force=True)
    return progress


def stage_done(*, study_id: int, run_id: str) -> None:
    """A stage finished: the job waits (queued) for its next stage's message. Only `running`
    jobs are considered lost when their heartbeat goes stale, so a study waiting behind other
    studies' tasks is not re-enqueued."""
    StudyJob.objects.filter(study_id=study_id, run_id=run_id, state=StudyJob.State.RUNNING).update(
        state=StudyJob.State.QUEUED, heartbeat_at=timezone.now()
    )
