"""The fair queue (retrieval/pipeline/enqueue.py) and the queue a waiting study sees
(retrieval/pipeline/progress.py: position, estimate; the progress JSON and the API).

Runs are not executed here: `run_publish` is replaced by a recorder, so the tests read the
order in which runs reach the broker, and a "worker" ends runs in that order (first sent, first
taken, as the broker does) with `study_finish`, whose on-commit hook sends the next runs.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from cases.models import Study
from retrieval.models import StudyJob
from retrieval.pipeline import enqueue, progress, recovery
from retrieval.pipeline.synthetic import synthetic_study_create
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch) -> list[int]:
    """Study ids in the order their runs were sent to the broker."""
    sent: list[int] = []

    def record(*, study_id: int, run_id: str) -> None:
        sent.append(study_id)

    monkeypatch.setattr(enqueue, "run_publish", record)
    monkeypatch.setattr(recovery, "run_publish", record)  # a lost run is sent again from there
    return sent


@pytest.fixture
def enqueue_study(django_capture_on_commit_callbacks):
    """Create and queue a study of `user` (its publish, if admitted, runs on commit)."""

    def make(user) -> Study:
        study = synthetic_study_create(uploaded_by=user, slices=1, size=16)
        with django_capture_on_commit_callbacks(execute=True):
            enqueue.study_enqueue_processing(study=study)
        return study

    return make


def _finish(study: Study, capture) -> None:
    """A worker ends the study's run (its on-commit hook sends the next runs)."""
    job = StudyJob.objects.get(study=study)
    job.state = StudyJob.State.RUNNING
    job.started_at = timezone.now()
    job.save()
    with capture(execute=True):
        assert enqueue.study_finish(study_id=study.pk, run_id=job.run_id)


def _state(study: Study) -> str:
    return StudyJob.objects.get(study=study).state


def _history(*totals: float) -> None:
    """Finished runs whose stage seconds add up to `totals`."""
    now = timezone.now()
    user = UserFactory(username="history", role="Clinician")
    for n, total in enumerate(totals):
        study = synthetic_study_create(uploaded_by=user, slices=1, size=16, seed=100 + n)
        Study.objects.filter(pk=study.pk).update(status=Study.Status.READY_FOR_REVIEW)
        StudyJob.objects.create(
            study=study,
            run_id=f"old{n}",
            state=StudyJob.State.DONE,
            started_at=now - timedelta(seconds=1000),
            finished_at=now - timedelta(seconds=n),
            stage_seconds={"prepare": total / 2, "embed": total / 2},
        )


# ---------------------------------------------------------------- fairness


def test_a_second_users_single_study_is_sent_and_run_before_the_first_users_later_batch(
    clinician, other_clinician, published, enqueue_study, django_capture_on_commit_callbacks
):
    batch = [enqueue_study(clinician) for _ in range(10)]
    single = enqueue_study(other_clinician)

    # One run per user in the broker; the other nine wait in the database without a message.
    assert published == [batch[0].pk, single.pk]
    assert [_state(s) for s in batch] == ["queued"] + ["waiting"] * 9
    assert _state(single) == "queued"

    # One worker takes runs in broker order; each end sends the next admissible run.
    ran = []
    while len(ran) < len(published):
        study = Study.objects.get(pk=published[len(ran)])
        _finish(study, django_capture_on_commit_callbacks)
        ran.append(study.pk)
    assert ran == [batch[0].pk, single.pk] + [s.pk for s in batch[1:]]
    assert all(_state(s) == "done" for s in [*batch, single])


def test_without_the_per_user_cap_the_single_study_would_wait_behind_the_batch(
    clinician, other_clinician, published, enqueue_study, settings
):
    settings.ILDREVIEW_QUEUE_PER_USER = 100
    batch = [enqueue_study(clinician) for _ in range(10)]
    single = enqueue_study(other_clinician)
    assert published == [s.pk for s in batch] + [single.pk]


