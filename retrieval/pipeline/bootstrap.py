"""Training a first head-only model on the approved reference library (engine functions only).

Frozen backbone (`ILDREVIEW_BACKBONE`, weights `ILDREVIEW_BOOTSTRAP_WEIGHTS`) + GeM deep
features and radiomics of every usable slice of the approved cases (at most
`MAX_SLICES_PER_CASE` per case, evenly spread, so one long CT does not outweigh the rest),
radiomics standardisation fitted on them, ILD-FFN trained with the paper's contrastive loss;
saved as an engine artefact folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from django.conf import settings

from cases.models import ReferenceCase, Slice
from retrieval.pipeline.runtime import slice_prepare

MAX_SLICES_PER_CASE = 16


def _backbone_weights() -> str:
    weights = settings.ILDREVIEW_BOOTSTRAP_WEIGHTS
    if settings.ILDREVIEW_BACKBONE == "resnet50" and weights == "imagenet":
        return settings.ILDREVIEW_RESNET50_WEIGHTS or weights
    return weights


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
            p = slice_prepare(slice_obj=s, size=size)
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


def bootstrap_train(
    *,
    cases: list[ReferenceCase],
    out_dir: Path,
    progress: Callable[[int, int], None] | None = None,
    epochs: int | None = None,
) -> Path:
    """Train on `cases` (approved, >= 2 diagnoses) and save the artefact to `out_dir`."""
    size = int(settings.ILDREVIEW_BOOTSTRAP_SIZE)
    prepared, labels, class_names, _ = library_prepare(cases=cases, size=size, progress=progress)
    return artefact_train(
        prepared=prepared,
        labels=labels,
        class_names=class_names,
        out_dir=out_dir,
        backbone_name=settings.ILDREVIEW_BACKBONE,
        weights=_backbone_weights(),
        size=size,
        epochs=int(epochs or settings.ILDREVIEW_BOOTSTRAP_EPOCHS),
    )


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
) -> Path:
    """Django-free core: frozen-backbone features of prepared slices, standardised radiomics,
    head-only ILD-FFN training; saves a `RetrievalModel` artefact to `out_dir`."""
    import torch

    from retrieval.engine.artefact import RetrievalModel
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.radiomics import RadiomicsError, RadiomicsExtractor, Standardizer
    from retrieval.engine.training import TrainConfig, train_head
    from retrieval.pipeline.runtime import torch_threads_configure

    torch_threads_configure()
    if len(set(labels)) < 2:
        raise ValueError("bootstrap: usable slices of at least two diagnoses are needed")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = build_backbone(backbone_name, weights=weights, device=device)
    radiomics = RadiomicsExtractor()
    # Per slice, so that one degenerate mask drops that slice instead of the whole run.
    rows, kept, kept_labels = [], [], []
    for p, label in zip(prepared, labels, strict=True):
        try:
            rows.append(radiomics.extract(p.image, p.mask))
        except RadiomicsError:
            continue
        kept.append(p)
        kept_labels.append(label)
    if len(set(kept_labels)) < 2:
        raise ValueError("bootstrap: usable slices of at least two diagnoses are needed")
    labels = kept_labels
    rad = np.vstack(rows)
    deep = deep_features(backbone=backbone, prepared=kept)
    standardizer = Standardizer().fit(rad)
    config = TrainConfig(
        epochs=epochs,
        mode="head",
        fusion="ildffn",
        seed=0,
        reduce_deep=bootstrap_reduce_deep(device=device),
    )
    head, metrics = train_head(
        deep=deep, rad=standardizer.transform(rad), labels=np.asarray(labels), config=config
    )
    model = RetrievalModel.from_parts(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head,
        class_names=list(class_names),
        config={**_config_dict(config), "size": size, "weights": weights},
        metrics=metrics,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save(out_dir)
    return out_dir


def deep_features(
    *, backbone, prepared: list, batch: int = 8, input_size: int | None = None
) -> np.ndarray:
    """Backbone + GeM vectors (N, C) of prepared slices, in batches, without gradients
    (`input_size`: the model's backbone input side when it differs from the slice size)."""
    import torch

    from retrieval.engine.backbones import images_to_tensor

    device = next(backbone.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(prepared), batch):
            x = images_to_tensor([p.image for p in prepared[i : i + batch]], size=input_size).to(
                device
            )
            out.append(backbone(x).detach().cpu().numpy().astype(np.float32))
    return np.vstack(out)


def _config_dict(config) -> dict:
    from dataclasses import asdict, is_dataclass

    return asdict(config) if is_dataclass(config) else dict(vars(config))


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
