"""Celery tasks of the retrieval pipeline: thin wrappers (primary keys in, one service call).

The pipeline's services never import this module: they send these tasks by name
(`retrieval.pipeline.enqueue.task_signature`), so the import graph has no cycle. Queues are
chosen by the routes in `ildreview/celery.py` (the one place they are named), which also apply
to messages sent by name. Retries with exponential backoff only on transient
errors (database connection, broker connection); bad data fails the study at once with a clear
message. `acks_late` + `reject_on_worker_lost` (settings) let a killed worker's message come
back; `retrieval.pipeline.recovery` covers brokers that do not redeliver.
"""

from __future__ import annotations

import logging

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.db import InterfaceError, OperationalError
from kombu.exceptions import OperationalError as BrokerOperationalError

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    BrokerOperationalError,
    ConnectionError,
)
try:  # redis-py's errors do not derive from the builtin ConnectionError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    TRANSIENT_ERRORS += (RedisConnectionError, RedisTimeoutError)
except ImportError:  # pragma: no cover
    pass

STAGE_SOFT_LIMIT = settings.ILDREVIEW_STAGE_SOFT_TIME_LIMIT_S
LONG_SOFT_LIMIT = settings.ILDREVIEW_LONG_SOFT_TIME_LIMIT_S
RETRY = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 5,
    "retry_backoff_max": 300,
    "retry_jitter": True,
    "max_retries": 5,
}


def _failure_message(stage: str, exc: BaseException, soft_limit) -> str:
    from retrieval.pipeline.runtime import PipelineDataError

    if isinstance(exc, PipelineDataError):
        return str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return f"stage {stage} took longer than {soft_limit} s and was stopped"
    return f"stage {stage} failed: {type(exc).__name__}: {exc}"


