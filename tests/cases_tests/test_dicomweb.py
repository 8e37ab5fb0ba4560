"""The DICOMweb subset (cases/api/dicomweb.py): QIDO-RS search, WADO-RS metadata, instance
and frame retrieval, with the pages' visibility rule (login required; another user's study,
a proposed reference case and unknown UIDs are all 404) on real database rows and files."""

from __future__ import annotations

import email
import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse

from cases.models import ReferenceCase, Series, Slice, Study, series_dicom_dir
from tests.dicomgen import ct_dataset, dataset_bytes
from tests.factories import (
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    diagnosis,
    hu_npy_bytes,
)

pytestmark = pytest.mark.django_db

BASE = "/api/dicomweb/studies"


def _study(owner, *, n: int = 3, with_dicom: bool = True) -> Study:
    study = StudyFactory(uploaded_by=owner)
    series = SeriesFactory(
        study=study, rows=64, columns=64, pixel_spacing_row=0.7, pixel_spacing_col=0.8
    )
    for i in range(n):
        hu = np.full((64, 64), -1000, np.int16)
        hu[20:40, 10 + i : 30 + i] = -850
        SliceFactory(
            series=series,
            index=i,
            pixels=ContentFile(hu_npy_bytes(hu), name="slice.npy"),
        )
    if with_dicom:
        series.dicom_dir = series_dicom_dir(series=series)
        series.save()
        for s in series.slices.all():
            ds = ct_dataset(
                hu=np.full((8, 8), 40, np.int16),
                study_uid=study.study_instance_uid,
                series_uid=series.series_instance_uid,
                sop_uid=s.sop_instance_uid,
            )
            default_storage.save(
                f"{series.dicom_dir}/{s.index:04d}.dcm", ContentFile(dataset_bytes(ds))
            )
    return study


def _urls(study: Study) -> list[str]:
    series = study.series.get()
    inst = series.slices.order_by("index").first()
    s = f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}"
    i = f"{s}/instances/{inst.sop_instance_uid}"
    return [
        f"{BASE}/{study.study_instance_uid}/series",
        f"{s}/instances",
        f"{s}/metadata",
        f"{i}/metadata",
        i,
        f"{i}/frames/1",
    ]


def _parts(response) -> list[tuple[str, bytes]]:
    """The parts of a multipart/related answer: (content type, body)."""
    raw = b"Content-Type: " + response["Content-Type"].encode() + b"\r\n\r\n" + response.content
    msg = email.message_from_bytes(raw)
    assert msg.is_multipart()
    return [(p.get_content_type(), p.get_payload(decode=True)) for p in msg.get_payload()]


def test_the_routes_are_the_documented_dicomweb_paths():
    assert reverse("dicomweb-studies") == BASE
    assert (
        reverse(
            "dicomweb-frame",
            kwargs={"study_uid": "1.2", "series_uid": "1.3", "instance_uid": "1.4", "frame": 1},
        )
        == f"{BASE}/1.2/series/1.3/instances/1.4/frames/1"
    )


def test_every_endpoint_needs_a_login(client, clinician):
    study = _study(clinician)
    for url in [BASE, *_urls(study)]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"DICM" not in response.content


def test_qido_studies_lists_own_and_approved_reference_studies_only(
    client, clinician, other_clinician, expert
):
    own = _study(clinician)
    others = _study(other_clinician)
    approved = ReferenceCaseFactory(
        diagnosis=diagnosis("Normal"),
        state=ReferenceCase.State.APPROVED,
        study=_study(expert),
    ).study
    proposed = ReferenceCaseFactory(
        diagnosis=diagnosis("Normal"),
        state=ReferenceCase.State.PROPOSED,
        study=_study(expert),
    ).study
    client.force_login(clinician)
    response = client.get(BASE)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/dicom+json"
    uids = {item["0020000D"]["Value"][0] for item in response.json()}
    assert uids == {own.study_instance_uid, approved.study_instance_uid}
    assert others.study_instance_uid not in uids and proposed.study_instance_uid not in uids
    mine = next(i for i in response.json() if i["0020000D"]["Value"][0] == own.study_instance_uid)
    assert mine["00100020"]["Value"] == [own.patient.display_id]
    assert mine["00201206"]["Value"] == [1] and mine["00201208"]["Value"] == [3]
    client.force_login(expert)
    every = {i["0020000D"]["Value"][0] for i in client.get(BASE).json()}
    assert {s.study_instance_uid for s in (own, others, approved, proposed)} <= every


def test_qido_studies_filters_and_pages(client, clinician):
    studies = [_study(clinician, n=1, with_dicom=False) for _ in range(3)]
    client.force_login(clinician)
    one = client.get(BASE, {"StudyInstanceUID": studies[1].study_instance_uid}).json()
    assert [i["0020000D"]["Value"][0] for i in one] == [studies[1].study_instance_uid]
    assert len(client.get(BASE, {"limit": 2}).json()) == 2
    assert len(client.get(BASE, {"limit": 2, "offset": 2}).json()) == 1
    for bad in (
        {"limit": "x"},
        {"limit": -1},
        {"offset": "1.5"},
        {"limit": 100000},
        {"StudyInstanceUID": "1.2.x"},
        {"PatientID": "A\x00B"},
        {"PatientID": "P" * 65},
    ):
        response = client.get(BASE, bad)
        assert response.status_code == 400, bad
        assert response["Content-Type"] == "application/json"


