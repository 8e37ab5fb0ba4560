"""REST API: study list/detail/upload/results, authentication and clinician isolation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from cases.models import Patient, Slice, Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(clinician) -> APIClient:
    client = APIClient()
    client.force_authenticate(clinician)
    return client


def ct_slice_bytes(*, study_uid: str, series_uid: str, index: int, size: int = 32) -> bytes:
    """One small, valid CT DICOM instance (Explicit VR Little Endian)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("slice.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = "API-TEST-PATIENT"
    ds.PatientName = "Test^Api"
    ds.PatientSex = "F"
    ds.PatientBirthDate = "19600101"
    ds.StudyDate = "20240101"
    ds.StudyDescription = "CT chest API"
    ds.SeriesDescription = "Lung"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(index) * 5.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 5.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    pixels = np.full((size, size), 1024 - 850, dtype=np.int16)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_uploads(n: int = 3) -> list[ContentFile]:
    study_uid, series_uid = generate_uid(), generate_uid()
    return [
        ContentFile(
            ct_slice_bytes(study_uid=study_uid, series_uid=series_uid, index=i), name=f"s{i}.dcm"
        )
        for i in range(n)
    ]


# --- authentication ------------------------------------------------------------------------


def test_anonymous_gets_no_data():
    study = StudyFactory()
    client = APIClient()
    for url in [
        reverse("api-study-list"),
        reverse("api-study-detail", args=[study.pk]),
        reverse("api-study-results", args=[study.pk]),
    ]:
        response = client.get(url)
        assert response.status_code in (401, 403), url
        assert study.study_instance_uid not in response.content.decode()


def test_token_obtained_with_password_authenticates_requests(clinician):
    StudyFactory(uploaded_by=clinician)
    client = APIClient()
    response = client.post(
        reverse("api-token"), {"username": clinician.username, "password": "pw-for-tests-123"}
    )
    assert response.status_code == 200
    token = response.json()["token"]
    assert Token.objects.get(user=clinician).key == token

    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get(reverse("api-study-list")).json()["count"] == 1

    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    refused = client.get(reverse("api-study-list"))
    assert refused.status_code in (401, 403)
    assert refused.json()["detail"] == "Invalid token."


def test_token_endpoint_refuses_wrong_password(clinician):
    response = APIClient().post(
        reverse("api-token"), {"username": clinician.username, "password": "wrong"}
    )
    assert response.status_code == 400
    assert not Token.objects.exists()


def test_token_endpoint_is_throttled_by_failed_login_lockout(clinician, settings):
    client = APIClient()
    url = reverse("api-token")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post(url, {"username": clinician.username, "password": "wrong"})
    # Locked out: even the right password gets no token now.
    response = client.post(url, {"username": clinician.username, "password": "pw-for-tests-123"})
    assert response.status_code in (400, 403, 429)
    assert not Token.objects.exists()


def test_session_auth_works_for_logged_in_users(client, clinician):
    StudyFactory(uploaded_by=clinician)
    client.force_login(clinician)
    response = client.get(reverse("api-study-list"))
    assert response.status_code == 200
    assert response.json()["count"] == 1


# --- list / detail ---------------------------------------------------------------------------


def test_clinician_lists_only_own_studies(api, clinician):
    own = StudyFactory(uploaded_by=clinician)
    StudyFactory()  # another clinician's

    body = api.get(reverse("api-study-list")).json()

    assert body["count"] == 1
    assert [s["id"] for s in body["results"]] == [own.pk]


def test_expert_lists_all_studies():
    StudyFactory.create_batch(3)
    client = APIClient()
    client.force_authenticate(UserFactory(role="Expert"))
    assert client.get(reverse("api-study-list")).json()["count"] == 3


def test_list_shows_status_progress_and_current_label(api, clinician):
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="features",
        progress_percent=40,
    )
    ExpertLabelFactory(study=study, diagnosis=diagnosis("Normal"))
    ExpertLabelFactory(study=study, diagnosis=diagnosis("ASS-ILD"))
    StudyFactory(uploaded_by=clinician)  # unlabelled

    results = api.get(reverse("api-study-list")).json()["results"]
    by_id = {s["id"]: s for s in results}

    row = by_id[study.pk]
    assert (row["status"], row["progress_stage"], row["progress_percent"]) == (
        "processing",
        "features",
        40,
    )
    assert row["current_label"] == {"code": "ass-ild", "name": "ASS-ILD"}
    assert [s["current_label"] for s in results if s["id"] != study.pk] == [None]


