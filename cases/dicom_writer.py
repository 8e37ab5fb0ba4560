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
        ds = ct_image_dataset(
            stored=stored[k],
            sop_uid=sop_uids[k],
            study_uid=study_uid,
            series_uid=series_uid,
            series_number=series_number,
            instance_number=k + 1,
            # Centre the image on the patient axis in x/y (mm).
            position=[
                f"{-spacing[1] * (cols - 1) / 2:.4f}",
                f"{-spacing[0] * (rows - 1) / 2:.4f}",
                f"{z:.4f}",
            ],
            orientation=[f"{v:g}" for v in AXIAL],
            spacing=[f"{spacing[0]:g}", f"{spacing[1]:g}"],
            thickness=f"{thickness:g}",
            intercept=f"{RESCALE_INTERCEPT:g}",
            slope="1",
        )
        _synthetic_ct_attributes(ds)
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = patient_birth_date
        ds.PatientSex = patient_sex
        ds.FrameOfReferenceUID = for_uid
        ds.PositionReferenceIndicator = ""
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "101500"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = study_description
        ds.SeriesDescription = series_description
        ds.ConvolutionKernel = convolution_kernel
        if slice_spacing is not None:
            ds.SpacingBetweenSlices = f"{step:g}"
        ds.SliceLocation = f"{z:.4f}"
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


def ct_image_dataset(
    *,
    stored: np.ndarray,
    sop_uid: str,
    study_uid: str,
    series_uid: str,
    series_number: int,
    instance_number: int,
    position: Sequence[float | str],
    orientation: Sequence[float | str],
    spacing: Sequence[float | str],
    thickness: float | str,
    intercept: float | str,
    slope: float | str,
    sop_class_uid: str = CTImageStorage,
    modality: str = "CT",
) -> Dataset:
    """One image instance with its file meta (Explicit VR Little Endian): SOP common,
    identification, plane geometry and a 16-bit MONOCHROME2 pixel module holding `stored`
    (2-D uint16 or int16, the values before rescale). Values are set as given, so a caller
    chooses how decimal strings are written. The one place a synthetic slice is built: the
    series writer here and the tests' hostile-file generator start from it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Modality = modality
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = list(orientation)
    ds.PixelSpacing = list(spacing)
    ds.SliceThickness = thickness
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept = intercept
    ds.RescaleSlope = slope
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _synthetic_ct_attributes(ds: Dataset) -> None:
    """The fixed equipment and display attributes of every slice of the demo phantom."""
    ds.Manufacturer = "ildreview synthetic phantom"
    ds.ManufacturerModelName = "cases.phantom"
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.KVP = "120"
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
