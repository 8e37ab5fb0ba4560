"""Synthetic demo reference library: phantom chest CT studies as DICOM plus a manifest
(free of Django; `manage.py make_demo_data` is the command around it).

Four pattern classes (normal, ground-glass, reticulation/honeycombing, consolidation), some
patients each; every patient is one study with one axial series of `slices` images spread from
apex to base (a sequential HRCT-like protocol: thin slices at wide intervals). Everything is
deterministic in the seed: pixels, UIDs, names, the split.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cases.dicom_writer import write_ct_series
from cases.phantom import chest_phantom
from cases.uids import deterministic_uid

# (phantom pattern, manifest label, patient-id code) of the demo taxonomy.
DEMO_CLASSES: tuple[tuple[str, str, str], ...] = (
    ("normal", "Normal", "NORM"),
    ("ground_glass", "Ground-glass", "GGO"),
    ("reticulation", "Reticulation/honeycombing", "RETIC"),
    ("consolidation", "Consolidation", "CONS"),
)
MANIFEST_NAME = "manifest.csv"
FIELD_OF_VIEW_MM = 360.0
CRANIOCAUDAL_MM = 260.0


@dataclass
class DemoCase:
    """One written demo study: its manifest row and where/what was written."""

    path: str  # series folder relative to the manifest
    label: str
    patient_id: str
    split: str
    pattern: str
    study_uid: str
    series_uid: str
    files: int


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def demo_dataset_write(
    *,
    outdir: Path,
    patients_per_class: int = 3,
    slices: int = 12,
    size: int = 512,
    seed: int = 0,
    progress=None,
) -> list[DemoCase]:
    """Write the demo studies under `outdir` (one folder per patient series) and
    `outdir/manifest.csv` (path,label,patient_id,split); returns the cases in manifest order.

    About a third of each class's patients (at least one when there are two or more) go to the
    test split, the rest to train. `progress(done, total)` is called after each study.
    """
    if patients_per_class < 1 or slices < 1:
        raise ValueError("patients_per_class and slices must be at least 1")
    if size < 32:
        raise ValueError(f"size must be at least 32, got {size}")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n_test = 0 if patients_per_class < 2 else max(1, round(patients_per_class / 3))
    spacing = FIELD_OF_VIEW_MM / size
    step = CRANIOCAUDAL_MM / max(slices - 1, 1)
    z_levels = np.linspace(-0.9, 0.9, slices) if slices > 1 else np.array([0.0])
    cases: list[DemoCase] = []
    total = len(DEMO_CLASSES) * patients_per_class
    for ci, (pattern, label, code) in enumerate(DEMO_CLASSES):
        for p in range(patients_per_class):
            number = p + 1
            patient_id = f"DEMO-{code}-{number:02d}"
            anatomy = _seed(seed, ci, p)
            volume = np.stack(
                [
                    chest_phantom(
                        size=size,
                        pattern=pattern,
                        seed=_seed(seed, ci, p, k + 1),
                        anatomy_seed=anatomy,
                        z=float(zk),
                    )[0]
                    for k, zk in enumerate(z_levels)
                ]
            )
            # Size and slice count are part of the UIDs: a different rendering is a new study.
            key = ("ildreview-demo", str(seed), f"{size}x{slices}", patient_id)
            study_uid = deterministic_uid(*key, "study")
            series_uid = deterministic_uid(*key, "series")
            rel = f"{pattern}/{patient_id}"
            written = write_ct_series(
                volume_hu=volume,
                folder=outdir / rel,
                patient_id=patient_id,
                patient_name=f"PHANTOM^{pattern.upper()}{number:02d}",
                patient_sex="F" if (ci + p) % 2 else "M",
                patient_birth_date=f"{1945 + (anatomy % 35)}0101",
                study_uid=study_uid,
                series_uid=series_uid,
                spacing=(spacing, spacing),
                thickness=1.0,
                slice_spacing=step,
                top_z=CRANIOCAUDAL_MM / 2,
                study_date=dt.date(2024, 1, 1) + dt.timedelta(days=int(anatomy % 365)),
                study_description="CT CHEST HRCT (synthetic demo)",
                series_description="HRCT Lung 1.0 B70f",
                convolution_kernel="B70f",
            )
            split = "test" if p >= patients_per_class - n_test else "train"
            cases.append(
                DemoCase(
                    path=rel,
                    label=label,
                    patient_id=patient_id,
                    split=split,
                    pattern=pattern,
                    study_uid=study_uid,
                    series_uid=series_uid,
                    files=len(written.paths),
                )
            )
            if progress is not None:
                progress(len(cases), total)
    with open(outdir / MANIFEST_NAME, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "split"])
        for case in cases:
            writer.writerow([case.path, case.label, case.patient_id, case.split])
    return cases
