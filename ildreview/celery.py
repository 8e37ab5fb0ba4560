"""Celery application shared by the web process and the workers.

Two queues: `gpu` (network work: deep features, fusion, CAM, embedding, training; uses CUDA
when the worker has it) and `cpu` (lung masks + radiomics, indexing, retrieval, recovery). One
worker can serve both (`celery -A ildreview worker -Q gpu,cpu`); a GPU machine runs `-Q gpu`.
Serialisation, acks_late, prefetch and broker options come from settings (CELERY_*); queue
choice is on each task (`retrieval/tasks.py`) and repeated here as routes.
"""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")

app = Celery("ildreview")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue("gpu"), Queue("cpu"))
app.conf.task_default_queue = "cpu"
app.conf.task_routes = {
    "retrieval.tasks.study_prepare": {"queue": "cpu"},
    "retrieval.tasks.study_embed": {"queue": "gpu"},
    "retrieval.tasks.study_retrieve": {"queue": "cpu"},
    "retrieval.tasks.study_explain": {"queue": "gpu"},
    "retrieval.tasks.reference_case_sync": {"queue": "gpu"},
    "retrieval.tasks.model_version_activate_and_reembed": {"queue": "gpu"},
    "retrieval.tasks.model_version_bootstrap": {"queue": "gpu"},
    "retrieval.tasks.model_version_train": {"queue": "gpu"},
    "retrieval.tasks.stale_jobs_requeue": {"queue": "cpu"},
}
app.autodiscover_tasks()
