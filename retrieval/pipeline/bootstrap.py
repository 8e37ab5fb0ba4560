"""Training a first head-only model on the approved reference library.

The engine's recipe (`retrieval.engine.recipe.train_retrieval_model`) with the library's
settings: frozen backbone (`ILDREVIEW_BACKBONE`, weights `ILDREVIEW_BOOTSTRAP_WEIGHTS`), deep
features and radiomics of every usable slice of the approved cases (at most
`MAX_SLICES_PER_CASE` per case, evenly spread, so one long CT does not outweigh the rest),
the recipe's configuration in `library_recipe_config`; saved as an engine artefact folder.
Admin training runs (`training.py`) use `artefact_train`; the bootstrap
(`reference.model_version_bootstrap`) goes through the held-out gate
(`retrieval.pipeline.gate.library_train_gated`) with the same configuration.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from django.conf import settings

from cases.models import ReferenceCase, Slice
from retrieval.pipeline.runtime import slice_prepare

MAX_SLICES_PER_CASE = 16


def library_prepare(
    *,
    cases: list[ReferenceCase],
    size: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list, list[int], list[str], list[int]]:
    """Usable prepared slices of `cases` (at most MAX_SLICES_PER_CASE per case, evenly
    spread): (prepared, label indices, class names = sorted diagnosis codes, case pk of each)."""
    prepared, labels, case_ids = [], [], []
    class_names = sorted({rc.diagnosis.code for rc in cases})
    for n, rc in enumerate(cases):
        usable = []
        for s in Slice.objects.filter(series__study_id=rc.study_id).order_by("series_id", "index"):
            p = slice_prepare(slice_obj=s, size=size, fov_mm=settings.ILDREVIEW_FOV_MM)
            if p.lung_fraction >= settings.ILDREVIEW_MIN_LUNG_FRACTION:
                usable.append(p)
        if len(usable) > MAX_SLICES_PER_CASE:
            pick = np.linspace(0, len(usable) - 1, MAX_SLICES_PER_CASE).round().astype(int)
            usable = [usable[i] for i in pick]
        prepared.extend(usable)
        labels.extend([class_names.index(rc.diagnosis.code)] * len(usable))
        case_ids.extend([rc.pk] * len(usable))
        if progress:
            progress(n + 1, len(cases))
    return prepared, labels, class_names, case_ids


def artefact_train(
    *,
    prepared: list,
    labels: list[int],
    class_names: list[str],
    out_dir: Path,
    backbone_name: str,
    weights: str,
    size: int,
    epochs: int,
    patients: list[str] | None = None,
) -> Path:
    """The library's recipe (`train_retrieval_model`: frozen backbone, head-only ILD-FFN,
    seed 0) on prepared slices labelled by index into `class_names`; saves the artefact to
    `out_dir`. `weights` "imagenet" of a downloaded backbone means the file of
    `ILDREVIEW_RESNET50_WEIGHTS` when that is set."""
    from retrieval.engine.recipe import train_retrieval_model

    config = library_recipe_config(
        backbone_name=backbone_name, weights=weights, size=size, epochs=epochs
    )
    model = train_retrieval_model(
        prepared,
        [class_names[i] for i in labels],
        config,
        class_names=class_names,
        patients=patients,  # patient-level inner validation split when given
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    return out_dir


def library_recipe_config(*, backbone_name: str, weights: str, size: int, epochs: int):
    """The library's `RecipeConfig` (frozen backbone, head-only ILD-FFN, seed 0); the held-out
    gate (`retrieval.pipeline.gate`) trains its candidate with the same one."""
    import torch

    from retrieval.engine.recipe import RecipeConfig
    from retrieval.engine.training import TrainConfig
    from retrieval.pipeline.runtime import torch_threads_configure

    torch_threads_configure()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return RecipeConfig(
        backbone=backbone_name,
        weights=weights,
        imagenet_file=settings.ILDREVIEW_RESNET50_WEIGHTS,
        size=size,
        fov_mm=settings.ILDREVIEW_FOV_MM,
        train=TrainConfig(
            epochs=epochs,
            mode="head",
            fusion="ildffn",
            seed=0,
            reduce_deep=bootstrap_reduce_deep(device=device),
        ),
        feature_batch=8,
        device=device,
    )


def bootstrap_reduce_deep(*, device: str) -> int | None:
    """`reduce_deep` of the ILD-FFN trained for the library (setting
    `ILDREVIEW_BOOTSTRAP_REDUCE_DEEP`): "auto" keeps the paper's full correlation map on a GPU and
    reduces the deep vector to 32 dimensions before the outer product on a CPU, where the full
    1280 x 102 map makes a first install take many minutes; "none" always keeps the full map."""
    value = str(settings.ILDREVIEW_BOOTSTRAP_REDUCE_DEEP).strip().lower()
    if value == "auto":
        return None if device.startswith("cuda") else 32
    if value in ("", "none", "0"):
        return None
    return int(value)
