"""Real public chest CT for the demo library and the evaluation (free of Django).

The data lives outside the project (`ILDREVIEW_REAL_DATA`, default `../shared/datasets`):
- `covid-ct-md/`: 6 low-dose CT series, COVID-19 (P001, P002), community-acquired pneumonia
  (cap001, cap002) and normal lungs (normal001, normal002); JPEG-Lossless DICOM, real HU;
- `lung-pet-ct-dx/`: 2 adenocarcinoma studies (Lung_Dx-A0001, A0002), uncompressed DICOM.
Each has a `manifest.csv` (path,label,patient_id) naming one series folder per patient.

UID repair. Three COVID-CT-MD series (P002, cap002, normal002) were anonymised by their authors
with an empty SOPInstanceUID and UUID strings as Study/Series Instance UID. The upload path
refuses such files (PS3.5 §9.1: a UID is digits and dots), as it should for any upload.
`series_uids_repair` writes copies of such a series where only those identifiers change, each
in the standard way: a UUID becomes the UID `2.25.<its 128-bit integer>` (PS3.5 B.2), any other
invalid or empty UID a deterministic `2.25.` UID derived from it (an empty SOPInstanceUID from
the series and the file's content). Pixel data (JPEG Lossless) and every other attribute are
copied unchanged; the copies then take the normal import path like any upload (reading,
decoding, de-identification).
"""

from __future__ import annotations

import csv
import hashlib
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom

from cases.dicom.reading import ignored_file, uid_problem
from cases.uids import deterministic_uid

COVID_CT_MD = "covid-ct-md"
LUNG_PET_CT_DX = "lung-pet-ct-dx"
REAL_DATASETS = (COVID_CT_MD, LUNG_PET_CT_DX)
MANIFEST_NAME = "manifest.csv"
# (code, manifest label = diagnosis name, description) of the real demo library's classes that
# the seeded taxonomy lacks ("Normal" is seeded by the migrations).
REAL_DIAGNOSES: tuple[tuple[str, str, str], ...] = (
    ("covid-19", "COVID-19", "COVID-19 pneumonia"),
    ("cap", "CAP", "Community-acquired pneumonia"),
    ("adenocarcinoma", "Adenocarcinoma", "Lung adenocarcinoma"),
)
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class RealDataError(Exception):
    """The real datasets are absent or unusable; the message says which and where."""


@dataclass(frozen=True)
class RealCase:
    """One study of the real demo library: a series folder (absolute), label, patient id."""

    path: Path
    label: str
    patient_id: str
    dataset: str
    name: str  # the series folder as the dataset's manifest names it
    repaired: bool = False


def real_library_present(data_root: Path) -> bool:
    """Whether the real demo library can be built: COVID-CT-MD's manifest (3 classes) exists."""
    return (Path(data_root) / COVID_CT_MD / MANIFEST_NAME).is_file()


def uid_repaired(value: str, *, salt: str = "") -> str:
    """`value` when it is a valid UID; a UUID string as `2.25.<integer>` (PS3.5 B.2); any
    other value (or an empty one, with `salt` saying whose) as a deterministic `2.25.` UID."""
    value = str(value or "").rstrip("\x00").strip()
    if value and uid_problem(value) is None:
        return value
    try:
        return f"2.25.{uuid.UUID(value).int}"
    except ValueError:
        return deterministic_uid("ildreview-uid-repair", value, salt)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not ignored_file(p.name))


def _quiet(function):
    """Run `function` without pydicom's warnings and log lines about each invalid UID (what
    is repaired; pydicom converts values lazily, so the whole use of a dataset is covered)."""

    def wrapped(*args, **kwargs):
        mode = pydicom.config.settings.reading_validation_mode
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return function(*args, **kwargs)
        finally:
            pydicom.config.settings.reading_validation_mode = mode

    wrapped.__name__, wrapped.__doc__ = function.__name__, function.__doc__
    return wrapped


def _dcmread(path: Path, **kwargs) -> pydicom.Dataset:
    return pydicom.dcmread(path, **kwargs)


@_quiet
def series_needs_repair(folder: Path) -> bool:
    """Whether any file of the series folder has an invalid or empty Study/Series/SOP UID."""
    for path in _dicom_files(folder):
        ds = _dcmread(path, stop_before_pixels=True, specific_tags=list(_UID_KEYWORDS))
        for keyword in _UID_KEYWORDS:
            if uid_problem(str(ds.get(keyword, "") or "").rstrip("\x00")) is not None:
                return True
    return False


@_quiet
def series_uids_repair(*, folder: Path, out: Path) -> int:
    """Write every file of `folder` into `out` with its UIDs repaired (`uid_repaired`; see the
    module docstring); returns how many files had a UID changed. Idempotent: an existing copy
    is rewritten with the same content."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    changed = 0
    for path in _dicom_files(folder):
        ds = _dcmread(path)
        before = [str(ds.get(k, "") or "") for k in _UID_KEYWORDS]
        study = uid_repaired(before[0], salt="study")
        series = uid_repaired(before[1], salt=f"series {study}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sop = uid_repaired(before[2], salt=f"sop {series} {digest}")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        if ds.file_meta is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = sop
        changed += [study, series, sop] != before
        ds.save_as(out / path.name, enforce_file_format=True)
    return changed


def _manifest_rows(dataset_dir: Path) -> list[dict]:
    with open(dataset_dir / MANIFEST_NAME, newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh))


@_quiet
def real_library_cases(*, data_root: Path, work_dir: Path) -> list[RealCase]:
    """The real demo library's studies: every row of the COVID-CT-MD manifest and, when present,
    of the Lung-PET-CT-Dx manifest whose folder exists. Series with invalid UIDs are repaired
    into `work_dir/<dataset>/<path>` (their `path` points there). The patient id is the series'
    own DICOM PatientID, so that the import files each study under the patient it names.
    RealDataError when COVID-CT-MD is absent."""
    data_root = Path(data_root)
    if not real_library_present(data_root):
        raise RealDataError(
            f"no real data: {data_root / COVID_CT_MD / MANIFEST_NAME} is missing "
            "(set ILDREVIEW_REAL_DATA to the folder holding covid-ct-md/)"
        )
    cases = []
    for dataset in REAL_DATASETS:
        dataset_dir = data_root / dataset
        if not (dataset_dir / MANIFEST_NAME).is_file():
            continue
        for row in _manifest_rows(dataset_dir):
            folder = dataset_dir / row["path"]
            files = _dicom_files(folder) if folder.is_dir() else []
            if not files:
                continue
            repaired = series_needs_repair(folder)
            if repaired:
                target = Path(work_dir) / dataset / row["path"]
                series_uids_repair(folder=folder, out=target)
                folder = target
            first = _dcmread(files[0], stop_before_pixels=True, specific_tags=["PatientID"])
            patient_id = str(first.get("PatientID", "") or "").strip() or row["patient_id"]
            cases.append(
                RealCase(
                    path=folder.resolve(),
                    label=row["label"].strip(),
                    patient_id=patient_id,
                    dataset=dataset,
                    name=row["path"],
                    repaired=repaired,
                )
            )
    return cases


def real_demo_manifest_write(*, data_root: Path, outdir: Path) -> list[RealCase]:
    """Write `outdir/manifest.csv` (absolute series folders, the import's format) of the real
    demo library (`real_library_cases`, repairs under `outdir/repaired`); returns the cases."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cases = real_library_cases(data_root=data_root, work_dir=outdir / "repaired")
    with open(outdir / MANIFEST_NAME, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id"])
        for case in cases:
            writer.writerow([str(case.path), case.label, case.patient_id])
    return cases
