"""Reading, validating, grouping and ordering CT instances (cases/dicom/reading.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from cases.dicom import DicomInputError
from cases.dicom.reading import ct_instance_read, ct_studies_group, hu_from_stored, ignored_file
from tests.dicomgen import ct_dataset, ct_series_write, dataset_bytes, undecodable_write


def read_all(paths):
    return ct_studies_group(instances=[ct_instance_read(path=p) for p in paths])


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
    ids=["explicit", "implicit", "rle", "jpeg2000"],
)
def test_reading_returns_exact_hu_for_each_transfer_syntax(tmp_path, transfer_syntax):
    gen = ct_series_write(folder=tmp_path, slices=3, transfer_syntax=transfer_syntax)
    [study] = read_all(gen.paths)
    volume = np.stack([inst.hu for inst in study.series[0].instances])
    assert volume.dtype == np.int16
    np.testing.assert_array_equal(volume, gen.hu)


def test_slices_are_sorted_by_position_along_normal_not_instance_number(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=6, shuffle=True)
    [study] = read_all(gen.paths)
    series = study.series[0]
    assert [i.sop_uid for i in series.instances] == gen.sop_uids
    assert series.z_positions == pytest.approx(gen.z)
    # The generator numbers instances in reverse: InstanceNumber alone would get it wrong.
    assert [i.instance_number for i in series.instances] == [6, 5, 4, 3, 2, 1]


def test_sorting_follows_normal_of_oblique_and_flipped_orientation(tmp_path):
    # Rows along +x, columns along -y: the normal is -z, so "ascending along the normal" is
    # descending patient z.
    orientation = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)
    gen = ct_series_write(folder=tmp_path, slices=4, orientation=orientation)
    [study] = read_all(gen.paths)
    series = study.series[0]
    assert [i.sop_uid for i in series.instances] == gen.sop_uids
    patient_z = [float(i.position[2]) for i in series.instances]
    assert patient_z == sorted(patient_z, reverse=True)


def test_hu_uses_rescale_slope_and_intercept(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1, slope=0.5, intercept=-1500.0)
    [study] = read_all(gen.paths)
    hu = study.series[0].instances[0].hu
    # Stored values were rounded at slope 0.5, so HU are exact to within half a step.
    assert np.max(np.abs(hu.astype(int) - gen.hu.astype(int))) <= 1
    assert hu.min() <= -900


def test_hu_from_stored_clips_to_int16():
    hu = hu_from_stored(stored=np.array([0, 70000], dtype=np.int64), slope=1.0, intercept=-1024)
    assert hu.tolist() == [-1024, 32767]
    assert hu.dtype == np.int16


def test_grouping_separates_studies_and_series_and_reads_patient_attributes(tmp_path):
    study_uid = generate_uid()
    a = ct_series_write(folder=tmp_path / "a", slices=2, study_uid=study_uid, series_number=2)
    b = ct_series_write(folder=tmp_path / "b", slices=3, study_uid=study_uid, series_number=1)
    c = ct_series_write(folder=tmp_path / "c", slices=2, patient_id="OTHER")
    studies = read_all(a.paths + b.paths + c.paths)
    by_uid = {s.study_uid: s for s in studies}
    assert set(by_uid) == {study_uid, c.study_uid}
    first = by_uid[study_uid]
    assert [s.series_uid for s in first.series] == [b.series_uid, a.series_uid]
    assert first.slice_count == 5
    assert (first.patient_sex, first.patient_birth_year) == ("F", 1958)
    assert str(first.study_date) == "2024-01-15"


def test_same_file_given_twice_is_kept_once(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=2)
    [study] = read_all(gen.paths + gen.paths)
    assert len(study.series[0].instances) == 2


def test_rejects_non_dicom_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not DICOM\n" * 20)
    with pytest.raises(DicomInputError, match="not a DICOM file") as err:
        ct_instance_read(path=path)
    assert err.value.filename == str(path)


def test_rejects_dicom_truncated_in_pixel_data(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1)
    data = gen.paths[0].read_bytes()
    gen.paths[0].write_bytes(data[: len(data) - 300])
    with pytest.raises(DicomInputError, match="truncated or corrupt"):
        ct_instance_read(path=gen.paths[0])


def test_rejects_dicom_truncated_in_header(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1)
    data = gen.paths[0].read_bytes()
    gen.paths[0].write_bytes(data[:400])
    with pytest.raises(DicomInputError, match="truncated"):
        ct_instance_read(path=gen.paths[0])


def test_rejects_dicom_without_pixel_data(tmp_path):
    ds = ct_dataset(hu=np.zeros((8, 8), np.int16), study_uid="1.2.3", series_uid="1.2.3.4")
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    path.write_bytes(dataset_bytes(ds))
    with pytest.raises(DicomInputError, match="no pixel data"):
        ct_instance_read(path=path)


def test_rejects_non_ct_modality(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1, modality="MR")
    with pytest.raises(DicomInputError, match="modality MR is not CT"):
        ct_instance_read(path=gen.paths[0])


@pytest.mark.parametrize("syntax", ["1.2.826.0.1.3680043.10.999.1", MPEG2MPML])
def test_rejects_transfer_syntax_without_decoder(tmp_path, syntax):
    path = undecodable_write(path=tmp_path / "odd.dcm", transfer_syntax=syntax)
    with pytest.raises(DicomInputError, match="cannot decode pixel data") as err:
        ct_instance_read(path=path)
    assert str(syntax) in err.value.reason


def test_rejects_series_with_different_matrix_sizes(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    a = ct_series_write(
        folder=tmp_path, slices=2, size=32, study_uid=study_uid, series_uid=series_uid
    )
    b = ct_series_write(
        folder=tmp_path / "b", slices=1, size=16, z0=50, study_uid=study_uid, series_uid=series_uid
    )
    with pytest.raises(DicomInputError, match="inconsistent geometry.*16x16"):
        read_all(a.paths + b.paths)


def test_rejects_series_with_different_orientations(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    a = ct_series_write(folder=tmp_path, slices=2, study_uid=study_uid, series_uid=series_uid)
    b = ct_series_write(
        folder=tmp_path / "b",
        slices=1,
        z0=50,
        study_uid=study_uid,
        series_uid=series_uid,
        orientation=(0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
    )
    with pytest.raises(DicomInputError, match="ImageOrientationPatient differs"):
        read_all(a.paths + b.paths)


def test_rejects_series_with_different_pixel_spacing(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    a = ct_series_write(folder=tmp_path, slices=2, study_uid=study_uid, series_uid=series_uid)
    b = ct_series_write(
        folder=tmp_path / "b",
        slices=1,
        z0=50,
        study_uid=study_uid,
        series_uid=series_uid,
        spacing=(0.9, 0.9),
    )
    with pytest.raises(DicomInputError, match="PixelSpacing"):
        read_all(a.paths + b.paths)


def test_rejects_two_slices_at_the_same_position(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    a = ct_series_write(folder=tmp_path, slices=3, study_uid=study_uid, series_uid=series_uid)
    b = ct_series_write(
        folder=tmp_path / "b", slices=1, z0=-97.5, study_uid=study_uid, series_uid=series_uid
    )
    with pytest.raises(DicomInputError, match="same slice position"):
        read_all(a.paths + b.paths)


def test_rejects_study_mixing_patients(tmp_path):
    study_uid = generate_uid()
    a = ct_series_write(folder=tmp_path / "a", slices=1, study_uid=study_uid)
    b = ct_series_write(folder=tmp_path / "b", slices=1, study_uid=study_uid, patient_id="X-2")
    with pytest.raises(DicomInputError, match="mixes patients"):
        read_all(a.paths + b.paths)


def test_accepts_bare_dataset_without_preamble(tmp_path):
    gen = ct_series_write(folder=tmp_path, slices=1, transfer_syntax=ImplicitVRLittleEndian)
    ds = ct_instance_read(path=gen.paths[0]).dataset
    bare = tmp_path / "bare"
    ds.preamble = None
    del ds.file_meta
    ds.save_as(bare, implicit_vr=True, little_endian=True)  # no preamble, no file meta
    assert bare.read_bytes()[128:132] != b"DICM"
    inst = ct_instance_read(path=bare)
    np.testing.assert_array_equal(inst.hu, gen.hu[0])


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("DICOMDIR", True),
        (".DS_Store", True),
        ("__MACOSX/a/._1.dcm", True),
        ("series/IM0001", False),
        ("x.dcm", False),
    ],
)
def test_export_clutter_is_ignored_but_images_are_not(name, ignored):
    assert ignored_file(name) is ignored
