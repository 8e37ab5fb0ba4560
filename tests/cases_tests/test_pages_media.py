"""Stored files are downloaded by the id of their row and follow the study's visibility: a
clinician never gets another clinician's slice pixels, de-identified DICOM copy or result
overlays (cases/api/files.py)."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from cases.models import ReferenceCase, series_dicom_dir
from retrieval.models import ModelVersion, SimilarCase, StudyResult
from tests.factories import ReferenceCaseFactory, SliceFactory, UserFactory

pytestmark = pytest.mark.django_db


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def npy_url(slice_) -> str:
    return reverse("api-file-slice-npy", args=[slice_.pk])


def dcm_url(slice_) -> str:
    return reverse("api-file-slice-dcm", args=[slice_.pk])


def cam_url(case, side: str) -> str:
    return reverse("api-file-similar-case-cam", args=[case.pk, side])


def with_dicom_copy(slice_, content: bytes = b"DICM copy"):
    series = slice_.series
    series.dicom_dir = series_dicom_dir(series=series)
    series.save(update_fields=["dicom_dir"])
    default_storage.save(f"{series.dicom_dir}/{slice_.index:04d}.dcm", ContentFile(content))
    return slice_


def similar_case(*, query_owner, reference_state=ReferenceCase.State.APPROVED) -> SimilarCase:
    """A stored result of a study of `query_owner` whose rank-1 case has both overlays."""
    query = SliceFactory(series__study__uploaded_by=query_owner)
    reference = ReferenceCaseFactory(state=reference_state)
    ref_slice = SliceFactory(series__study=reference.study)
    version = ModelVersion.objects.create(name="v1", artefact_dir="x", backbone="b")
    result = StudyResult.objects.create(study=query.series.study, model_version=version)
    case = SimilarCase(
        result=result,
        rank=1,
        reference_case=reference,
        score=0.9,
        query_slice=query,
        reference_slice=ref_slice,
    )
    case.query_cam.save("rank01-query.png", ContentFile(b"\x89PNG query"), save=False)
    case.reference_cam.save("rank01-reference.png", ContentFile(b"\x89PNG ref"), save=False)
    case.save()
    return case


def test_clinician_downloads_own_slice_but_gets_404_for_another_clinicians(
    client, clinician, other_clinician
):
    own = SliceFactory(series__study__uploaded_by=clinician)
    other = SliceFactory(series__study__uploaded_by=other_clinician)
    client.force_login(clinician)

    response = client.get(npy_url(own))
    assert response.status_code == 200 and body(response).startswith(b"\x93NUMPY")
    assert client.get(npy_url(other)).status_code == 404


def test_dicom_copy_follows_its_study(client, clinician, other_clinician):
    slice_ = with_dicom_copy(SliceFactory(series__study__uploaded_by=other_clinician), b"DICM bob")

    client.force_login(clinician)
    assert client.get(dcm_url(slice_)).status_code == 404

    client.force_login(other_clinician)
    response = client.get(dcm_url(slice_))
    assert response.status_code == 200 and body(response) == b"DICM bob"
    assert response["Content-Type"] == "application/dicom"

    client.force_login(UserFactory(role="Expert"))
    assert client.get(dcm_url(slice_)).status_code == 200


def test_a_slice_without_dicom_copy_answers_404(client, clinician):
    slice_ = SliceFactory(series__study__uploaded_by=clinician)  # e.g. an imported PNG reference
    client.force_login(clinician)
    assert client.get(dcm_url(slice_)).status_code == 404


def test_result_overlays_follow_the_study_they_answer(client, clinician, other_clinician):
    case = similar_case(query_owner=other_clinician)

    client.force_login(clinician)
    assert client.get(cam_url(case, "query")).status_code == 404
    assert client.get(cam_url(case, "reference")).status_code == 404

    client.force_login(other_clinician)
    query = client.get(cam_url(case, "query"))
    assert query.status_code == 200 and body(query) == b"\x89PNG query"
    assert query["Content-Type"] == "image/png"
    assert body(client.get(cam_url(case, "reference"))) == b"\x89PNG ref"

    client.force_login(UserFactory(role="Expert"))
    assert client.get(cam_url(case, "query")).status_code == 200


def test_reference_overlay_of_a_retired_reference_case_is_hidden_from_clinicians(
    client, other_clinician
):
    case = similar_case(query_owner=other_clinician, reference_state=ReferenceCase.State.RETIRED)
    client.force_login(other_clinician)
    assert client.get(cam_url(case, "query")).status_code == 200
    assert client.get(cam_url(case, "reference")).status_code == 404


def test_an_unknown_overlay_side_answers_404(client, other_clinician):
    case = similar_case(query_owner=other_clinician)
    client.force_login(other_clinician)
    assert client.get(f"/api/files/similar-cases/{case.pk}/both.png").status_code == 404


def test_clinician_may_download_slices_of_an_approved_reference_case(
    client, clinician, other_clinician
):
    slice_ = SliceFactory(series__study__uploaded_by=other_clinician)
    ReferenceCaseFactory(study=slice_.series.study, state=ReferenceCase.State.APPROVED)
    client.force_login(clinician)
    assert client.get(npy_url(slice_)).status_code == 200


def test_a_file_lost_by_the_storage_answers_404(client, clinician):
    slice_ = SliceFactory(series__study__uploaded_by=clinician)
    default_storage.delete(slice_.pixels.name)
    client.force_login(clinician)
    assert client.get(npy_url(slice_)).status_code == 404


def test_token_clients_get_files_too(client, clinician):
    from rest_framework.authtoken.models import Token

    slice_ = SliceFactory(series__study__uploaded_by=clinician)
    token = Token.objects.create(user=clinician)
    response = client.get(npy_url(slice_), HTTP_AUTHORIZATION=f"Token {token.key}")
    assert response.status_code == 200 and body(response).startswith(b"\x93NUMPY")


def test_the_old_media_prefix_serves_nothing(client, clinician, other_clinician):
    own = SliceFactory(series__study__uploaded_by=clinician)
    client.force_login(UserFactory(role="Admin"))
    assert client.get(f"/media/{own.pixels.name}").status_code == 404


def test_admin_pages_link_files_by_id_not_by_storage_key(client, other_clinician):
    case = similar_case(query_owner=other_clinician)
    slice_ = with_dicom_copy(case.query_slice)
    client.force_login(UserFactory(role="Admin"))

    page = client.get(reverse("admin:cases_slice_change", args=[slice_.pk])).content.decode()
    assert f'href="{npy_url(slice_)}"' in page and f'href="{dcm_url(slice_)}"' in page
    page += client.get(
        reverse("admin:retrieval_similarcase_change", args=[case.pk])
    ).content.decode()
    assert f'href="{cam_url(case, "query")}"' in page
    assert f'href="{cam_url(case, "reference")}"' in page
    assert "/media/" not in page and slice_.pixels.name not in page