def test_another_users_study_is_404_on_every_endpoint(client, clinician, other_clinician):
    study = _study(clinician)
    client.force_login(other_clinician)
    for url in _urls(study):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response.json() == {"detail": response.json()["detail"]}
        assert b"DICM" not in response.content


def test_a_proposed_reference_case_stays_hidden_and_an_approved_one_opens(
    client, clinician, expert
):
    rc = ReferenceCaseFactory(
        diagnosis=diagnosis("Normal"), state=ReferenceCase.State.PROPOSED, study=_study(expert)
    )
    client.force_login(clinician)
    assert all(client.get(u).status_code == 404 for u in _urls(rc.study))
    ReferenceCase.objects.filter(pk=rc.pk).update(state=ReferenceCase.State.APPROVED)
    assert all(client.get(u).status_code == 200 for u in _urls(rc.study))


def test_qido_series_and_instances_describe_the_stored_rows(client, clinician):
    study = _study(clinician)
    series = study.series.get()
    client.force_login(clinician)
    found = client.get(f"{BASE}/{study.study_instance_uid}/series").json()
    assert [s["0020000E"]["Value"][0] for s in found] == [series.series_instance_uid]
    assert found[0]["00201209"]["Value"] == [3]
    instances = client.get(
        f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}/instances"
    ).json()
    expected = list(series.slices.order_by("index").values_list("sop_instance_uid", flat=True))
    assert [i["00080018"]["Value"][0] for i in instances] == expected
    assert instances[0]["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.2"]


def test_series_metadata_gives_geometry_pixel_format_window_and_the_frame_url(client, clinician):
    study = _study(clinician)
    series = study.series.get()
    client.force_login(clinician)
    url = f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}"
    meta = client.get(f"{url}/metadata").json()
    assert len(meta) == 3
    first = meta[0]
    assert first["00280010"]["Value"] == [64] and first["00280011"]["Value"] == [64]
    assert first["00280030"]["Value"] == [0.7, 0.8]
    assert first["00280100"]["Value"] == [16] and first["00280103"]["Value"] == [1]
    assert first["00281052"]["Value"] == [0] and first["00281053"]["Value"] == [1]
    assert first["00281050"]["Value"] == [-600] and first["00281051"]["Value"] == [1500]
    sop = first["00080018"]["Value"][0]
    assert first["7FE00010"]["BulkDataURI"].endswith(f"{url}/instances/{sop}/frames/1")
    one = client.get(f"{url}/instances/{sop}/metadata").json()
    assert one == [first]


def test_frame_retrieval_returns_the_stored_hounsfield_units(client, clinician):
    study = _study(clinician)
    series = study.series.get()
    slice_ = series.slices.order_by("index")[1]
    client.force_login(clinician)
    url = (
        f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}"
        f"/instances/{slice_.sop_instance_uid}/frames/1"
    )
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    [(ctype, body)] = _parts(response)
    assert ctype == "application/octet-stream"
    with default_storage.open(slice_.pixels.name, "rb") as fh:
        stored = np.load(io.BytesIO(fh.read()))
    pixels = np.frombuffer(body, dtype="<i2").reshape(64, 64)
    assert np.array_equal(pixels, stored)
    assert (pixels == -850).sum() == 400
    assert client.get(url[:-1] + "2").status_code == 404


def test_instance_retrieval_returns_the_de_identified_dicom_copy(client, clinician):
    import pydicom

    study = _study(clinician)
    series = study.series.get()
    slice_ = series.slices.order_by("index")[2]
    client.force_login(clinician)
    url = (
        f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}"
        f"/instances/{slice_.sop_instance_uid}"
    )
    response = client.get(url)
    assert response.status_code == 200
    [(ctype, body)] = _parts(response)
    assert ctype == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.SOPInstanceUID == slice_.sop_instance_uid
    Series.objects.filter(pk=series.pk).update(dicom_dir="")  # a PNG-imported reference
    assert client.get(url).status_code == 404


def test_unknown_and_malformed_uids_are_json_404s(client, clinician):
    study = _study(clinician, with_dicom=False)
    series = study.series.get()
    client.force_login(clinician)
    for url in (
        f"{BASE}/1.2.3/series",
        f"{BASE}/{study.study_instance_uid}/series/9.9/instances",
        f"{BASE}/{study.study_instance_uid}/series/{series.series_instance_uid}/instances/9.9",
        f"{BASE}/{study.study_instance_uid}/series/..%2f..%2fetc/metadata",
        f"{BASE}/{'1.' * 40}1/series",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response["Content-Type"].startswith("application/json"), url
    assert Slice.objects.count() == 3
