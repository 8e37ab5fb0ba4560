"""The reference library page: approved cases with thumbnails, filter by diagnosis."""

from __future__ import annotations

import pytest
from django.urls import reverse

from cases.models import ReferenceCase
from cases.views import pages
from tests.factories import ReferenceCaseFactory, SliceFactory, UserFactory, diagnosis

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician_client(client):
    client.force_login(UserFactory(role="Clinician"))
    return client


def cases_on(response) -> list[ReferenceCase]:
    return list(response.context["page_obj"].object_list)


def test_library_shows_approved_cases_of_every_uploader_to_a_clinician(clinician_client):
    approved = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    ReferenceCaseFactory(state=ReferenceCase.State.PROPOSED)
    ReferenceCaseFactory(state=ReferenceCase.State.RETIRED)
    response = clinician_client.get(reverse("cases:library"))
    assert response.status_code == 200
    assert cases_on(response) == [approved]
    assert reverse("cases:study_detail", args=[approved.study_id]) in response.content.decode()


def test_library_thumbnail_is_the_middle_slice(clinician_client):
    case = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    first = SliceFactory(series__study=case.study, index=0)
    middle = SliceFactory(series=first.series, index=1)
    SliceFactory(series=first.series, index=2)

    html = clinician_client.get(reverse("cases:library")).content.decode()

    assert f'src="{reverse("cases:slice_png", args=[middle.pk])}?preset=lung&amp;size=256"' in html
    # ... and the thumbnail itself is served to the clinician.
    assert clinician_client.get(reverse("cases:slice_png", args=[middle.pk])).status_code == 200


def test_library_filters_by_diagnosis(clinician_client):
    ipf = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis("IPF-ILD"))
    ReferenceCaseFactory(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis("Normal"))
    response = clinician_client.get(reverse("cases:library"), {"diagnosis": "ipf-ild"})
    assert cases_on(response) == [ipf]
    assert '<option value="ipf-ild" selected>' in response.content.decode()


def test_library_paginates(clinician_client, monkeypatch):
    monkeypatch.setattr(pages, "LIBRARY_PAGE_SIZE", 2)
    for _ in range(3):
        ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    url = reverse("cases:library")
    assert len(cases_on(clinician_client.get(url))) == 2
    assert len(cases_on(clinician_client.get(url, {"page": "2"}))) == 1


def test_empty_library_says_so(clinician_client):
    html = clinician_client.get(reverse("cases:library")).content.decode()
    assert "No approved reference cases" in html
