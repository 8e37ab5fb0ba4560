"""The ingestion service (cases/services/ingestion.py): what it stores, idempotence, and
refusal of bad input with nothing half-saved."""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from pydicom.uid import RLELossless, generate_uid

from cases.models import AuditEvent, Patient, Series, Slice, Study
from cases.services import ingestion
from cases.services.ingestion import (
    IngestionError,
    series_import_folder,
    study_import_paths,
    study_import_uploads,
    uid_pseudonym,
)
from tests.dicomgen import (
    PATIENT_ID,
    chest_phantom,
    ct_dataset,
    ct_series_write,
    dataset_bytes,
    undecodable_write,
    zip_write,
)
from tests.factories import SeriesFactory, SliceFactory, UserFactory

pytestmark = pytest.mark.django_db


def media_files() -> list[str]:
    root = Path(settings.MEDIA_ROOT)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def assert_nothing_saved():
    assert Patient.objects.count() == 0
    assert Study.objects.count() == 0
    assert Series.objects.count() == 0
    assert Slice.objects.count() == 0
    assert media_files() == []


@pytest.fixture
def user():
    return UserFactory(role="Clinician")


@pytest.fixture
def two_series(tmp_path):
    """One study, two series (3 and 2 slices), in one folder without file endings."""
    study_uid = generate_uid()
    a = ct_series_write(
        folder=tmp_path / "in", slices=3, study_uid=study_uid, series_number=1, suffix=""
    )
    b = ct_series_write(
        folder=tmp_path / "in", slices=2, study_uid=study_uid, series_number=2, seed=1
    )
    return tmp_path / "in", a, b


def test_import_stores_study_series_and_slices_in_position_order(user, two_series):
    folder, a, b = two_series
    result = study_import_paths(paths=[folder], uploader=user)
    assert result.created == [True]
    [study] = result.studies
    # Only the keyed pseudonyms of the source UIDs are stored.
    assert study.study_instance_uid == uid_pseudonym(uid=a.study_uid)
    assert study.uploaded_by == user and study.status == Study.Status.UPLOADED
    assert str(study.study_date) == "2024-01-15"
    series = list(study.series.order_by("series_number"))
    assert [s.series_instance_uid for s in series] == [
        uid_pseudonym(uid=a.series_uid),
        uid_pseudonym(uid=b.series_uid),
    ]
    assert [s.slice_count for s in series] == [3, 2]
    first = series[0]
    assert (first.rows, first.columns, first.convolution_kernel) == (32, 32, "B70f")
    assert first.pixel_spacing_row == pytest.approx(0.7)
    slices = list(first.slices.order_by("index"))
    assert [s.sop_instance_uid for s in slices] == [uid_pseudonym(uid=u) for u in a.sop_uids]
    assert [s.z_position for s in slices] == pytest.approx(a.z)
    for s, expected in zip(slices, a.hu, strict=True):
        with s.pixels.open("rb") as fh:
            hu = np.load(fh, allow_pickle=False)
        assert hu.dtype == np.int16
        np.testing.assert_array_equal(hu, expected)
        assert (s.hu_min, s.hu_max) == (float(expected.min()), float(expected.max()))
    # Storage keys are made of row ids, never of the DICOM's UIDs.
    assert slices[0].pixels.name == f"studies/{study.pk}/series/{first.pk}/hu/0000.npy"


def test_import_stores_deidentified_dicom_copies(user, two_series):
    folder, a, _ = two_series
    [study] = study_import_paths(paths=[folder], uploader=user).studies
    series = study.series.get(series_instance_uid=uid_pseudonym(uid=a.series_uid))
    assert series.dicom_dir == f"studies/{study.pk}/series/{series.pk}/dicom"
    copies = sorted((Path(settings.MEDIA_ROOT) / series.dicom_dir).iterdir())
    assert [p.name for p in copies] == ["0000.dcm", "0001.dcm", "0002.dcm"]
    ds = pydicom.dcmread(copies[1])
    assert ds.SOPInstanceUID == uid_pseudonym(uid=a.sop_uids[1])
    assert ds.PatientID == study.patient.display_id
    assert ds.PatientIdentityRemoved == "YES"
    assert PATIENT_ID.encode() not in copies[1].read_bytes()
    np.testing.assert_array_equal(ds.pixel_array.astype(int) - 1024, a.hu[1])