def test_list_is_paginated_and_filters_by_status(api, clinician):
    StudyFactory.create_batch(3, uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    StudyFactory(uploaded_by=clinician, status=Study.Status.FAILED)

    page = api.get(reverse("api-study-list"), {"page_size": 2}).json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]
    second = api.get(page["next"]).json()
    assert len(second["results"]) == 2 and second["next"] is None

    ready = api.get(reverse("api-study-list"), {"status": "ready_for_review"}).json()
    assert ready["count"] == 3


def test_detail_has_series_slice_count_and_failure_message(api, clinician):
    study = StudyFactory(
        uploaded_by=clinician, status=Study.Status.FAILED, status_message="lung mask empty"
    )
    SeriesFactory(study=study, slice_count=64, description="A")
    SeriesFactory(study=study, slice_count=30, description="B")

    body = api.get(reverse("api-study-detail", args=[study.pk])).json()

    assert body["slice_count"] == 94
    assert sorted(s["slice_count"] for s in body["series"]) == [30, 64]
    assert body["status"] == "failed"
    assert body["failure_message"] == "lung mask empty"
    assert body["results_url"].endswith(f"/api/studies/{study.pk}/results/")


def test_detail_of_another_clinicians_study_is_404(api):
    other = StudyFactory()
    for name in ("api-study-detail", "api-study-results", "api-study-labels"):
        response = api.get(reverse(name, args=[other.pk]))
        assert response.status_code == 404, name
        assert other.study_instance_uid not in response.content.decode()


# --- upload ----------------------------------------------------------------------------------


def test_upload_creates_study_then_reupload_creates_nothing(api, clinician):
    files = dicom_uploads(3)
    response = api.post(reverse("api-study-list"), {"files": files}, format="multipart")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == 1
    (study,) = body["studies"]
    saved = Study.objects.get(pk=study["id"])
    assert saved.uploaded_by == clinician
    # Processing was queued (the worker runs it after the request's transaction commits).
    assert (study["status"], study["progress_stage"]) == ("processing", "queued")
    assert saved.status == Study.Status.PROCESSING
    assert Slice.objects.filter(series__study_id=study["id"]).count() == 3

    for f in files:
        f.seek(0)
    again = api.post(reverse("api-study-list"), {"files": files}, format="multipart")
    assert again.status_code == 200
    assert again.json()["created"] == 0
    assert Study.objects.count() == 1


def test_upload_of_non_dicom_is_400_naming_the_file_and_saves_nothing(api):
    bad = ContentFile(b"this is not DICOM at all", name="notes.txt")
    response = api.post(
        reverse("api-study-list"), {"files": [*dicom_uploads(2), bad]}, format="multipart"
    )
    assert response.status_code == 400
    assert "notes.txt" in response.json()["detail"]
    assert not Study.objects.exists()
    assert not Patient.objects.exists()


def test_upload_without_files_is_400(api):
    response = api.post(reverse("api-study-list"), {}, format="multipart")
    assert response.status_code == 400
    assert "files" in response.json()["detail"]


