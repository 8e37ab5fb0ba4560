"""The upload page: several DICOM files or a zip in one multipart POST, errors shown with 400."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from cases.models import Series, Slice, Study
from cases.services.ingestion import uid_pseudonym
from tests.dicomgen import ct_series_write, zip_write
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def clinician_client(client, clinician):
    client.force_login(clinician)
    return client


def uploads(paths: list[Path]) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]


def media_files() -> list[str]:
    return [
        os.path.join(root, name)
        for root, _dirs, names in os.walk(settings.MEDIA_ROOT)
        for name in names
    ]


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_upload_page_has_a_multipart_form_with_multiple_file_input(clinician_client):
    response = clinician_client.get(reverse("cases:upload"))
    html = response.content.decode()
    assert response.status_code == 200
    assert 'enctype="multipart/form-data"' in html
    assert 'type="file" name="files"' in html and " multiple" in html
    assert "csrfmiddlewaretoken" in html
    assert 'src="/static/upload.js"' in html and 'id="dropzone"' in html


def test_upload_of_several_dicom_files_creates_the_study_and_opens_it(
    clinician_client, clinician, tmp_path
):
    series = ct_series_write(folder=tmp_path / "s", slices=3, size=32, suffix="")

    response = clinician_client.post(
        reverse("cases:upload"), {"files": uploads(series.paths)}, follow=True
    )

    study = Study.objects.get()
    assert response.redirect_chain == [(reverse("cases:study_detail", args=[study.pk]), 302)]
    assert response.status_code == 200
    assert study.uploaded_by == clinician
    assert study.study_instance_uid == uid_pseudonym(uid=series.study_uid)
    assert Slice.objects.filter(series__study=study).count() == 3
    assert any(m.startswith("Imported study") for m in page_messages(response))
    assert response.context["slice_ids"]  # the viewer shows the new slices


def test_upload_of_a_zip_with_two_studies_goes_to_the_worklist(clinician_client, tmp_path):
    first = ct_series_write(folder=tmp_path / "a", slices=2, size=32)
    second = ct_series_write(folder=tmp_path / "b", slices=2, size=32, seed=1)
    archive = zip_write(
        path=tmp_path / "studies.zip",
        members={f"dicom/{p.parent.name}/{p.name}": p.read_bytes() for p in first.paths}
        | {f"dicom/{p.parent.name}/{p.name}": p.read_bytes() for p in second.paths},
    )

    response = clinician_client.post(reverse("cases:upload"), {"files": uploads([archive])})

    assert response.status_code == 302 and response["Location"] == reverse("cases:worklist")
    assert set(Study.objects.values_list("study_instance_uid", flat=True)) == {
        uid_pseudonym(uid=first.study_uid),
        uid_pseudonym(uid=second.study_uid),
    }


def test_uploading_the_same_files_again_creates_nothing_and_says_so(clinician_client, tmp_path):
    series = ct_series_write(folder=tmp_path / "s", slices=2, size=32)
    clinician_client.post(reverse("cases:upload"), {"files": uploads(series.paths)})
    counts = (Study.objects.count(), Series.objects.count(), Slice.objects.count())

    response = clinician_client.post(
        reverse("cases:upload"), {"files": uploads(series.paths)}, follow=True
    )

    assert (Study.objects.count(), Series.objects.count(), Slice.objects.count()) == counts
    assert any(m.startswith("Already present") for m in page_messages(response))


def test_non_dicom_file_is_refused_with_400_naming_the_file_and_nothing_saved(
    clinician_client, tmp_path
):
    series = ct_series_write(folder=tmp_path / "s", slices=2, size=32)
    notes = SimpleUploadedFile("notes.txt", b"these are not DICOM pixels")

    response = clinician_client.post(
        reverse("cases:upload"), {"files": [*uploads(series.paths), notes]}
    )

    assert response.status_code == 400
    html = response.content.decode()
    assert 'role="alert"' in html and "notes.txt" in html
    assert response.context["error"].startswith("notes.txt: ")
    assert not Study.objects.exists() and not Slice.objects.exists()
    assert media_files() == []


def test_post_without_files_is_a_400_with_the_reason(clinician_client):
    response = clinician_client.post(reverse("cases:upload"), {})
    assert response.status_code == 400
    assert "Choose at least one DICOM file" in response.content.decode()


def test_user_without_upload_permission_is_refused(client, tmp_path):
    client.force_login(UserFactory())
    series = ct_series_write(folder=tmp_path / "s", slices=1, size=32)
    assert client.get(reverse("cases:upload")).status_code == 403
    assert client.post(reverse("cases:upload"), {"files": uploads(series.paths)}).status_code == 403
    assert not Study.objects.exists()


def test_upload_without_csrf_token_is_refused(clinician, tmp_path):
    client = Client(enforce_csrf_checks=True)
    client.force_login(clinician)
    series = ct_series_write(folder=tmp_path / "s", slices=1, size=32)
    response = client.post(reverse("cases:upload"), {"files": uploads(series.paths)})
    assert response.status_code == 403
    assert not Study.objects.exists()


def test_upload_page_tells_its_script_the_file_count_limit(clinician_client, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 7
    response = clinician_client.get(reverse("cases:upload"))
    assert 'data-max-files="7"' in response.content.decode()
