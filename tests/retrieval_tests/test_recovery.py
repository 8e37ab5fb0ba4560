"""The recovery sweep (retrieval/pipeline/recovery.py) for studies that were stored but never
reached the broker: left `uploaded`, or queued while the broker refused the message."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery import Celery
from django.utils import timezone

from cases.models import Study
from ildreview.celery import app
from retrieval.models import StudyJob
from retrieval.pipeline import enqueue, recovery, stages
from retrieval.pipeline.synthetic import synthetic_study_create

pytestmark = pytest.mark.django_db


def _study(clinician, **kwargs) -> Study:
    return synthetic_study_create(uploaded_by=clinician, slices=1, size=16, **kwargs)


def _age(study: Study, seconds: int) -> None:
    # update() leaves auto_now alone, so the study looks untouched for `seconds`.
    Study.objects.filter(pk=study.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def _publishes(callbacks, by: str = "study_enqueue_processing") -> int:
    """How many of the captured on-commit callbacks are the publish of `by`."""
    return sum(cb.__qualname__.startswith(f"{by}.") for cb in callbacks)


@pytest.fixture
def refusing_broker():
    """A Celery app whose broker is a port where nothing listens, made current for the test
    (the shared tasks resolve through the current app), eager mode off."""
    broken = Celery("refusing", broker="redis://127.0.0.1:9/15", set_as_current=False)
    broken.conf.task_publish_retry = False
    broken.set_current()
    try:
        yield broken
    finally:
        app.set_current()
        broken.close()


def test_an_upload_left_uploaded_past_the_grace_period_is_queued_once(
    clinician, settings, django_capture_on_commit_callbacks
):
    settings.ILDREVIEW_UPLOADED_GRACE_S = 120
    study = _study(clinician)
    _age(study, 300)

    with django_capture_on_commit_callbacks() as callbacks:
        assert recovery.stale_jobs_requeue() == [study.pk]
        assert recovery.stale_jobs_requeue() == []  # queued now: the next sweep leaves it

    study.refresh_from_db()
    job = StudyJob.objects.get(study=study)
    assert study.status == Study.Status.PROCESSING and study.progress_stage == "queued"
    assert job.state == StudyJob.State.QUEUED and job.attempts == 1
    assert _publishes(callbacks) == 1


def test_recent_uploads_and_studies_of_other_sources_are_left_alone(
    clinician, settings, django_capture_on_commit_callbacks
):
    settings.ILDREVIEW_UPLOADED_GRACE_S = 120
    recent = _study(clinician)
    _age(recent, 60)
    reference = _study(clinician, source=Study.Source.REFERENCE_IMPORT, seed=1)
    _age(reference, 3600)

    with django_capture_on_commit_callbacks() as callbacks:
        assert recovery.stale_jobs_requeue() == []

    assert not StudyJob.objects.exists() and _publishes(callbacks) == 0
    assert set(Study.objects.values_list("status", flat=True)) == {Study.Status.UPLOADED}


def test_an_uploaded_study_whose_queued_message_was_lost_gets_a_new_run(
    clinician, settings, django_capture_on_commit_callbacks
):
    settings.ILDREVIEW_UPLOADED_GRACE_S = 120
    study = _study(clinician)
    StudyJob.objects.create(
        study=study, run_id="lost", state=StudyJob.State.QUEUED, attempts=1, heartbeat_at=None
    )
    _age(study, 300)

    with django_capture_on_commit_callbacks() as callbacks:
        assert recovery.stale_jobs_requeue() == [study.pk]

    job = StudyJob.objects.get(study=study)
    assert job.run_id != "lost" and job.attempts == 2 and _publishes(callbacks) == 1
    # The lost run's message, if it ever arrives, does nothing.
    assert stages.study_prepare(study_id=study.pk, run_id="lost") is False


def test_a_run_the_broker_refused_is_flagged_and_sent_again_by_the_next_sweep(
    clinician, refusing_broker, django_capture_on_commit_callbacks
):
    study = _study(clinician)
    with django_capture_on_commit_callbacks() as callbacks:
        enqueue.study_enqueue_processing(study=study)
    refused_run = StudyJob.objects.get(study=study).run_id

    # The commit succeeded; the broker refuses the message: no error reaches the caller.
    for callback in callbacks:
        callback()
    job = StudyJob.objects.get(study=study)
    assert job.state == StudyJob.State.QUEUED and job.heartbeat_at is None

    app.set_current()
    with django_capture_on_commit_callbacks() as callbacks:
        assert recovery.stale_jobs_requeue() == [study.pk]
        assert recovery.stale_jobs_requeue() == []

    job.refresh_from_db()
    assert job.run_id != refused_run and job.heartbeat_at is not None and job.attempts == 2
    assert _publishes(callbacks, by="_requeue_one") == 1
