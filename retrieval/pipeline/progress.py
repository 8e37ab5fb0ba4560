"""Progress of a study: the running stage's progress bar and the job's heartbeat, and, while it
waits, its place in the queue with an estimate (`study_queue_get`).

Progress writes use `QuerySet.update` on single rows so that a progress tick never overwrites
other fields another process changed meanwhile; they bump `Study.updated_at` explicitly
(update() skips auto_now) because the worklist shows it as "last activity".
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone

from cases.models import Study
from retrieval.models import StudyJob
from retrieval.pipeline.enqueue import UNFINISHED, queue_per_user

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
        stage_started_at=ts,
    )
    progress = StageProgress(study_id=job.study_id, stage=stage)
    progress(0, 1, force=True)
    return progress


def stage_done(*, study_id: int, run_id: str) -> None:
    """A stage finished: the job waits (queued) for its next stage's message. Only `running`
    jobs are considered lost when their heartbeat goes stale, so a study waiting behind other
    studies' tasks is not re-enqueued. The stage's time is added to the job's `stage_seconds`."""
    now = timezone.now()
    job = (
        StudyJob.objects.filter(study_id=study_id, run_id=run_id, state=StudyJob.State.RUNNING)
        .values("stage", "stage_started_at", "stage_seconds")
        .first()
    )
    if job is None:
        return
    seconds = dict(job["stage_seconds"] or {})
    if job["stage"] and job["stage_started_at"]:
        seconds[job["stage"]] = round((now - job["stage_started_at"]).total_seconds(), 3)
    StudyJob.objects.filter(study_id=study_id, run_id=run_id, state=StudyJob.State.RUNNING).update(
        state=StudyJob.State.QUEUED, heartbeat_at=now, stage_seconds=seconds
    )


# ---------------------------------------------------------------------------------------------
# The queue, as seen by a waiting study
# ---------------------------------------------------------------------------------------------

RECENT_RUNS = 20  # finished runs whose median duration the estimate uses


@dataclass(frozen=True)
class QueueState:
    """Where a study being processed stands when it is not running a stage.

    `state`: "queued" (its run waits to start: `position` of `total` in the order the workers
    will take them) or "between_stages" (it started; its next stage's message waits behind
    other studies' stages). `estimate_s`: seconds until it starts, None when no run finished
    yet (unknown)."""

    state: str
    position: int | None = None
    total: int | None = None
    estimate_s: int | None = None
    stage: str = ""

    @property
    def text(self) -> str:
        if self.state == "between_stages":
            return f"{self.stage} done — waiting for a worker for the next stage"
        wait = "wait unknown" if self.estimate_s is None else f"about {self.estimate_s} s"
        return f"queued — position {self.position} of {self.total}, {wait}"

    def as_dict(self) -> dict:
        return {
            "state": self.state,
            "position": self.position,
            "total": self.total,
            "estimate_s": self.estimate_s,
            "text": self.text,
        }


def run_seconds_median(*, last: int = RECENT_RUNS) -> float | None:
    """Median processing time of the last `last` finished runs: the sum of their stage times,
    or start to finish for runs without them; None when no run finished yet."""
    runs = StudyJob.objects.filter(
        state=StudyJob.State.DONE, started_at__isnull=False, finished_at__isnull=False
    ).order_by("-finished_at")[:last]
    durations = []
    for job in runs.only("stage_seconds", "started_at", "finished_at"):
        total = sum(float(v) for v in (job.stage_seconds or {}).values())
        durations.append(total or (job.finished_at - job.started_at).total_seconds())
    return statistics.median(durations) if durations else None


def queue_order() -> list[int]:
    """Study ids of the runs waiting to start, in the order the workers will take them: first
    the runs already sent (broker order: first sent, first taken), then the waiting runs in the
    order the fair queue will send them (`enqueue.jobs_admit`): a user's i-th waiting run is
    sent after i + (the user's unfinished runs) - K + 1 of the user's runs end, so runs are
    ranked by that round, then by age."""
    processing = StudyJob.objects.filter(study__status=Study.Status.PROCESSING)
    sent = list(
        processing.filter(state=StudyJob.State.QUEUED, started_at__isnull=True)
        .order_by("published_at", "pk")
        .values_list("study_id", flat=True)
    )
    unfinished: dict[int | None, int] = {}
    for user_id in processing.filter(state__in=UNFINISHED).values_list(
        "study__uploaded_by_id", flat=True
    ):
        unfinished[user_id] = unfinished.get(user_id, 0) + 1
    cap = queue_per_user()
    seen: dict[int | None, int] = {}
    ranked = []
    waiting = (
        processing.filter(state=StudyJob.State.WAITING)
        .order_by("enqueued_at", "pk")
        .values_list("study_id", "study__uploaded_by_id")
    )
    for age, (study_id, user_id) in enumerate(waiting):
        i = seen.get(user_id, 0)
        seen[user_id] = i + 1
        ranked.append(((unfinished.get(user_id, 0) + i) // cap, age, study_id))
    return sent + [study_id for _, _, study_id in sorted(ranked)]


def study_queue_get(*, study_id: int) -> QueueState | None:
    """The queue state of a study being processed that is not running a stage; None when it
    runs a stage, is not processing or has no job."""
    job = (
        StudyJob.objects.filter(study_id=study_id, study__status=Study.Status.PROCESSING)
        .only("state", "stage", "started_at")
        .first()
    )
    if job is None or job.state not in (StudyJob.State.WAITING, StudyJob.State.QUEUED):
        return None
    if job.started_at is not None:
        return QueueState(state="between_stages", stage=job.stage)
    order = queue_order()
    if study_id not in order:
        return None
    ahead = order.index(study_id)
    median = run_seconds_median()
    estimate = None
    if median is not None:
        in_progress = StudyJob.objects.filter(
            study__status=Study.Status.PROCESSING, started_at__isnull=False
        ).exclude(state__in=(StudyJob.State.DONE, StudyJob.State.FAILED))
        running = in_progress.filter(state=StudyJob.State.RUNNING).count()
        workers = max(1, int(settings.ILDREVIEW_QUEUE_WORKERS), running)
        # The runs ahead, and the ones in progress (half done on average), shared by the workers.
        estimate = int(round(median * (ahead + in_progress.count() / 2) / workers))
    return QueueState(state="queued", position=ahead + 1, total=len(order), estimate_s=estimate)
