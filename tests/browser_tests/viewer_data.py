"""A processed study with similar cases, written as the workers write them, for the viewer's
browser tests and benchmarks/viewer_bench.py: chest-like HU slices whose lungs grow and shrink
along the series (so positions within the lungs differ from index fractions), stored lung
fractions, a StudyResult with similar cases on other series lengths, and CAM overlays as RGBA
PNGs (transparent below the threshold), so every CAM URL answers 200.
"""

from __future__ import annotations

import io
import math

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone

from cases.models import Diagnosis, ReferenceCase, Slice, Study
from retrieval.models import ModelVersion, SimilarCase, StudyResult
from retrieval.pipeline.synthetic import chest_slice, synthetic_study_create


def lung_scale(i: int, n: int, *, first: int, last: int) -> float:
    """Lung size along the series: none outside [first, last], largest in the middle."""
    if i < first or i > last:
        return 0.0
    t = (i - first) / max(last - first, 1)
    return 0.35 + 0.65 * math.sin(math.pi * t)


def _series_fill(
    study: Study, *, first: int, last: int, size: int, seed: int, windowed: bool = False
) -> None:
    """Rewrite the study's slices with lungs from `first` to `last` and store lung fractions;
    `windowed`: as 8-bit grey (lung window), like a 2-D reference imported from PNG."""
    slices = list(study.series.get().slices.order_by("index"))
    n = len(slices)
    for s in slices:
        scale = lung_scale(s.index, n, first=first, last=last)
        hu = chest_slice(size=size, seed=seed * 1000 + s.index, lung_scale=scale)
        if scale <= 0:  # body without lungs (not plain tissue): the outline must find none
            body = chest_slice(size=size, seed=seed, lung_scale=1.0)
            hu = np.where(body > -900, 40, -1000).astype(np.int16)
        stored = hu
        if windowed:
            grey = (hu.astype(np.float32) + 1350.0) / 1500.0 * 255.0
            stored = np.clip(np.round(grey), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        np.save(buf, stored, allow_pickle=False)
        default_storage.delete(s.pixels.name)
        s.pixels.save(f"{s.index:04d}.npy", ContentFile(buf.getvalue()), save=False)
        s.lung_fraction = float((hu < -400).mean()) if scale > 0 else 0.0
        s.hu_min, s.hu_max = float(stored.min()), float(stored.max())
        s.is_windowed = windowed
        s.save()
    series = study.series.get()
    series.pixel_spacing_row = series.pixel_spacing_col = 0.7
    series.slice_thickness = 1.0
    series.rows = series.columns = size
    series.save()


def cam_png(size: int, *, cx: float, cy: float) -> bytes:
    """An RGBA overlay: a warm blob, transparent where the heat is below 0.3."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size] / size
    heat = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / 0.01))
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 1] = (180 * heat).astype(np.uint8)
    rgba[..., 3] = np.where(heat >= 0.3, 80 + 175 * heat, 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    return buf.getvalue()


def viewer_case_create(
    *,
    clinician,
    expert,
    query_slices: int = 40,
    reference_slices: tuple[int, ...] = (30, 52),
    size: int = 128,
    windowed_ranks: tuple[int, ...] = (),
) -> dict:
    """The query study of `clinician` (ready for review) and one approved reference case per
    entry of `reference_slices` (8-bit grey for the ranks in `windowed_ranks`); returns the
    ids the tests need."""
    version = ModelVersion.objects.create(
        name="viewer", artefact_dir="unused", backbone="test", is_active=True
    )
    query = synthetic_study_create(uploaded_by=clinician, slices=query_slices, size=size, seed=1)
    q_first, q_last = 5, query_slices - 6
    _series_fill(query, first=q_first, last=q_last, size=size, seed=1)
    q_ids = list(
        Slice.objects.filter(series__study=query).order_by("index").values_list("pk", flat=True)
    )
    diagnoses = list(Diagnosis.objects.order_by("pk")[: len(reference_slices)])
    # The matched pair of each result: the query's slice at 40 % of its lungs and the
    # reference's slice at the same place in its own lungs.
    q_match = q_first + round(0.4 * (q_last - q_first))
    result = StudyResult.objects.create(
        study=query,
        model_version=version,
        suggested_diagnosis=diagnoses[0],
        votes={diagnoses[0].code: 1.0},
        key_slice_id=q_ids[q_match],
        query_slice_count=query_slices,
    )
    refs = []
    for rank, (n, dx) in enumerate(zip(reference_slices, diagnoses, strict=False), start=1):
        study = synthetic_study_create(
            uploaded_by=expert,
            slices=n,
            size=size,
            seed=10 + rank,
            source=Study.Source.REFERENCE_IMPORT,
        )
        first, last = 2, n - 3
        _series_fill(
            study,
            first=first,
            last=last,
            size=size,
            seed=10 + rank,
            windowed=rank in windowed_ranks,
        )
        rc = ReferenceCase.objects.create(
            study=study,
            diagnosis=dx,
            state=ReferenceCase.State.APPROVED,
            proposed_by=expert,
            approved_by=expert,
            decided_at=timezone.now(),
        )
        r_ids = list(
            Slice.objects.filter(series__study=study).order_by("index").values_list("pk", flat=True)
        )
        r_match = first + round(0.4 * (last - first))
        case = SimilarCase.objects.create(
            result=result,
            rank=rank,
            reference_case=rc,
            score=0.95 - 0.05 * rank,
            n_hits=3,
            query_slice_id=q_ids[q_match],
            reference_slice_id=r_ids[r_match],
        )
        names = {
            side: default_storage.save(
                f"results/{query.pk}/{version.pk}/rank{rank:02d}-{side}.png",
                ContentFile(cam_png(size, cx=0.3 if side == "query" else 0.7, cy=0.5)),
            )
            for side in ("query", "reference")
        }
        SimilarCase.objects.filter(pk=case.pk).update(
            query_cam=names["query"], reference_cam=names["reference"]
        )
        refs.append({"rank": rank, "slices": r_ids, "match": r_match, "first": first, "last": last})
    Study.objects.filter(pk=query.pk).update(status=Study.Status.READY_FOR_REVIEW)
    return {
        "study": query.pk,
        "query_slices": q_ids,
        "query_match": q_match,
        "query_lungs": (q_first, q_last),
        "references": refs,
    }
