"""De-identification of stored DICOM copies (cases/dicom/deid.py)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.uid import RLELossless

from cases.dicom import deid
from cases.dicom.deid import dataset_deidentify
from tests.dicomgen import PATIENT_ID, PATIENT_NAME, chest_phantom, ct_dataset


@pytest.fixture
def original():
    return ct_dataset(hu=chest_phantom(size=16), study_uid="1.2.3.4", series_uid="1.2.3.4.5")


def roundtrip(ds) -> tuple[pydicom.Dataset, bytes]:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    return pydicom.dcmread(io.BytesIO(data)), data


def test_every_profile_keyword_is_a_known_dicom_attribute():
    assert all(tag_for_keyword(k) is not None for k in deid.EMPTY + deid.REMOVE)


def test_patient_name_and_id_are_replaced_by_the_pseudonymous_label(original):
    ds, data = roundtrip(dataset_deidentify(ds=original, patient_label="P-1A2B3C4D"))
    assert str(ds.PatientName) == "P-1A2B3C4D"
    assert ds.PatientID == "P-1A2B3C4D"
    # Nowhere in the file, not even in a private tag or a nested item.
    for secret in (PATIENT_ID, "Doe", "Jane", "Saint Example", "House", "ACC-998877", "SN-555"):
        assert secret.encode() not in data, secret


def test_identifying_attributes_are_removed_or_emptied(original):
    assert PATIENT_NAME == str(original.PatientName)
    ds, _ = roundtrip(dataset_deidentify(ds=original, patient_label="P-X"))
    for keyword in (
        "InstitutionName",
        "InstitutionAddress",
        "OperatorsName",
        "StationName",
        "OtherPatientIDs",
        "PatientAddress",
        "DeviceSerialNumber",
        "RequestAttributesSequence",
    ):
        assert keyword not in ds, keyword
    for keyword in ("PatientBirthDate", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        assert keyword in ds and not ds[keyword].value, keyword
    assert not ds.ReferencedImageSequence[0].PersonName
    assert not any(elem.tag.is_private for elem in ds.iterall())
    assert "SourceApplicationEntityTitle" not in ds.file_meta


def test_linkage_dates_and_patient_characteristics_are_kept(original):
    sop = original.SOPInstanceUID
    ds, _ = roundtrip(dataset_deidentify(ds=original, patient_label="P-X"))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        "1.2.3.4",
        "1.2.3.4.5",
        sop,
    )
    assert ds.StudyDate == "20240115"
    assert (ds.PatientSex, ds.PatientAge) == ("F", "065Y")
    assert ds.ConvolutionKernel == "B70f"


def test_deidentified_copy_is_marked_and_names_its_method(original):
    ds, _ = roundtrip(dataset_deidentify(ds=original, patient_label="P-X"))
    assert ds.PatientIdentityRemoved == "YES"
    assert "PS3.15" in ds.DeidentificationMethod
    assert len(ds.DeidentificationMethod) <= 64  # VR LO
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert {"113100", "113110"} <= codes


def test_pixel_data_is_unchanged_also_when_compressed(original):
    hu_before = original.pixel_array.copy()
    original.compress(RLELossless, generate_instance_uid=False)
    ds, _ = roundtrip(dataset_deidentify(ds=original, patient_label="P-X"))
    assert ds.file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(ds.pixel_array, hu_before)