def test_patient_is_a_keyed_hash_with_sex_only(user, two_series):
    folder, _, _ = two_series
    [study] = study_import_paths(paths=[folder], uploader=user).studies
    patient = study.patient
    key = settings.ILDREVIEW_PSEUDONYM_KEY.encode()
    message = b"ildreview-patient\x00" + PATIENT_ID.encode()
    assert patient.pseudonym == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert patient.display_id == "P-" + patient.pseudonym[:8].upper()
    assert patient.sex == "F"
    assert not hasattr(patient, "birth_year")  # the birth date never reaches the database


def test_import_records_an_audit_event(user, two_series):
    folder, a, b = two_series
    [study] = study_import_paths(paths=[folder], uploader=user).studies
    event = AuditEvent.objects.get(verb="study.imported")
    assert (event.actor, event.object_id) == (user, str(study.pk))
    assert event.detail["slices"] == 5 and event.detail["created"] is True


def test_importing_the_same_instances_again_creates_nothing(user, two_series):
    folder, _, _ = two_series
    first = study_import_paths(paths=[folder], uploader=user)
    files_before = media_files()
    again = study_import_paths(paths=[folder], uploader=user)
    assert again.created == [False] and again.new_series == [0]
    assert again.studies[0].pk == first.studies[0].pk
    assert (Study.objects.count(), Series.objects.count(), Slice.objects.count()) == (1, 2, 5)
    assert media_files() == files_before
    assert AuditEvent.objects.filter(verb="study.imported").count() == 1


def test_new_series_of_a_known_study_is_added_to_it(user, tmp_path):
    study_uid = generate_uid()
    a = ct_series_write(folder=tmp_path / "a", slices=2, study_uid=study_uid)
    b = ct_series_write(folder=tmp_path / "b", slices=2, study_uid=study_uid, series_number=2)
    first = study_import_paths(paths=[tmp_path / "a"], uploader=user)
    second = study_import_paths(paths=[tmp_path / "a", tmp_path / "b"], uploader=user)
    assert second.created == [False] and second.new_series == [1]
    assert second.studies[0].pk == first.studies[0].pk
    assert set(second.studies[0].series.values_list("series_instance_uid", flat=True)) == {
        uid_pseudonym(uid=a.series_uid),
        uid_pseudonym(uid=b.series_uid),
    }


