"""Small synthetic studies for the pipeline's tests, the worker checks and benchmarks.

Chest-like HU slices (air, body at soft-tissue HU, two lungs near -850 HU) with one of a few
patterns so that classes differ, stored exactly as ingestion stores slices (int16 `.npy` on
media storage). Not a substitute for `cases/phantom.py`'s realistic phantoms; just enough for
lung masks, radiomics and retrieval to have something to work on, quickly.
"""

from __future__ import annotations

import io
import uuid

import numpy as np
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from cases.models import Diagnosis, Patient, ReferenceCase, Series, Slice, Study

PATTERNS = ("normal", "ground_glass", "consolidation", "reticulation")


def chest_slice(
    *, size: int = 64, pattern: str = "normal", seed: int = 0, lung_scale: float = 1.0
) -> np.ndarray:
    """One int16 HU slice (size, size). `lung_scale` < 1 shrinks the lungs (apex slices);
    0 gives a slice with no lung at all."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if lung_scale <= 0:
        # No lung: uniform soft tissue (an abdominal slice cropped to the body). Not a body
        # in air: the engine's lung mask currently counts outside air as lung when no lung
        # is present (see the pipeline report).
        return np.full((size, size), 40, np.int16)
    hu = np.full((size, size), -1000.0, np.float32)
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.36) ** 2 <= 1.0
    hu[body] = 40.0
    lungs = np.zeros_like(body)
    for cx in (0.3, 0.7):
        lungs |= ((xx - cx) / (0.14 * lung_scale)) ** 2 + (
            (yy - 0.5) / (0.26 * lung_scale)
        ) ** 2 <= 1.0
    hu[lungs] = -850.0
    if pattern == "ground_glass":
        hu[lungs & (yy > 0.5)] = -600.0
    elif pattern == "consolidation":
        for _ in range(3):
            cx, cy = rng.uniform(0.22, 0.78), rng.uniform(0.35, 0.65)
            blob = ((xx - cx) ** 2 + (yy - cy) ** 2) <= 0.004
            hu[lungs & blob] = 30.0
    elif pattern == "reticulation":
        # Faint lines: dense ones would merge the lungs with the body in the k-means mask.
        grid = ((np.round(xx * size) % 6) == 0) | ((np.round(yy * size) % 6) == 0)
        hu[lungs & grid] = -700.0
    hu += rng.normal(0.0, 15.0, size=hu.shape)
    return np.clip(hu, -1024, 3071).astype(np.int16)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.int16), allow_pickle=False)
    return buf.getvalue()


@transaction.atomic
def synthetic_study_create(
    *,
    uploaded_by,
    pattern: str = "normal",
    slices: int = 4,
    size: int = 64,
    seed: int = 0,
    empty_slices: int = 0,
    source: str = Study.Source.UPLOAD,
) -> Study:
    """A study with one series of `slices` lung slices (+ `empty_slices` without lung)."""
    tag = uuid.uuid4().hex[:16]
    patient = Patient.objects.create(pseudonym=uuid.uuid4().hex * 2, display_id=f"SYN-{tag[:10]}")
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"2.25.{int(tag, 16)}",
        description=f"synthetic {pattern}",
        uploaded_by=uploaded_by,
        source=source,
    )
    series = Series.objects.create(
        study=study,
        series_instance_uid=f"2.25.{int(tag, 16)}.1",
        series_number=1,
        rows=size,
        columns=size,
        slice_count=slices + empty_slices,
    )
    for i in range(slices + empty_slices):
        scale = 0.0 if i >= slices else 1.0
        hu = chest_slice(size=size, pattern=pattern, seed=seed * 1000 + i, lung_scale=scale)
        s = Slice(
            series=series,
            sop_instance_uid=f"2.25.{int(tag, 16)}.1.{i}",
            index=i,
            z_position=5.0 * i,
            hu_min=float(hu.min()),
            hu_max=float(hu.max()),
        )
        s.pixels.save(f"{i:04d}.npy", ContentFile(_npy(hu)), save=False)
        s.save()
    return study


def synthetic_reference_create(
    *,
    expert,
    approver,
    diagnosis: Diagnosis,
    pattern: str,
    slices: int = 3,
    size: int = 64,
    seed: int = 0,
) -> ReferenceCase:
    """An approved reference case (no index sync: call reference_case_sync yourself)."""
    study = synthetic_study_create(
        uploaded_by=expert,
        pattern=pattern,
        slices=slices,
        size=size,
        seed=seed,
        source=Study.Source.REFERENCE_IMPORT,
    )
    return ReferenceCase.objects.create(
        study=study,
        diagnosis=diagnosis,
        state=ReferenceCase.State.APPROVED,
        proposed_by=expert,
        approved_by=approver,
        decided_at=timezone.now(),
    )


# The three phantom patterns the scripts' reference libraries use, by diagnosis name.
LIBRARY_PATTERNS = {"Normal": "normal", "IPF-ILD": "reticulation", "ASS-ILD": "ground_glass"}


def synthetic_library_create(
    *, expert, approver, per_class: int, size: int, seed_base: int = 0
) -> list[ReferenceCase]:
    """`per_class` approved 3-slice reference cases of each pattern of `LIBRARY_PATTERNS`
    (seeds `seed_base + 10 * class + j`): the small library benchmarks and worker checks
    bootstrap a model on. No index sync."""
    cases = []
    for n, (name, pattern) in enumerate(LIBRARY_PATTERNS.items()):
        diagnosis = Diagnosis.objects.get(name=name)
        for j in range(per_class):
            cases.append(
                synthetic_reference_create(
                    expert=expert,
                    approver=approver,
                    diagnosis=diagnosis,
                    pattern=pattern,
                    slices=3,
                    size=size,
                    seed=seed_base + 10 * n + j,
                )
            )
    return cases
