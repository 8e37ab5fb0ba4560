"""cases.real_data: the standard UID repair of the COVID-CT-MD series whose UIDs are invalid,
after which the upload's own reader accepts them with their pixel data untouched."""

from __future__ import annotations

import shutil
import uuid

import pydicom
import pytest

from cases.dicom import DicomInputError
from cases.dicom.reading import ct_instance_read, uid_problem
from cases.real_data import series_needs_repair, series_uids_repair, uid_repaired
from tests.conftest import REAL_DATA, real_data_or_skip


def test_uid_repaired_keeps_valid_uids_and_maps_uuids_per_ps3_5_b2():
    assert uid_repaired("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    value = "896911bf-1143-4c8d-8f04-f3cd1a7f6204"
    assert uid_repaired(value) == f"2.25.{uuid.UUID(value).int}"
    empty_a, empty_b = uid_repaired("", salt="sop a"), uid_repaired("", salt="sop b")
    assert empty_a != empty_b and empty_a == uid_repaired("", salt="sop a")
    for uid in (empty_a, uid_repaired("not a uid"), uid_repaired(value)):
        assert uid_problem(uid) is None and len(uid) <= 64


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # reading the originals
def test_repaired_covid_ct_md_series_reads_through_the_upload_reader_with_same_pixels(tmp_path):
    source = real_data_or_skip(REAL_DATA / "covid-ct-md") / "P002"
    subset = tmp_path / "P002"
    subset.mkdir()
    for f in sorted(source.glob("*.dcm"))[20:23]:
        shutil.copy(f, subset / f.name)
    first = sorted(subset.iterdir())[0]
    with pytest.raises(DicomInputError, match="SOPInstanceUID"):
        ct_instance_read(path=first)
    assert series_needs_repair(subset)

    assert series_uids_repair(folder=subset, out=tmp_path / "fixed") == 3
    assert not series_needs_repair(tmp_path / "fixed")
    sops = set()
    for f in sorted(subset.iterdir()):
        fixed = tmp_path / "fixed" / f.name
        inst = ct_instance_read(path=fixed)
        sops.add(inst.sop_uid)
        before, after = pydicom.dcmread(f), pydicom.dcmread(fixed)
        assert after.PixelData == before.PixelData  # JPEG Lossless bytes copied as they are
        assert after.file_meta.TransferSyntaxUID == before.file_meta.TransferSyntaxUID
        assert after.StudyInstanceUID == f"2.25.{uuid.UUID(before.StudyInstanceUID).int}"
        assert inst.hu.min() <= -900  # decoded to Hounsfield units: air
    assert len(sops) == 3
    # Idempotent: a second repair gives the same UIDs.
    series_uids_repair(folder=subset, out=tmp_path / "again")
    again = {ct_instance_read(path=p).sop_uid for p in (tmp_path / "again").iterdir()}
    assert again == sops


def test_a_valid_series_needs_no_repair():
    folder = real_data_or_skip(REAL_DATA / "covid-ct-md") / "P001"
    assert not series_needs_repair(folder)
