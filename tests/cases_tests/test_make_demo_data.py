"""`make_demo_data` and the DICOM writer: real, readable CT DICOM and a valid manifest."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from pydicom.pixels import apply_rescale
from pydicom.uid import UID, CTImageStorage

from cases.demo_data import DEMO_CLASSES, demo_dataset_write
from cases.dicom_writer import write_ct_series
from cases.phantom import chest_phantom
from cases.uids import deterministic_uid


def _hu(ds) -> np.ndarray:
    return apply_rescale(ds.pixel_array.astype(np.float64), ds)


@pytest.mark.parametrize("signed", [False, True])
def test_written_ct_series_reads_back_with_the_same_hounsfield_units(tmp_path, signed):
    volume = np.stack([chest_phantom(size=48, seed=k)[0] for k in range(3)])
    written = write_ct_series(
        volume_hu=volume,
        folder=tmp_path / "s",
        patient_id="PID-1",
        patient_name="Doe^Jane",
        study_uid=deterministic_uid("t", "study"),
        series_uid=deterministic_uid("t", "series"),
        spacing=(0.8, 0.8),
        thickness=1.0,
        slice_spacing=10.0,
        convolution_kernel="B70f",
        signed=signed,
    )
    assert len(written.paths) == 3
    for k, path in enumerate(written.paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.SOPClassUID == CTImageStorage and ds.Modality == "CT"
        assert ds.PixelRepresentation == (1 if signed else 0)
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
        assert ds.pixel_array.dtype == (np.int16 if signed else np.uint16)
        assert np.array_equal(_hu(ds), volume[k])
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(-10.0 * k)
        assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.8]
        assert float(ds.SliceThickness) == 1.0
        assert ds.InstanceNumber == k + 1
        assert ds.PatientID == "PID-1" and ds.ConvolutionKernel == "B70f"
        assert ds.SOPInstanceUID == written.sop_uids[k]


def test_writer_refuses_hounsfield_units_that_do_not_fit_the_stored_type(tmp_path):
    volume = np.full((1, 8, 8), -2000, np.int16)
    with pytest.raises(ValueError, match="does not fit"):
        write_ct_series(
            volume_hu=volume, folder=tmp_path, patient_id="x", study_uid="1.2", series_uid="1.3"
        )


def test_deterministic_uid_is_a_valid_stable_uid_that_depends_on_its_parts():
    uid = deterministic_uid("a", "b")
    assert uid == deterministic_uid("a", "b") != deterministic_uid("a", "c")
    assert uid.startswith("2.25.") and UID(uid).is_valid and len(uid) <= 64


def test_make_demo_data_writes_dicom_series_per_patient_and_a_manifest(tmp_path):
    out = tmp_path / "demo"
    call_command("make_demo_data", str(out), patients_per_class=3, slices=3, size=64, seed=1)
    with open(out / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "patient_id", "split"]
    assert len(rows) == 12
    assert {r["label"] for r in rows} == {label for _, label, _ in DEMO_CLASSES}
    assert {
        "Normal",
        "Ground-glass",
        "Reticulation/honeycombing",
        "Consolidation",
    } == {r["label"] for r in rows}
    per_class = defaultdict(set)
    for r in rows:
        per_class[r["label"]].add(r["split"])
    assert all(splits == {"train", "test"} for splits in per_class.values())
    assert len({r["patient_id"] for r in rows}) == 12

    study_uids = set()
    for r in rows:
        folder = out / r["path"]
        files = sorted(folder.iterdir())
        assert len(files) == 3
        datasets = [pydicom.dcmread(f) for f in files]
        assert {ds.PatientID for ds in datasets} == {r["patient_id"]}
        assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
        assert len({ds.SOPInstanceUID for ds in datasets}) == 3
        study_uids.add(datasets[0].StudyInstanceUID)
        hu = np.stack([_hu(ds) for ds in datasets])
        assert hu.shape == (3, 64, 64)
        assert hu.min() == -1024 and hu.max() > 400  # air and bone
        zs = [float(ds.ImagePositionPatient[2]) for ds in datasets]
        assert len(set(zs)) == 3
    assert len(study_uids) == 12


def test_demo_data_is_deterministic_in_the_seed(tmp_path):
    a = demo_dataset_write(outdir=tmp_path / "a", patients_per_class=1, slices=2, size=48, seed=3)
    b = demo_dataset_write(outdir=tmp_path / "b", patients_per_class=1, slices=2, size=48, seed=3)
    c = demo_dataset_write(outdir=tmp_path / "c", patients_per_class=1, slices=2, size=48, seed=4)
    assert [x.study_uid for x in a] == [x.study_uid for x in b]
    assert {x.study_uid for x in a}.isdisjoint({x.study_uid for x in c})
    first = sorted((tmp_path / "a" / a[0].path).iterdir())[0]
    same = sorted((tmp_path / "b" / b[0].path).iterdir())[0]
    assert first.read_bytes() == same.read_bytes()


def test_demo_classes_differ_in_lung_density(tmp_path):
    cases = demo_dataset_write(outdir=tmp_path, patients_per_class=1, slices=3, size=96, seed=0)
    medians = {}
    for case in cases:
        hu = np.stack([_hu(pydicom.dcmread(f)) for f in sorted((tmp_path / case.path).iterdir())])
        medians[case.pattern] = float(np.mean(hu > -300))
    assert medians["consolidation"] > medians["normal"]
