"""Media downloads follow the study's visibility: a clinician never gets another clinician's
slice pixels, de-identified DICOM copy or result overlays."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from cases.models import ReferenceCase
from tests.factories import ReferenceCaseFactory, SliceFactory, StudyFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return UserFactory(username="alice", role="Clinician")


@pytest.fixture
def bob():
    return UserFactory(username="bob", role="Clinician")


def media_url(name: str) -> str:
    return reverse("media", args=[name])


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_clinician_downloads_own_slice_but_gets_404_for_another_clinicians(client, alice, bob):
    own = SliceFactory(series__study__uploaded_by=alice)
    other = SliceFactory(series__study__uploaded_by=bob)
    client.force_login(alice)

    response = client.get(media_url(own.pixels.name))
    assert response.status_code == 200 and body(response).startswith(b"\x93NUMPY")
    assert client.get(media_url(other.pixels.name)).status_code == 404


def test_dicom_copy_and_result_overlays_follow_their_study(client, alice, bob):
    study = StudyFactory(uploaded_by=bob)
    dicom = default_storage.save(
        f"dicom/{study.study_instance_uid}/1.2.3/0000.dcm", ContentFile(b"DICM")
    )
    overlay = default_storage.save(f"results/{study.pk}/1/rank01-query.png", ContentFile(b"png"))

    client.force_login(alice)
    assert client.get(media_url(dicom)).status_code == 404
    assert client.get(media_url(overlay)).status_code == 404

    client.force_login(bob)
    assert client.get(media_url(dicom)).status_code == 200
    assert client.get(media_url(overlay)).status_code == 200

    client.force_login(UserFactory(role="Expert"))
    assert client.get(media_url(overlay)).status_code == 200


def test_clinician_may_download_slices_of_an_approved_reference_case(client, alice, bob):
    slice_ = SliceFactory(series__study__uploaded_by=bob)
    ReferenceCaseFactory(study=slice_.series.study, state=ReferenceCase.State.APPROVED)
    client.force_login(alice)
    assert client.get(media_url(slice_.pixels.name)).status_code == 200


def test_files_outside_the_study_layout_are_for_experts_and_admins_only(client, alice):
    name = default_storage.save("reports/model-v1/report.html", ContentFile(b"<html>"))
    client.force_login(alice)
    assert client.get(media_url(name)).status_code == 404
    client.force_login(UserFactory(role="Expert"))
    assert client.get(media_url(name)).status_code == 200