class StudyStageTask(Task):
    """A study stage. Non-transient errors mark the study `failed` with the reason (for the
    Retry button) inside the task body; `on_failure` covers what ends the task from outside
    the body (transient-error retries exhausted, hard time limit)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        from retrieval.pipeline.enqueue import study_mark_failed

        study_id = kwargs.get("study_id", args[0] if args else None)
        run_id = kwargs.get("run_id", args[1] if len(args) > 1 else None)
        if study_id is not None:
            stage = self.name.rsplit("_", 1)[-1]
            message = _failure_message(stage, exc, self.soft_time_limit)
            study_mark_failed(study_id=study_id, run_id=run_id, message=message)


def _stage_task(stage: str):
    def run(self, study_id: int, run_id: str) -> bool:
        from retrieval.pipeline.enqueue import study_mark_failed
        from retrieval.pipeline.stages import STAGE_SERVICES

        try:
            return STAGE_SERVICES[stage](study_id=study_id, run_id=run_id)
        except TRANSIENT_ERRORS:
            raise  # autoretry with backoff
        except Exception as exc:
            message = _failure_message(stage, exc, self.soft_time_limit)
            study_mark_failed(study_id=study_id, run_id=run_id, message=message)
            raise

    run.__name__ = f"study_{stage}"
    run.__doc__ = f"Stage `{stage}` of a study (retrieval.pipeline.stages.study_{stage})."
    return shared_task(
        bind=True,
        base=StudyStageTask,
        name=f"retrieval.tasks.study_{stage}",
        soft_time_limit=STAGE_SOFT_LIMIT,
        time_limit=STAGE_SOFT_LIMIT + 60,
        **RETRY,
    )(run)


study_prepare = _stage_task("prepare")
study_embed = _stage_task("embed")
study_retrieve = _stage_task("retrieve")

# CAM overlays and live queries run after the study is ready, for the review page. A failure
# leaves the page's "computing" placeholder (it stops polling after a while); the study stays
# ready, so these tasks never mark it failed.
CAM_SOFT_LIMIT = 120


@shared_task(
    name="retrieval.tasks.similar_case_explain",
    soft_time_limit=CAM_SOFT_LIMIT,
    time_limit=CAM_SOFT_LIMIT + 30,
    **RETRY,
)
def similar_case_explain(similar_case_id: int) -> bool:
    """CAM overlays of one retrieved case (retrieval.pipeline.stages.similar_case_explain)."""
    from retrieval.pipeline.stages import similar_case_explain as explain

    return explain(similar_case_id=similar_case_id)


@shared_task(
    name="retrieval.tasks.review_cam_compute",
    soft_time_limit=CAM_SOFT_LIMIT,
    time_limit=CAM_SOFT_LIMIT + 30,
    **RETRY,
)
def review_cam_compute(
    study_id: int, model_version_id: int, query_slice_id: int, reference_slice_id: int
) -> bool:
    """CAM overlays of a slice pair of a live query (retrieval.services.review_cam_compute)."""
    from retrieval.services import review_cam_compute as compute

    return compute(
        study_id=study_id,
        model_version_id=model_version_id,
        query_slice_id=query_slice_id,
        reference_slice_id=reference_slice_id,
    )


@shared_task(
    name="retrieval.tasks.study_live_query",
    soft_time_limit=CAM_SOFT_LIMIT,
    time_limit=CAM_SOFT_LIMIT + 30,
    **RETRY,
)
def study_live_query(
    study_id: int, model_version_id: int, k: int, diagnosis_code: str, mode: str = "similar"
) -> str:
    """The review page's answer for another k, a diagnosis filter or the class-first search
    (retrieval.services.study_live_query_run)."""
    from retrieval.services import study_live_query_run

    return study_live_query_run(
        study_id=study_id,
        model_version_id=model_version_id,
        k=k,
        diagnosis_code=diagnosis_code,
        mode=mode,
    )


@shared_task(
    name="retrieval.tasks.reference_case_sync",
    soft_time_limit=STAGE_SOFT_LIMIT,
    time_limit=STAGE_SOFT_LIMIT + 60,
    **RETRY,
)
def reference_case_sync(reference_case_id: int) -> int:
    """Embed an approved case into the active version's index, or remove a retired/rejected
    one (called on commit of approve/retire)."""
    from retrieval.pipeline.reference import reference_case_sync as sync

    return sync(reference_case_id=reference_case_id)


@shared_task(
    name="retrieval.tasks.model_version_activate_and_reembed",
    soft_time_limit=LONG_SOFT_LIMIT,
    time_limit=LONG_SOFT_LIMIT + 120,
    **RETRY,
)
def model_version_activate_and_reembed(
    model_version_id: int, override_reason: str = "", actor_id: int | None = None
) -> int:
    """Re-embed the approved library with a version, then make it the active one (through the
    held-out gate; `override_reason` given by the admin who activates a worse version)."""
    from retrieval.pipeline.reference import model_version_activate_and_reembed as run

    return run(
        model_version_id=model_version_id, override_reason=override_reason, actor_id=actor_id
    )


@shared_task(
    name="retrieval.tasks.model_version_bootstrap",
    soft_time_limit=LONG_SOFT_LIMIT,
    time_limit=LONG_SOFT_LIMIT + 120,
    **RETRY,
)
def model_version_bootstrap(force: bool = False) -> int | None:
    """Train, register, activate and embed a first model from the approved library."""
    from retrieval.pipeline.reference import model_version_bootstrap as run

    version = run(force=force)
    return version.pk if version else None


@shared_task(
    name="retrieval.tasks.model_version_train",
    soft_time_limit=LONG_SOFT_LIMIT,
    time_limit=LONG_SOFT_LIMIT + 120,
    **RETRY,
)
def model_version_train(training_run_id: int) -> int | None:
    """Train a new (inactive) model version on the approved library for a TrainingRun."""
    from retrieval.pipeline.training import training_run_execute

    version = training_run_execute(training_run_id=training_run_id)
    return version.pk if version else None


@shared_task(name="retrieval.tasks.stale_jobs_requeue", **RETRY)
def stale_jobs_requeue() -> list[int]:
    """Re-enqueue studies whose worker died (also run by every worker on start)."""
    from retrieval.pipeline.recovery import stale_jobs_requeue as run

    return run()


@worker_ready.connect
def _recover_on_worker_ready(sender=None, **kwargs):
    """Re-enqueue what a previous incarnation of this worker was running when it died, then
    keep sweeping for stale jobs of any worker."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return
    from retrieval.pipeline.recovery import recovery_thread_start

    hostname = getattr(sender, "hostname", None) or ""
    recovery_thread_start(hostname=hostname)


@worker_process_init.connect
def _model_warm_up_on_process_start(**kwargs):
    """Load the active model in the background as soon as a pool process starts (see
    `runtime.model_warm_up`); the process takes tasks meanwhile."""
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.ILDREVIEW_WORKER_WARM_UP:
        return
    import threading

    from django.db import connection

    from retrieval.pipeline.runtime import model_warm_up

    def run():
        try:
            model_warm_up()
        finally:
            connection.close()  # the thread's own database connection

    threading.Thread(target=run, name="model-warm-up", daemon=True).start()
