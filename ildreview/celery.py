"""Celery application shared by the web process and the workers.

Two queues: `gpu` (network work: deep features, fusion, CAM, embedding, training; uses CUDA
when the worker has it) and `cpu` (lung masks + radiomics, indexing, retrieval, recovery). One
worker can serve both (`celery -A ildreview worker -Q gpu,cpu`); a GPU machine runs `-Q gpu`.
Serialisation, acks_late, prefetch and broker options come from settings (CELERY_*). The queue
of each task is chosen here and only here, by `task_routes`: routes apply to every message,
including those the pipeline sends by task name (`retrieval.pipeline.enqueue`), which never see
options set on a task.
"""

import os

from celery import Celery, signals
from kombu import Queue

from ildreview.broker import filesystem_folders_create

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")

app = Celery("ildreview")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("gpu"), Queue("cpu"))
app.conf.task_default_queue = "cpu"
app.conf.task_routes = {
    "retrieval.tasks.study_prepare": {"queue": "cpu"},
    "retrieval.tasks.study_embed": {"queue": "gpu"},
    "retrieval.tasks.study_retrieve": {"queue": "cpu"},
    "retrieval.tasks.similar_case_explain": {"queue": "gpu"},
    "retrieval.tasks.review_cam_compute": {"queue": "gpu"},
    "retrieval.tasks.study_live_query": {"queue": "cpu"},
    "retrieval.tasks.reference_case_sync": {"queue": "gpu"},
    "retrieval.tasks.model_version_activate_and_reembed": {"queue": "gpu"},
    "retrieval.tasks.model_version_bootstrap": {"queue": "gpu"},
    "retrieval.tasks.model_version_train": {"queue": "gpu"},
    "retrieval.tasks.stale_jobs_requeue": {"queue": "cpu"},
}
app.autodiscover_tasks()


def _broker_folders_create(**kwargs) -> None:
    """Make the embedded broker's folders before a worker consumes or anyone publishes: kombu's
    filesystem transport fails on a missing folder, and settings import creates none."""
    if str(app.conf.broker_url or "").startswith("filesystem://"):
        filesystem_folders_create(transport_options=app.conf.broker_transport_options or {})


signals.worker_init.connect(_broker_folders_create, weak=False)
signals.before_task_publish.connect(_broker_folders_create, weak=False)
