"""Reading-time metrics (issue 9 item 11): a reading runs from opening the review to the
expert's decision, counts the similar cases opened (posted by the page's script to a
login-protected, CSRF-checked endpoint), and the admin shows the distribution."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from cases.models import ReadingSession, Study
from cases.selectors import reading_time_summary
from cases.services.reading import (
    SESSION_GAP,
    reading_session_decide,
    reading_session_open,
    reading_session_result_opened,
)
from tests.factories import ExpertLabelFactory, StudyFactory, diagnosis

pytestmark = pytest.mark.django_db


def _event_url(study) -> str:
    return reverse("cases:review_event", args=[study.pk])


@pytest.fixture
def study():
    return StudyFactory(status=Study.Status.READY_FOR_REVIEW)


def test_the_decision_closes_the_reading_with_its_time_and_label(client, expert, study):
    client.force_login(expert)
    client.get(reverse("cases:study_review", args=[study.pk]))
    session = ReadingSession.objects.get(study=study, expert=expert)
    # The reading started 95 s ago.
    ReadingSession.objects.filter(pk=session.pk).update(
        opened_at=timezone.now() - dt.timedelta(seconds=95)
    )
    normal = diagnosis("Normal")
    client.post(reverse("review:label_set", args=[study.pk]), {"diagnosis": normal.pk})
    session.refresh_from_db()
    assert session.decided_at is not None and session.label.diagnosis == normal
    assert 95 <= session.reading_seconds < 120


def test_result_opened_events_count_each_case_once(client, expert, study):
    client.force_login(expert)
    client.get(reverse("cases:study_review", args=[study.pk]))
    for rank in (2, 5, 2):
        response = client.post(
            _event_url(study),
            {"event": "result_opened", "rank": rank},
            content_type="application/json",
        )
        assert response.status_code == 200
    session = ReadingSession.objects.get(study=study, expert=expert)
    assert (session.results_opened, session.opened_ranks) == (2, [2, 5])
    # Form fields (the beacon the page sends when "Open case" leaves the page) work too.
    client.post(_event_url(study), {"event": "result_opened", "rank": "7"})
    session.refresh_from_db()
    assert session.results_opened == 3


def test_event_endpoint_refuses_bad_input_clinicians_and_anonymous(client, expert, clinician):
    study = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    client.force_login(expert)
    for body in (
        {"event": "other", "rank": 1},
        {"event": "result_opened", "rank": "x"},
        {"event": "result_opened", "rank": 0},
    ):
        response = client.post(_event_url(study), body, content_type="application/json")
        assert response.status_code == 400, body
    response = client.post(_event_url(study), "[1]", content_type="application/json")
    assert response.status_code == 400
    assert not ReadingSession.objects.filter(results_opened__gt=0).exists()
    client.force_login(clinician)
    response = client.post(_event_url(study), {"event": "result_opened", "rank": 1})
    assert response.status_code == 403
    client.logout()
    response = client.post(_event_url(study), {"event": "result_opened", "rank": 1})
    assert response.status_code in (302, 401, 403)
    assert not ReadingSession.objects.exists()


def test_event_endpoint_checks_csrf(expert, study):
    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(expert)
    response = csrf_client.post(_event_url(study), {"event": "result_opened", "rank": 1})
    assert response.status_code == 403
    assert not ReadingSession.objects.exists()


def test_a_stale_reading_is_abandoned_and_a_new_one_starts(expert, study):
    old = reading_session_open(study=study, expert=expert)
    ReadingSession.objects.filter(pk=old.pk).update(
        opened_at=timezone.now() - SESSION_GAP - dt.timedelta(minutes=1)
    )
    new = reading_session_open(study=study, expert=expert)
    assert new.pk != old.pk
    label = ExpertLabelFactory(study=study, expert=expert)
    assert reading_session_decide(study=study, expert=expert, label=label).pk == new.pk


def test_deciding_without_having_opened_the_review_records_no_reading(expert, study):
    label = ExpertLabelFactory(study=study, expert=expert)
    assert reading_session_decide(study=study, expert=expert, label=label) is None
    assert not ReadingSession.objects.exists()


def test_summary_gives_median_quartiles_and_per_diagnosis_rows(expert, second_expert):
    now = timezone.now()
    for seconds, name, opened in (
        (30, "Normal", 1),
        (60, "Normal", 3),
        (90, "IPF-ILD", 0),
        (400, "IPF-ILD", 2),
    ):
        study = StudyFactory()
        label = ExpertLabelFactory(study=study, expert=expert, diagnosis=diagnosis(name))
        ReadingSession.objects.create(
            study=study,
            expert=expert,
            opened_at=now - dt.timedelta(seconds=seconds),
            decided_at=now,
            label=label,
            reading_seconds=seconds,
            results_opened=opened,
        )
    reading_session_open(study=StudyFactory(), expert=second_expert)  # undecided
    summary = reading_time_summary()
    assert summary["overall"]["count"] == 4
    assert summary["overall"]["median_s"] == 75.0
    assert summary["overall"]["p25_s"] == 52.5 and summary["overall"]["p75_s"] == 167.5
    assert summary["overall"]["median_opened"] == 1.5
    rows = {r["diagnosis"]: r for r in summary["by_diagnosis"]}
    assert rows["Normal"]["median_s"] == 45.0 and rows["IPF-ILD"]["median_s"] == 245.0
    # Bins [0, 30), [30, 60), [60, 120), [120, 300), [300, 600), >= 600 s.
    assert [b["count"] for b in summary["bins"]] == [0, 1, 2, 0, 1, 0]
    assert summary["undecided"] == 1


def test_admin_page_shows_the_distribution(client, admin_user, expert):
    study = StudyFactory()
    label = ExpertLabelFactory(study=study, expert=expert, diagnosis=diagnosis("Normal"))
    now = timezone.now()
    ReadingSession.objects.create(
        study=study,
        expert=expert,
        opened_at=now - dt.timedelta(seconds=42),
        decided_at=now,
        label=label,
        reading_seconds=42.0,
        results_opened=2,
    )
    client.force_login(admin_user)
    response = client.get(reverse("admin:cases_readingsession_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="reading-summary"' in html and "42 s" in html
    assert 'data-diagnosis="Normal"' in html


def test_result_opened_starts_a_reading_when_none_runs(expert, study):
    session = reading_session_result_opened(study=study, expert=expert, rank=3)
    assert session.results_opened == 1
    with pytest.raises(ValueError):
        reading_session_result_opened(study=study, expert=expert, rank=0)