def test_users_are_served_round_robin_with_the_fewest_unfinished_runs_first(
    clinician, other_clinician, expert, published, enqueue_study, django_capture_on_commit_callbacks
):
    a = [enqueue_study(clinician) for _ in range(3)]
    b = [enqueue_study(other_clinician) for _ in range(3)]
    c = [enqueue_study(expert) for _ in range(1)]
    assert published == [a[0].pk, b[0].pk, c[0].pk]
    for n in range(7):
        _finish(Study.objects.get(pk=published[n]), django_capture_on_commit_callbacks)
    assert published == [a[0].pk, b[0].pk, c[0].pk, a[1].pk, b[1].pk, a[2].pk, b[2].pk]


def test_a_finished_or_failed_run_sends_the_users_next_waiting_run(
    clinician, published, enqueue_study, django_capture_on_commit_callbacks
):
    first, second, third = (enqueue_study(clinician) for _ in range(3))
    assert published == [first.pk] and _state(second) == "waiting"

    _finish(first, django_capture_on_commit_callbacks)
    assert published == [first.pk, second.pk]
    job = StudyJob.objects.get(study=second)
    assert job.state == "queued" and job.published_at and job.heartbeat_at

    with django_capture_on_commit_callbacks(execute=True):
        assert enqueue.study_mark_failed(study_id=second.pk, run_id=job.run_id, message="bad")
    assert published == [first.pk, second.pk, third.pk]


def test_the_recovery_sweep_sends_waiting_runs_a_lost_end_hook_left_behind(
    clinician, published, enqueue_study, django_capture_on_commit_callbacks
):
    first, second = enqueue_study(clinician), enqueue_study(clinician)
    # The worker committed the end of the first run and died before its on-commit hook ran.
    Study.objects.filter(pk=first.pk).update(status=Study.Status.READY_FOR_REVIEW)
    StudyJob.objects.filter(study=first).update(state=StudyJob.State.DONE)
    assert _state(second) == "waiting"

    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.stale_jobs_requeue() == [second.pk]
        assert recovery.stale_jobs_requeue() == []
    assert published == [first.pk, second.pk] and _state(second) == "queued"


def test_a_run_lost_with_its_worker_is_resent_and_keeps_its_users_slot(
    clinician, published, enqueue_study, settings, django_capture_on_commit_callbacks
):
    settings.ILDREVIEW_STALE_AFTER_S = 60
    first, second = enqueue_study(clinician), enqueue_study(clinician)
    StudyJob.objects.filter(study=first).update(
        state=StudyJob.State.RUNNING,
        started_at=timezone.now() - timedelta(seconds=600),
        heartbeat_at=timezone.now() - timedelta(seconds=600),
    )

    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.stale_jobs_requeue() == [first.pk]
    # The lost run is sent again; the user's next run still waits for it.
    assert published == [first.pk, first.pk] and _state(second) == "waiting"
    _finish(first, django_capture_on_commit_callbacks)
    assert published == [first.pk, first.pk, second.pk]


# ---------------------------------------------------------------- position and estimate


def test_position_follows_the_order_the_workers_will_take_the_runs(
    clinician, other_clinician, expert, published, enqueue_study
):
    a = [enqueue_study(clinician) for _ in range(3)]
    b = enqueue_study(other_clinician)
    c = enqueue_study(expert)
    # In the broker: a0, b, c (sent in that order); then a1, a2 as a's runs end.
    assert progress.queue_order() == [a[0].pk, b.pk, c.pk, a[1].pk, a[2].pk]
    positions = [progress.study_queue_get(study_id=s.pk).position for s in (a[0], b, c, *a[1:])]
    assert positions == [1, 2, 3, 4, 5]
    assert {progress.study_queue_get(study_id=s.pk).total for s in (*a, b, c)} == {5}


def test_the_estimate_is_the_median_run_time_times_the_work_ahead_over_the_workers(
    clinician, other_clinician, published, enqueue_study, settings
):
    _history(10, 20, 30)  # median 20 s
    a = [enqueue_study(clinician) for _ in range(3)]
    b = enqueue_study(other_clinician)
    last = progress.study_queue_get(study_id=a[2].pk)
    assert (last.position, last.total, last.estimate_s) == (4, 4, 60)  # 3 ahead x 20 s
    assert last.text == "queued — position 4 of 4, about 60 s"

    # a0 starts: it leaves the queue and counts as half a run still to do.
    StudyJob.objects.filter(study=a[0]).update(
        state=StudyJob.State.RUNNING, started_at=timezone.now()
    )
    last = progress.study_queue_get(study_id=a[2].pk)
    assert (last.position, last.total, last.estimate_s) == (3, 3, 50)  # (2 + 0.5) x 20 s
    assert progress.study_queue_get(study_id=a[0].pk) is None  # running: no queue
    assert progress.study_queue_get(study_id=b.pk).estimate_s == 10  # (0 + 0.5) x 20 s

    settings.ILDREVIEW_QUEUE_WORKERS = 2
    assert progress.study_queue_get(study_id=a[2].pk).estimate_s == 25