def test_series_stored_with_other_instances_is_refused(user, tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    ct_series_write(folder=tmp_path / "a", slices=2, study_uid=study_uid, series_uid=series_uid)
    ct_series_write(
        folder=tmp_path / "b", slices=1, z0=50, study_uid=study_uid, series_uid=series_uid
    )
    study_import_paths(paths=[tmp_path / "a"], uploader=user)
    files_before = media_files()
    with pytest.raises(IngestionError, match="already stored with other instances"):
        study_import_paths(paths=[tmp_path / "b"], uploader=user)
    assert Slice.objects.count() == 2 and media_files() == files_before


def test_sop_instance_already_stored_in_another_series_is_refused(user, tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=2)
    SliceFactory(sop_instance_uid=uid_pseudonym(uid=gen.sop_uids[1]), series=SeriesFactory())
    with pytest.raises(IngestionError, match="already stored elsewhere") as err:
        study_import_paths(paths=[tmp_path], uploader=user)
    assert err.value.filename.endswith(".dcm")
    assert Study.objects.count() == 1  # only the factory's


def test_upload_accepts_dcm_extensionless_and_zip_files(user, tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=4, transfer_syntax=RLELossless)
    data = [p.read_bytes() for p in gen.paths]
    archive = zip_write(
        path=tmp_path / "rest.zip", members={"DICOM/IM2": data[2], "DICOM/IM3": data[3]}
    )
    files = [
        SimpleUploadedFile("IM0.dcm", data[0]),
        SimpleUploadedFile("IM1", data[1]),
        SimpleUploadedFile("rest.zip", archive.read_bytes()),
    ]
    result = study_import_uploads(files=files, uploader=user)
    assert result.created == [True]
    series = result.studies[0].series.get()
    assert series.slice_count == 4
    assert list(series.slices.values_list("sop_instance_uid", flat=True)) == [
        uid_pseudonym(uid=u) for u in gen.sop_uids
    ]
    assert result.studies[0].source == Study.Source.UPLOAD


def test_upload_over_the_size_limit_is_refused(user, tmp_path, settings):
    settings.ILDREVIEW_MAX_UPLOAD_BYTES = 10_000
    gen = ct_series_write(folder=tmp_path, slices=2, size=64)
    files = [SimpleUploadedFile(p.name, p.read_bytes()) for p in gen.paths]
    with pytest.raises(IngestionError, match="over the limit of 10000 bytes"):
        study_import_uploads(files=files, uploader=user)
    assert_nothing_saved()


def test_upload_of_zip_with_traversal_is_refused(user, tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1)
    archive = zip_write(path=tmp_path / "x.zip", members={"../../x.dcm": gen.paths[0].read_bytes()})
    files = [SimpleUploadedFile("x.zip", archive.read_bytes())]
    with pytest.raises(IngestionError, match=r"^x\.zip/\.\./\.\./x\.dcm: .*'\.\.'"):
        study_import_uploads(files=files, uploader=user)
    assert_nothing_saved()


# ------------------------------------------------------------------ refused inputs
# Each case adds one bad item to a good series, so the good files prove nothing is half-saved.


def _non_dicom(tmp):
    (tmp / "readme-notes.txt").write_text("not an image\n" * 10)
    return tmp / "readme-notes.txt"


def _truncated(tmp):
    gen = ct_series_write(folder=tmp / "t", slices=1, patient_id="T", seed=5)
    data = gen.paths[0].read_bytes()
    gen.paths[0].write_bytes(data[: len(data) // 2])
    return gen.paths[0]


def _no_pixels(tmp):
    ds = ct_dataset(hu=chest_phantom(size=8), study_uid=generate_uid(), series_uid=generate_uid())
    del ds.PixelData
    (tmp / "nopix.dcm").write_bytes(dataset_bytes(ds))
    return tmp / "nopix.dcm"


def _mr(tmp):
    return ct_series_write(folder=tmp / "mr", slices=1, modality="MR").paths[0]


def _undecodable(tmp):
    return undecodable_write(path=tmp / "odd.dcm")


def _bad_geometry(tmp):
    # A fourth slice of the good series with another matrix size.
    ds = pydicom.dcmread(sorted((tmp / "good").iterdir())[0])
    bad = ct_dataset(
        hu=chest_phantom(size=16),
        study_uid=ds.StudyInstanceUID,
        series_uid=ds.SeriesInstanceUID,
        position=(0.0, 0.0, 300.0),
    )
    (tmp / "small.dcm").write_bytes(dataset_bytes(bad))
    return tmp / "small.dcm"


def _duplicate_position(tmp):
    ds = pydicom.dcmread(sorted((tmp / "good").iterdir())[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp / "dup.dcm")
    return tmp / "dup.dcm"


def _zip_absolute(tmp):
    return zip_write(path=tmp / "abs.zip", members={"/tmp/evil.dcm": b"x"})


def _zip_parent(tmp):
    return zip_write(path=tmp / "up.zip", members={"a/../../evil.dcm": b"x"})


def _zip_bomb_size(tmp):
    return zip_write(path=tmp / "bomb.zip", members={"zeros.dcm": bytes(3 * 1024 * 1024)})


def _zip_bomb_count(tmp):
    return zip_write(path=tmp / "many.zip", members={f"{i}.dcm": b"x" for i in range(30)})


def _missing(tmp):
    return tmp / "does-not-exist"


BAD_INPUTS = {
    "non_dicom": (_non_dicom, "readme-notes.txt", "not a DICOM file"),
    "truncated": (_truncated, ".dcm", "truncated or corrupt"),
    "no_pixel_data": (_no_pixels, "nopix.dcm", "no pixel data"),
    "non_ct": (_mr, ".dcm", "modality MR is not CT"),
    "undecodable": (_undecodable, "odd.dcm", "cannot decode pixel data"),
    "geometry": (_bad_geometry, ".dcm", "inconsistent geometry"),
    "duplicate_position": (_duplicate_position, ".dcm", "same slice position"),
    "zip_absolute": (_zip_absolute, "abs.zip//tmp/evil.dcm", "absolute path"),
    "zip_parent": (_zip_parent, "up.zip/a/../../evil.dcm", "'..'"),
    "zip_bomb_size": (_zip_bomb_size, "bomb.zip", "zip bomb"),
    "zip_bomb_count": (_zip_bomb_count, "many.zip", "over the limit of 20"),
    "missing_path": (_missing, "does-not-exist", "no such file or folder"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_refused_naming_file_and_reason_with_nothing_saved(
    user, tmp_path, settings, case
):
    settings.ILDREVIEW_MAX_ZIP_EXPANDED_BYTES = 1024 * 1024
    settings.ILDREVIEW_MAX_ZIP_FILES = 20
    build, filename_part, reason = BAD_INPUTS[case]
    ct_series_write(folder=tmp_path / "good", slices=3)
    bad = build(tmp_path)
    with pytest.raises(IngestionError) as err:
        study_import_paths(paths=[tmp_path / "good", bad], uploader=user)
    assert filename_part in err.value.filename
    assert reason in err.value.reason
    assert str(err.value) == f"{err.value.filename}: {err.value.reason}"
    assert_nothing_saved()


def test_failure_while_writing_removes_media_files_and_rows(user, two_series, monkeypatch):
    folder, _, _ = two_series

    def broken_audit(**kwargs):
        # Called after every row and file of the study has been written.
        assert len(media_files()) == 10
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(ingestion, "audit_event_record", broken_audit)
    with pytest.raises(RuntimeError, match="audit store unavailable"):
        study_import_paths(paths=[folder], uploader=user)
    assert_nothing_saved()


def test_series_import_folder_imports_one_series_with_given_source(user, tmp_path):
    gen = ct_series_write(folder=tmp_path / "s", slices=2)
    result = series_import_folder(
        folder=tmp_path / "s", uploader=user, source=Study.Source.REFERENCE_IMPORT
    )
    assert result.created == [True]
    assert result.studies[0].source == Study.Source.REFERENCE_IMPORT
    assert result.studies[0].series.get().series_instance_uid == uid_pseudonym(uid=gen.series_uid)


def test_series_import_folder_refuses_a_folder_with_two_series(user, two_series):
    folder, _, _ = two_series
    with pytest.raises(IngestionError, match="expected one DICOM series, found 2"):
        series_import_folder(folder=folder, uploader=user, source=Study.Source.REFERENCE_IMPORT)
    assert_nothing_saved()


def test_import_from_zip_path_ignores_export_clutter(user, tmp_path):
    gen = ct_series_write(folder=tmp_path / "s", slices=2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in gen.paths:
            zf.write(p, f"export/{p.name}")
        zf.writestr("export/DICOMDIR", b"not an image")
        zf.writestr("__MACOSX/export/._x", b"resource fork")
    (tmp_path / "export.zip").write_bytes(buf.getvalue())
    result = study_import_paths(paths=[tmp_path / "export.zip"], uploader=user)
    assert result.studies[0].series.get().slice_count == 2
    assert not any(name.startswith("zip") for name in os.listdir(tmp_path))


def test_upload_refuses_a_study_already_uploaded_by_another_clinician(tmp_path):
    folder = tmp_path / "s"
    ct_series_write(folder=folder, slices=3, size=32)
    first = UserFactory(role="Clinician")
    other = UserFactory(role="Clinician")
    study_import_paths(paths=[folder], uploader=first)
    with pytest.raises(IngestionError, match="already uploaded by another user"):
        study_import_paths(paths=[folder], uploader=other)
    assert Study.objects.count() == 1
    # An expert (sees all studies) gets the stored study back.
    again = study_import_paths(paths=[folder], uploader=UserFactory(role="Expert"))
    assert again.created == [False]