# --- results ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["uploaded", "processing", "failed"])
def test_results_of_unfinished_study_are_409(api, clinician, status):
    study = StudyFactory(
        uploaded_by=clinician, status=status, progress_stage="embed", progress_percent=55
    )
    response = api.get(reverse("api-study-results", args=[study.pk]))
    assert response.status_code == 409
    assert response.json() == {
        "detail": "results not ready",
        "status": status,
        "progress_stage": "embed",
        "progress_percent": 55,
        "queue": None,  # set while a run waits (tests/retrieval_tests/test_queue.py)
    }


def test_results_list_similar_cases_scores_votes_and_cam_urls(api, clinician):
    from retrieval.models import ModelVersion, SimilarCase, StudyResult

    study = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    query_slices = SliceFactory.create_batch(2, series=SeriesFactory(study=study))
    references = [
        ReferenceCaseFactory(state="approved", diagnosis=diagnosis(name))
        for name in ("IPF-ILD", "Normal")
    ]
    ref_slices = [SliceFactory(series=SeriesFactory(study=r.study)) for r in references]
    version = ModelVersion.objects.create(
        name="v-test", artefact_dir="/nonexistent", backbone="efficientnet_lite0", is_active=True
    )
    result = StudyResult.objects.create(
        study=study,
        model_version=version,
        suggested_diagnosis=diagnosis("IPF-ILD"),
        votes={"ipf-ild": 0.75, "normal": 0.25},
        key_slice=query_slices[1],
        query_slice_count=2,
    )
    for rank, (ref, ref_slice, score) in enumerate(
        zip(references, ref_slices, [0.93, 0.81], strict=True), start=1
    ):
        case = SimilarCase(
            result=result,
            rank=rank,
            reference_case=ref,
            score=score,
            n_hits=3,
            query_slice=query_slices[1],
            reference_slice=ref_slice,
        )
        if rank == 1:
            case.query_cam.save("q.png", ContentFile(b"\x89PNG fake"), save=False)
        case.save()

    response = api.get(reverse("api-study-results", args=[study.pk]))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["model_version"] == "v-test"
    assert body["suggested_diagnosis"]["code"] == "ipf-ild"
    assert body["votes"] == {"ipf-ild": 0.75, "normal": 0.25}
    assert body["key_slice"]["id"] == query_slices[1].pk
    cases = body["similar_cases"]
    assert [c["rank"] for c in cases] == [1, 2]
    assert [c["score"] for c in cases] == [0.93, 0.81]
    assert [c["diagnosis"]["code"] for c in cases] == ["ipf-ild", "normal"]
    assert cases[0]["study"] == references[0].study_id
    assert cases[0]["reference_slice"]["id"] == ref_slices[0].pk
    assert cases[0]["reference_slice"]["image_url"].endswith(f"/slices/{ref_slices[0].pk}.png")
    assert cases[0]["query_cam_url"] == (
        f"http://testserver/api/files/similar-cases/{result.cases.get(rank=1).pk}/query.png"
    )
    assert cases[1]["query_cam_url"] is None
    # The CAM URL is served to the logged-in user.
    cam = APIClient()
    cam.force_login(clinician)
    assert cam.get(cases[0]["query_cam_url"]).status_code == 200
    # So is the reference slice image (an approved case's study is open to every user).
    image = cam.get(cases[0]["reference_slice"]["image_url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"


def test_list_filters_by_current_diagnosis_and_text(api, clinician):
    labelled = StudyFactory(uploaded_by=clinician, description="CT chest HRCT")
    ExpertLabelFactory(study=labelled, diagnosis=diagnosis("Normal"))
    ExpertLabelFactory(study=labelled, diagnosis=diagnosis("IPF-ILD"))
    StudyFactory(uploaded_by=clinician, description="CT abdomen")

    url = reverse("api-study-list")
    assert [s["id"] for s in api.get(url, {"diagnosis": "ipf-ild"}).json()["results"]] == [
        labelled.pk
    ]
    assert api.get(url, {"diagnosis": "normal"}).json()["count"] == 0
    assert [s["id"] for s in api.get(url, {"q": "hrct"}).json()["results"]] == [labelled.pk]
