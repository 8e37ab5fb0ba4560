"""The training recipe, written once: prepared slices and their labels -> a `RetrievalModel`.

`manage.py train_model`, the bootstrap of a fresh install and the admin's training runs all
call `train_retrieval_model`; they differ only in the `RecipeConfig` they pass. Steps:

1. the backbone from the registry (`build_backbone`, the one place weights are resolved);
2. radiomics of every slice; a slice whose mask pyradiomics cannot work with is left out, so
   one degenerate mask drops that slice instead of the whole run;
3. deep features of the slices kept (`FeatureExtractor.deep`: eval mode, no gradients) —
   skipped in end-to-end mode, which computes them itself while it fine-tunes;
4. the radiomics standardisation fitted on those slices;
5. the head trained on the frozen features (`train_head`), or backbone and head fine-tuned
   together (`train_end_to_end`) when `train.mode` is "end_to_end".

Seeded by `train.seed` (and by the caller's torch seed for a random-init backbone): the same
inputs and config give the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from retrieval.engine.artefact import RetrievalModel
from retrieval.engine.training import TrainConfig


@dataclass
class RecipeConfig:
    """What a training run is made of besides its slices."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet" | "random" | path to a weight file
    imagenet_file: str | None = None  # see build_backbone
    size: int = 512  # side the slices were prepared at (recorded for embedding later)
    train: TrainConfig = field(default_factory=TrainConfig)
    feature_batch: int = 16  # slices per backbone forward pass
    device: str | None = None  # None: CUDA when available


def train_retrieval_model(
    prepared: Sequence,
    labels: Sequence[str],
    config: RecipeConfig,
    *,
    class_names: Sequence[str] | None = None,
) -> RetrievalModel:
    """Train a model on PreparedSlices `prepared` labelled `labels` (class names).

    `class_names` is the model's list of classes (default: the sorted distinct labels); every
    label must be in it. The model's `config` is the training config plus `size` and `weights`
    (the weights' source as resolved by the backbone factory); `metrics` are the training
    metrics. Raises ValueError when fewer than two classes keep usable slices and
    BackboneWeightsUnavailable when the weights cannot be had.
    """
    import torch

    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.features import FeatureExtractor
    from retrieval.engine.radiomics import RadiomicsError, RadiomicsExtractor, Standardizer
    from retrieval.engine.training import train_end_to_end, train_head

    class_names = sorted(set(labels)) if class_names is None else list(class_names)
    if len(set(labels)) < 2:  # before the costly part
        raise ValueError("training needs usable slices of at least two classes")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(
        config.backbone, weights=config.weights, imagenet_file=config.imagenet_file, device=device
    )
    radiomics = RadiomicsExtractor()
    rows, kept, y = [], [], []
    for p, label in zip(prepared, labels, strict=True):
        try:
            rows.append(radiomics.extract(p.image, p.mask))
        except RadiomicsError:
            continue
        kept.append(p)
        y.append(class_names.index(label))
    if len(set(y)) < 2:
        raise ValueError("training needs usable slices of at least two classes")
    y = np.asarray(y, dtype=np.int64)
    rad = np.vstack(rows)
    standardizer = Standardizer().fit(rad)
    if config.train.mode == "end_to_end":
        head, metrics = train_end_to_end(
            backbone=backbone,
            slices=kept,
            rad=standardizer.transform(rad),
            labels=y,
            config=config.train,
        )
    else:
        extractor = FeatureExtractor(backbone, radiomics, config.feature_batch)
        deep = extractor.deep([p.image for p in kept])
        head, metrics = train_head(
            deep=deep, rad=standardizer.transform(rad), labels=y, config=config.train
        )
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head,
        class_names=class_names,
        config={**asdict(config.train), "size": config.size, "weights": backbone.weights_source},
        metrics=metrics,
    )
