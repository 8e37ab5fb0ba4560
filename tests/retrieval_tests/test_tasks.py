"""Celery configuration and tasks of the pipeline (run eagerly in unit tests)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
from django.utils import timezone

from cases.models import ReferenceCase, Study
from ildreview.celery import app
from retrieval import tasks
from retrieval.models import ReferenceEmbedding, StudyJob, StudyResult
from retrieval.pipeline import enqueue, recovery, stages
from retrieval.pipeline.runtime import PipelineDataError
from retrieval.pipeline.synthetic import synthetic_reference_create, synthetic_study_create
from tests.factories import diagnosis
from tests.retrieval_tests.pipeline_fixtures import SIZE


def _queue(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def test_network_stages_go_to_the_gpu_queue_and_the_rest_to_cpu():
    assert _queue("retrieval.tasks.study_prepare") == "cpu"
    assert _queue("retrieval.tasks.study_embed") == "gpu"
    assert _queue("retrieval.tasks.study_retrieve") == "cpu"
    # CAMs are jobs of their own after the study is ready (the explain stage left the chain).
    assert _queue("retrieval.tasks.similar_case_explain") == "gpu"
    assert _queue("retrieval.tasks.review_cam_compute") == "gpu"
    assert _queue("retrieval.tasks.study_live_query") == "cpu"
    assert _queue("retrieval.tasks.reference_case_sync") == "gpu"
    assert _queue("retrieval.tasks.model_version_train") == "gpu"
    assert _queue("retrieval.tasks.stale_jobs_requeue") == "cpu"
    assert {q.name for q in app.conf.task_queues} == {"gpu", "cpu"}
    for name in app.conf.task_routes:
        assert name in app.tasks, f"route for unknown task {name}"


def test_tasks_are_json_late_acked_time_limited_and_retry_only_transient_errors():
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    for task in (tasks.study_prepare, tasks.study_embed, tasks.reference_case_sync):
        assert task.soft_time_limit and task.time_limit > task.soft_time_limit
        assert OperationalError in task.autoretry_for
        assert not any(issubclass(PipelineDataError, e) for e in task.autoretry_for)
        assert not any(issubclass(ValueError, e) for e in task.autoretry_for)


@pytest.mark.django_db
def test_a_stage_task_that_fails_on_bad_data_marks_the_study_failed(
    clinician, active_version, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(uploaded_by=clinician, slices=0, size=SIZE)
    with pytest.raises(PipelineDataError), django_capture_on_commit_callbacks(execute=True):
        enqueue.study_enqueue_processing(study=study)
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "has no slices" in study.status_message
    assert StudyJob.objects.get(study=study).state == StudyJob.State.FAILED


@pytest.mark.django_db
def test_reference_case_sync_task_embeds_an_approved_case_and_removes_a_retired_one(
    active_version, experts
):
    rc = synthetic_reference_create(
        expert=experts[0],
        approver=experts[1],
        diagnosis=diagnosis("Normal"),
        pattern="normal",
        slices=3,
        size=SIZE,
    )
    assert tasks.reference_case_sync.delay(rc.pk).get() == 3
    assert (
        ReferenceEmbedding.objects.filter(reference_case=rc, model_version=active_version).count()
        == 3
    )
    assert tasks.reference_case_sync.delay(rc.pk).get() == 3  # idempotent

    ReferenceCase.objects.filter(pk=rc.pk).update(state=ReferenceCase.State.RETIRED)
    assert tasks.reference_case_sync.delay(rc.pk).get() == 0
    assert not ReferenceEmbedding.objects.filter(reference_case=rc).exists()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_study_whose_worker_died_is_re_enqueued_and_completes(
    library, clinician, active_version, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(uploaded_by=clinician, slices=2, size=SIZE)
    # Enqueued, then a worker took the prepare stage and was SIGKILLed: the job stays running
    # with its last heartbeat (no message is published: the broker lost it).
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    job = StudyJob.objects.create(
        study=study,
        model_version=active_version,
        run_id="dead",
        stage="prepare",
        state=StudyJob.State.RUNNING,
        worker="w1@host",
        heartbeat_at=timezone.now() - timedelta(seconds=5),
    )
    # Another worker's sweep does not touch a fresh heartbeat...
    assert recovery.stale_jobs_requeue() == []
    # ...but the same worker restarting knows its previous incarnation is gone.
    with django_capture_on_commit_callbacks(execute=True):
        requeued = recovery.stale_jobs_requeue(hostname="w1@host", started=timezone.now())
    assert requeued == [study.pk]
    study.refresh_from_db()
    job.refresh_from_db()
    assert study.status == Study.Status.READY_FOR_REVIEW
    assert job.run_id != "dead" and job.attempts == 1
    assert StudyResult.objects.filter(study=study).count() == 1
    # The dead run's message, redelivered late, changes nothing.
    assert stages.study_prepare(study_id=study.pk, run_id="dead") is False


@pytest.mark.django_db
def test_a_stale_heartbeat_of_any_worker_is_recovered_by_the_sweep(
    clinician, active_version, settings
):
    settings.ILDREVIEW_STALE_AFTER_S = 60
    study = synthetic_study_create(uploaded_by=clinician, slices=1, size=SIZE)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    StudyJob.objects.create(
        study=study,
        model_version=active_version,
        run_id="old",
        stage="embed",
        state=StudyJob.State.RUNNING,
        worker="gone@host",
        heartbeat_at=timezone.now() - timedelta(seconds=120),
    )
    assert recovery.stale_jobs_requeue() == [study.pk]
    job = StudyJob.objects.get(study=study)
    assert job.state == StudyJob.State.QUEUED and job.run_id != "old"
    assert recovery.stale_jobs_requeue() == []  # claimed once


@pytest.mark.django_db
def test_activating_a_new_version_re_embeds_the_library_before_switching(
    library, active_version, tiny_artefact
):
    from retrieval.models import ModelVersion

    new = ModelVersion.objects.create(
        name="tiny-2", artefact_dir=str(tiny_artefact), backbone="efficientnet_lite0"
    )
    old_rows = ReferenceEmbedding.objects.filter(model_version=active_version).count()

    tasks.model_version_activate_and_reembed.delay(new.pk).get()

    new.refresh_from_db()
    active_version.refresh_from_db()
    assert new.is_active and not active_version.is_active
    assert ReferenceEmbedding.objects.filter(model_version=new).count() == old_rows
    embedded = set(
        ReferenceEmbedding.objects.filter(model_version=new).values_list(
            "reference_case_id", flat=True
        )
    )
    assert embedded == {rc.pk for rc in library}


@pytest.mark.slow
@pytest.mark.django_db
def test_bootstrap_trains_activates_and_embeds_a_first_model(experts, pipeline_env, settings):
    from retrieval.selectors import model_version_active

    settings.ILDREVIEW_BOOTSTRAP_WEIGHTS = "random"
    settings.ILDREVIEW_BOOTSTRAP_SIZE = SIZE
    settings.ILDREVIEW_BOOTSTRAP_EPOCHS = 1
    settings.ILDREVIEW_MODEL_DIR = pipeline_env.VAR_DIR / "models"
    cases = [
        synthetic_reference_create(
            expert=experts[0],
            approver=experts[1],
            diagnosis=diagnosis(name),
            pattern=pattern,
            slices=2,
            size=SIZE,
            seed=i,
        )
        for i, (name, pattern) in enumerate([("Normal", "normal"), ("IPF-ILD", "reticulation")])
    ]
    assert model_version_active() is None

    version_id = tasks.model_version_bootstrap.delay().get()

    version = model_version_active()
    assert version is not None and version.pk == version_id
    assert {rc.pk for rc in cases} == set(
        ReferenceEmbedding.objects.filter(model_version=version).values_list(
            "reference_case_id", flat=True
        )
    )
    assert tasks.model_version_bootstrap.delay().get() is None  # one is active: nothing to do
