"""Read CT DICOM instances, convert them to Hounsfield units, group and order them.

Django-free: paths in, dataclasses with numpy arrays out. Every refusal raises
`DicomInputError(filename, reason)`.

Ordering: slices are sorted by ImagePositionPatient projected on the slice normal (the cross
product of the two ImageOrientationPatient direction cosines), which is correct for any
orientation and does not trust InstanceNumber.
"""

from __future__ import annotations

import datetime as dt
import struct
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pydicom
from pydicom import pixels
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder

from cases.dicom import DicomInputError

# Files that commonly travel with DICOM exports but are not images: skipped, not refused.
IGNORED_NAMES = {"dicomdir", "thumbs.db", "desktop.ini", "readme", "readme.txt", "license"}
IGNORED_DIRS = {"__macosx"}

# Tolerances for geometry checks (mm, and unitless for direction cosines).
ORIENTATION_TOLERANCE = 1e-3
SPACING_TOLERANCE = 1e-3
POSITION_TOLERANCE = 1e-3

REQUIRED_ATTRIBUTES = (
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Rows",
    "Columns",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)


@dataclass
class CtInstance:
    """One decoded CT image. `dataset` still holds the raw (possibly compressed) PixelData so
    a de-identified copy can be written without re-encoding; `hu` is the decoded image."""

    name: str
    dataset: Dataset
    study_uid: str
    series_uid: str
    sop_uid: str
    rows: int
    columns: int
    orientation: np.ndarray
    position: np.ndarray
    pixel_spacing: tuple[float, float]
    instance_number: int | None
    hu: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])


@dataclass
class CtSeries:
    """The instances of one SeriesInstanceUID, ordered along the slice normal."""

    series_uid: str
    series_number: int | None
    description: str
    convolution_kernel: str
    slice_thickness: float | None
    pixel_spacing: tuple[float, float]
    rows: int
    columns: int
    instances: list[CtInstance]
    # Position of each instance along the slice normal (mm), same order as `instances`.
    z_positions: list[float]


@dataclass
class CtStudy:
    """The series of one StudyInstanceUID plus the patient attributes needed before
    de-identification (the raw PatientID only ever leaves this object hashed)."""

    study_uid: str
    study_date: dt.date | None
    description: str
    patient_id: str
    patient_sex: str
    patient_birth_year: int | None
    series: list[CtSeries] = field(default_factory=list)

    @property
    def slice_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def ignored_file(name: str) -> bool:
    """Whether a file travelling with DICOM exports (hidden files, DICOMDIR, macOS resource
    forks, read-me files) should be skipped rather than refused as non-DICOM."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts:
        return True
    base = parts[-1]
    return (
        base.startswith(".")
        or base.lower() in IGNORED_NAMES
        or any(p.lower() in IGNORED_DIRS for p in parts[:-1])
    )


def hu_from_stored(*, stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Hounsfield units (int16) = stored * RescaleSlope + RescaleIntercept, rounded and
    clipped to int16 (CT values beyond that range carry no meaning for lung review)."""
    if slope == 1.0 and float(intercept).is_integer():
        # Exact integer path: the common case, and twice as fast as going through floats.
        hu = stored.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(stored.astype(np.float64) * slope + intercept)
    return np.clip(hu, -32768, 32767).astype(np.int16)


