"""Celery application shared by the web process and the workers."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")

app = Celery("ildreview")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
