"""The worklist page: visible studies with status, progress and diagnosis; filters; pages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cases.models import Study
from cases.views import pages
from tests.factories import ExpertLabelFactory, StudyFactory, UserFactory, diagnosis

pytestmark = pytest.mark.django_db


def rows(response) -> list[Study]:
    return list(response.context["page_obj"].object_list)


def test_worklist_shows_status_progress_uploader_and_current_diagnosis(client, clinician):
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="embedding",
        progress_percent=42,
    )
    ExpertLabelFactory(study=study, diagnosis=diagnosis("DM/RP-ILD (anti-MDA5)"))
    client.force_login(clinician)

    response = client.get(reverse("cases:worklist"))

    html = response.content.decode()
    assert response.status_code == 200
    assert study.patient.display_id in html
    assert 'class="badge status-processing"' in html and "Processing" in html
    assert 'aria-valuenow="42"' in html and 'data-width="42"' in html and "embedding" in html
    assert "alice" in html and "DM/RP-ILD (anti-MDA5)" in html
    assert reverse("cases:study_detail", args=[study.pk]) in html


def test_clinician_worklist_lists_own_studies_only(client, clinician):
    own = StudyFactory(uploaded_by=clinician)
    other = StudyFactory(uploaded_by=UserFactory(role="Clinician"))
    client.force_login(clinician)

    html = client.get(reverse("cases:worklist")).content.decode()

    assert own.patient.display_id in html
    assert other.patient.display_id not in html


def test_expert_worklist_lists_every_study(client):
    studies = [StudyFactory(), StudyFactory()]
    client.force_login(UserFactory(role="Expert"))
    assert set(rows(client.get(reverse("cases:worklist")))) == set(studies)


def test_worklist_filters_by_status_diagnosis_and_search(client):
    ready = StudyFactory(status=Study.Status.READY_FOR_REVIEW, description="baseline")
    reviewed = StudyFactory(status=Study.Status.REVIEWED, description="follow-up 2024")
    ExpertLabelFactory(study=reviewed, diagnosis=diagnosis("IPF-ILD"))
    client.force_login(UserFactory(role="Expert"))
    url = reverse("cases:worklist")

    assert rows(client.get(url, {"status": "ready_for_review"})) == [ready]
    assert rows(client.get(url, {"diagnosis": "ipf-ild"})) == [reviewed]
    assert rows(client.get(url, {"q": "follow-up"})) == [reviewed]
    assert rows(client.get(url, {"q": ready.patient.display_id})) == [ready]
    # An unknown filter value is ignored instead of failing the page.
    assert set(rows(client.get(url, {"status": "nonsense"}))) == {ready, reviewed}


def test_worklist_paginates_and_keeps_filters_in_page_links(client, clinician, monkeypatch):
    monkeypatch.setattr(pages, "WORKLIST_PAGE_SIZE", 2)
    for _ in range(3):
        StudyFactory(uploaded_by=clinician, status=Study.Status.UPLOADED)
    client.force_login(clinician)
    url = reverse("cases:worklist")

    first = client.get(url, {"status": "uploaded"})
    second = client.get(url, {"status": "uploaded", "page": "2"})

    assert len(rows(first)) == 2 and len(rows(second)) == 1
    assert "?status=uploaded&amp;page=2" in first.content.decode()
    assert "Page 2 of 2" in second.content.decode()


def test_nav_shows_upload_and_library_links(client, clinician):
    client.force_login(clinician)
    html = client.get(reverse("cases:worklist")).content.decode()
    assert f'href="{reverse("cases:upload")}"' in html
    assert f'href="{reverse("cases:library")}"' in html


def test_user_without_upload_permission_gets_no_upload_link(client):
    client.force_login(UserFactory())
    html = client.get(reverse("cases:worklist")).content.decode()
    assert f'href="{reverse("cases:upload")}"' not in html