def test_without_finished_runs_the_estimate_is_unknown(clinician, published, enqueue_study):
    enqueue_study(clinician)
    waiting = enqueue_study(clinician)
    state = progress.study_queue_get(study_id=waiting.pk)
    assert state.estimate_s is None and state.text == "queued — position 2 of 2, wait unknown"


def test_a_run_between_stages_says_so(clinician, published, enqueue_study):
    study = enqueue_study(clinician)
    StudyJob.objects.filter(study=study).update(stage="embed", started_at=timezone.now())
    state = progress.study_queue_get(study_id=study.pk)
    assert state.state == "between_stages" and state.position is None
    assert state.text == "embed done — waiting for a worker for the next stage"


def test_stage_times_are_recorded_on_the_job(clinician, published, enqueue_study):
    study = enqueue_study(clinician)
    job = StudyJob.objects.get(study=study)
    progress.stage_start(job=job, stage="prepare")
    StudyJob.objects.filter(pk=job.pk).update(
        stage_started_at=timezone.now() - timedelta(seconds=3)
    )
    progress.stage_done(study_id=study.pk, run_id=job.run_id)
    job.refresh_from_db()
    assert job.state == "queued" and 2.9 < job.stage_seconds["prepare"] < 10
    progress.stage_start(job=job, stage="explain")
    assert enqueue.study_finish(study_id=study.pk, run_id=job.run_id)
    job.refresh_from_db()
    assert set(job.stage_seconds) == {"prepare", "explain"}
    assert progress.run_seconds_median() == pytest.approx(sum(job.stage_seconds.values()))


# ---------------------------------------------------------------- what the user sees


def test_the_progress_json_and_the_api_show_the_queue_never_a_stale_stage_percent(
    client, clinician, published, enqueue_study
):
    _history(30)
    first = enqueue_study(clinician)
    waiting = enqueue_study(clinician)
    # A previous run left its bar at "embed 74 %".
    Study.objects.filter(pk=waiting.pk).update(progress_stage="embed", progress_percent=74)
    client.force_login(clinician)

    data = client.get(reverse("cases:study_progress", args=[waiting.pk])).json()
    assert data["stage"] == "queued" and data["percent"] == 0
    assert data["queue"] == {
        "state": "queued",
        "position": 2,
        "total": 2,
        "estimate_s": 30,
        "text": "queued — position 2 of 2, about 30 s",
    }
    page = client.get(reverse("cases:study_review", args=[waiting.pk])).content.decode()
    assert "Waiting in queue (position 2 of 2, about 30 s)" in page and "74%" not in page

    api = client.get(f"/api/studies/{waiting.pk}/results/")
    assert api.status_code == 409
    assert api.json()["queue"]["position"] == 2 and api.json()["progress_percent"] == 0

    # A running study has no queue entry: its stage and percent are live.
    StudyJob.objects.filter(study=first).update(
        state=StudyJob.State.RUNNING, started_at=timezone.now(), stage="embed"
    )
    Study.objects.filter(pk=first.pk).update(progress_stage="embed", progress_percent=60)
    data = client.get(reverse("cases:study_progress", args=[first.pk])).json()
    assert data["queue"] is None and (data["stage"], data["percent"]) == ("embed", 60)


def test_the_jobs_admin_shows_queue_position_and_stage_times(
    client, admin_user, clinician, published, enqueue_study
):
    _history(12)
    enqueue_study(clinician)
    enqueue_study(clinician)
    client.force_login(admin_user)
    page = client.get(reverse("admin:retrieval_studyjob_changelist")).content.decode()
    assert "2 of 2" in page and "prepare 6.0, embed 6.0 (total 12.0)" in page