def _dcmread(path: Path, name: str) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except (EOFError, OSError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise DicomInputError(name, f"truncated or corrupt DICOM file ({exc})") from exc
    # No 128-byte preamble and "DICM" prefix: older exports write the bare dataset. Accept it
    # only if it parses and carries a SOP Instance UID; random bytes do not.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=True)
            sop = str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - any parse failure of a forced read means "not DICOM"
        sop = ""
    if not sop or not all(c.isdigit() or c == "." for c in sop):
        raise DicomInputError(name, "not a DICOM file")
    return ds


def _floats(ds: Dataset, keyword: str, count: int, name: str) -> np.ndarray:
    try:
        values = np.array([float(v) for v in ds[keyword].value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomInputError(name, f"invalid {keyword} ({exc})") from exc
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise DicomInputError(name, f"invalid {keyword}: expected {count} numbers")
    return values


def _decode(ds: Dataset, name: str) -> np.ndarray:
    meta = getattr(ds, "file_meta", None)
    tsyntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsyntax is None:
        # Bare dataset read with force=True: pydicom worked out the encoding while reading.
        tsyntax = (
            pydicom.uid.ImplicitVRLittleEndian
            if ds.original_encoding[0]
            else pydicom.uid.ExplicitVRLittleEndian
        )
        if meta is None:
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = tsyntax
    tsyntax = pydicom.uid.UID(str(tsyntax))
    label = f"{tsyntax.name} ({tsyntax})" if tsyntax.name != str(tsyntax) else str(tsyntax)
    try:
        available = get_decoder(tsyntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise DicomInputError(
            name, f"cannot decode pixel data: transfer syntax {label} has no installed decoder"
        )
    try:
        return pixels.pixel_array(ds)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types on corrupt data
        raise DicomInputError(
            name, f"cannot decode pixel data ({label}): truncated or corrupt ({exc})"
        ) from exc


def ct_instance_read(*, path: Path, name: str | None = None) -> CtInstance:
    """Parse one file, check it is a single-frame greyscale CT image, decode it to HU.

    `name` is how the file is called in error messages (defaults to the path).
    """
    name = name or str(path)
    ds = _dcmread(path, name)
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        missing_uids = [k for k in ("SOPInstanceUID", "Modality") if k not in ds]
        if missing_uids:
            raise DicomInputError(
                name, f"truncated or incomplete DICOM file (no {', '.join(missing_uids)})"
            )
        raise DicomInputError(name, "no pixel data (not an image)")
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        raise DicomInputError(name, f"modality {modality or 'missing'} is not CT")
    missing = [k for k in REQUIRED_ATTRIBUTES if ds.get(k) in (None, "")]
    if missing:
        raise DicomInputError(name, f"missing required attribute(s): {', '.join(missing)}")
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise DicomInputError(name, "multi-frame images are not supported")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomInputError(name, "not a greyscale image (SamplesPerPixel != 1)")

    stored = _decode(ds, name)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if stored.shape != (rows, columns):
        raise DicomInputError(
            name, f"pixel data shape {stored.shape} does not match Rows x Columns"
        )
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError) as exc:
        raise DicomInputError(name, f"invalid RescaleSlope/RescaleIntercept ({exc})") from exc
    orientation = _floats(ds, "ImageOrientationPatient", 6, name)
    if np.linalg.norm(np.cross(orientation[:3], orientation[3:])) < 0.5:
        raise DicomInputError(name, "invalid ImageOrientationPatient (degenerate directions)")
    spacing = _floats(ds, "PixelSpacing", 2, name)
    if np.any(spacing <= 0):
        raise DicomInputError(name, "invalid PixelSpacing (must be positive)")
    number = ds.get("InstanceNumber")
    return CtInstance(
        name=name,
        dataset=ds,
        study_uid=str(ds.StudyInstanceUID),
        series_uid=str(ds.SeriesInstanceUID),
        sop_uid=str(ds.SOPInstanceUID),
        rows=rows,
        columns=columns,
        orientation=orientation,
        position=_floats(ds, "ImagePositionPatient", 3, name),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        instance_number=int(number) if number not in (None, "") else None,
        hu=hu_from_stored(stored=stored, slope=slope, intercept=intercept),
    )


def _geometry_check(instances: list[CtInstance]) -> None:
    """All slices of a series share Rows/Columns, orientation and pixel spacing."""
    first = instances[0]
    for inst in instances[1:]:
        if (inst.rows, inst.columns) != (first.rows, first.columns):
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: {inst.rows}x{inst.columns}"
                f" pixels but {first.name} has {first.rows}x{first.columns}",
            )
        if np.max(np.abs(inst.orientation - first.orientation)) > ORIENTATION_TOLERANCE:
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: ImageOrientationPatient "
                f"differs from {first.name}",
            )
        spacing_diff = np.abs(np.subtract(inst.pixel_spacing, first.pixel_spacing))
        if spacing_diff.max() > SPACING_TOLERANCE:
            raise DicomInputError(
                inst.name,
                f"inconsistent geometry in series {inst.series_uid}: PixelSpacing "
                f"{inst.pixel_spacing} differs from {first.pixel_spacing} in {first.name}",
            )


def _series_build(instances: list[CtInstance]) -> CtSeries:
    _geometry_check(instances)
    normal = instances[0].normal
    z = np.array([float(np.dot(inst.position, normal)) for inst in instances])
    order = np.argsort(z, kind="stable")
    ordered = [instances[i] for i in order]
    z_sorted = z[order]
    for k in range(1, len(ordered)):
        if z_sorted[k] - z_sorted[k - 1] < POSITION_TOLERANCE:
            raise DicomInputError(
                ordered[k].name,
                f"inconsistent geometry in series {ordered[k].series_uid}: same slice position "
                f"({z_sorted[k]:.3f} mm along the normal) as {ordered[k - 1].name}",
            )
    ds = ordered[0].dataset
    thickness = ds.get("SliceThickness")
    number = ds.get("SeriesNumber")
    kernel = ds.get("ConvolutionKernel", "") or ""
    if isinstance(kernel, pydicom.multival.MultiValue):
        kernel = "\\".join(str(k) for k in kernel)
    return CtSeries(
        series_uid=ordered[0].series_uid,
        series_number=int(number) if number not in (None, "") else None,
        description=str(ds.get("SeriesDescription", "") or "")[:255],
        convolution_kernel=str(kernel)[:64],
        slice_thickness=float(thickness) if thickness not in (None, "") else None,
        pixel_spacing=ordered[0].pixel_spacing,
        rows=ordered[0].rows,
        columns=ordered[0].columns,
        instances=ordered,
        z_positions=[float(v) for v in z_sorted],
    )


def _date(value) -> dt.date | None:
    text = str(value or "").strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _birth_year(value) -> int | None:
    text = str(value or "").strip()
    if len(text) >= 4 and text[:4].isdigit() and 1850 <= int(text[:4]) <= 2200:
        return int(text[:4])
    return None


def ct_studies_group(*, instances: list[CtInstance]) -> list[CtStudy]:
    """Group instances by StudyInstanceUID and SeriesInstanceUID, order each series along its
    normal and check its geometry. The same SOP Instance UID twice (the same file given twice)
    is kept once; a study whose files name different patients is refused."""
    seen: dict[str, CtInstance] = {}
    by_study: dict[str, dict[str, list[CtInstance]]] = defaultdict(lambda: defaultdict(list))
    for inst in instances:
        if inst.sop_uid in seen:
            other = seen[inst.sop_uid]
            if other.series_uid != inst.series_uid or not np.array_equal(other.hu, inst.hu):
                raise DicomInputError(
                    inst.name, f"SOPInstanceUID {inst.sop_uid} also used by {other.name}"
                )
            continue
        seen[inst.sop_uid] = inst
        by_study[inst.study_uid][inst.series_uid].append(inst)

    studies = []
    for study_uid, series_map in by_study.items():
        series = [_series_build(members) for members in series_map.values()]
        series.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
        first = series[0].instances[0]
        patient_id = str(first.dataset.get("PatientID", "") or "")
        for s in series:
            for inst in s.instances:
                if str(inst.dataset.get("PatientID", "") or "") != patient_id:
                    raise DicomInputError(
                        inst.name,
                        f"study {study_uid} mixes patients: PatientID differs from {first.name}",
                    )
        ds = first.dataset
        sex = str(ds.get("PatientSex", "") or "").upper()
        studies.append(
            CtStudy(
                study_uid=study_uid,
                study_date=_date(ds.get("StudyDate")),
                description=str(ds.get("StudyDescription", "") or "")[:255],
                patient_id=patient_id,
                patient_sex=sex if sex in ("M", "F", "O") else "",
                patient_birth_year=_birth_year(ds.get("PatientBirthDate")),
                series=series,
            )
        )
    return studies
