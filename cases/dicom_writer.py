"""Writing CT series as real DICOM files (free of Django; used by `make_demo_data` and tests).

Each slice becomes one CT Image Storage instance (Explicit VR Little Endian, a proper file
meta header) with the attributes readers and the ingestion service rely on: patient, study and
series identification, frame of reference, ImagePositionPatient / ImageOrientationPatient
(axial), PixelSpacing, SliceThickness, RescaleSlope 1 / RescaleIntercept -1024 and 16-bit
stored pixels (unsigned by default, signed on request).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from cases.uids import deterministic_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
RESCALE_INTERCEPT = -1024.0


@dataclass
class WrittenSeries:
    """What `write_ct_series` wrote: the files (slice order) and the UIDs it used."""

    paths: list[Path]
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    z_positions: list[float]


def write_ct_series(
    *,
    volume_hu: np.ndarray,
    folder: Path,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    spacing: tuple[float, float] = (0.7, 0.7),
    thickness: float = 1.0,
    slice_spacing: float | None = None,
    patient_name: str = "",
    patient_sex: str = "",
    patient_birth_date: str = "",
    sop_uids: Sequence[str] | None = None,
    frame_of_reference_uid: str | None = None,
    study_date: dt.date | None = None,
    study_description: str = "CT CHEST",
    series_description: str = "",
    series_number: int = 1,
    convolution_kernel: str = "",
    top_z: float = 0.0,
    signed: bool = False,
    filename_pattern: str = "IM{number:04d}.dcm",
) -> WrittenSeries:
    """Write `volume_hu` (slices, rows, cols; Hounsfield units) as one DICOM CT series.

    Slice k lies at z = `top_z` - k * `slice_spacing` (head first: slice 0 is the most
    superior) and gets InstanceNumber k + 1. Stored value = HU - `RESCALE_INTERCEPT`, as uint16
    (PixelRepresentation 0) or int16 when `signed`; values that do not fit raise ValueError.
    SOPInstanceUIDs default to ones derived from the series UID. `folder` is created.
    """
    volume = np.asarray(volume_hu)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3 or volume.shape[0] == 0:
        raise ValueError(f"volume_hu must be (slices, rows, cols), got shape {volume.shape}")
    n, rows, cols = volume.shape
    stored = np.rint(volume.astype(np.float64) - RESCALE_INTERCEPT)
    low, high = (-32768, 32767) if signed else (0, 65535)
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"HU range {volume.min()}..{volume.max()} does not fit "
            f"{'int16' if signed else 'uint16'} with intercept {RESCALE_INTERCEPT:g}"
        )
    stored = stored.astype(np.int16 if signed else np.uint16)
    if sop_uids is None:
        sop_uids = [deterministic_uid(series_uid, "instance", str(k)) for k in range(n)]
    if len(sop_uids) != n:
        raise ValueError(f"{len(sop_uids)} SOP Instance UIDs for {n} slices")
    step = float(slice_spacing if slice_spacing is not None else thickness)
    for_uid = frame_of_reference_uid or deterministic_uid(study_uid, "frame-of-reference")
    date = (study_date or dt.date(2024, 1, 15)).strftime("%Y%m%d")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    paths, zs = [], []
    for k in range(n):
        z = float(top_z) - k * step
        ds = _ct_dataset(sop_uid=sop_uids[k])
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date
        ds.PatientSex = patient_sex
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.SeriesNumber = series_number
        ds.InstanceNumber = k + 1
        ds.ConvolutionKernel = convolution_kernel
        ds.SliceThickness = f"{thickness:g}"
        if slice_spacing is not None:
            ds.SpacingBetweenSlices = f"{step:g}"
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.ImageOrientationPatient = [f"{v:g}" for v in AXIAL]
        # Centre the image on the patient axis in x/y (mm).
        ds.ImagePositionPatient = [
            f"{-spacing[1] * (cols - 1) / 2:.4f}",
            f"{-spacing[0] * (rows - 1) / 2:.4f}",
            f"{z:.4f}",
        ]
        ds.SliceLocation = f"{z:.4f}"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        path = folder / filename_pattern.format(number=k + 1, index=k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        zs.append(z)
    return WrittenSeries(
        paths=paths,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uids=list(sop_uids),
        z_positions=zs,
    )


def _ct_dataset(*, sop_uid: str) -> Dataset:
    """A CT Image Storage dataset with the fixed attributes of every synthetic slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = "CT"
    ds.Manufacturer = "ildreview synthetic phantom"
    ds.ManufacturerModelName = "cases.phantom"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    return ds
