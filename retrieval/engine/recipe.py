"""The training recipe, written once: prepared slices and their labels -> a `RetrievalModel`.

`manage.py train_model`, the bootstrap of a fresh install and the admin's training runs all
call `train_retrieval_model`; they differ only in the `RecipeConfig` they pass. Steps:

1. the backbone from the registry (`build_backbone`, the one place weights are resolved);
2. radiomics of every slice; a slice whose mask pyradiomics cannot work with is left out, so
   one degenerate mask drops that slice instead of the whole run;
3. deep features of the slices kept (`FeatureExtractor.deep`: eval mode, no gradients) —
   skipped in end-to-end mode, which computes them itself while it fine-tunes;
4. the radiomics standardisation fitted on those slices;
5. by default (`embedding="adaptive"`) the headline embedding of the evaluation
   (`selection.select_embedding`: the frozen vector, whitening, a learned residual part and the
   radiomics gate chosen on a patient-level inner split of the library, refitted on all of it),
   with the abstention thresholds calibrated on that inner validation stored in
   `model.config["abstain"]` and the choice in `model.config["selection"]`;
   `embedding="head"` trains `train.fusion`'s head on the frozen features (`train_head`), and
   `train.mode` "end_to_end" fine-tunes backbone and head together (`train_end_to_end`).

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
    # Physical field of view (mm) DICOM slices were resampled to (`geometry`); recorded so that
    # serving prepares slices the same way. None: slices resized whole.
    fov_mm: float | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    feature_batch: int = 16  # slices per backbone forward pass
    device: str | None = None  # None: CUDA when available
    embedding: str = "adaptive"  # "adaptive" (the evaluation's headline) | "head" (train.fusion)


def train_retrieval_model(
    prepared: Sequence,
    labels: Sequence[str],
    config: RecipeConfig,
    *,
    class_names: Sequence[str] | None = None,
    patients: Sequence[str] | None = None,
) -> RetrievalModel:
    """Train a model on PreparedSlices `prepared` labelled `labels` (class names).

    `class_names` is the model's list of classes (default: the sorted distinct labels); every
    label must be in it. `patients` (one id per slice: the case it comes from) keeps a case's
    slices on one side of the adaptive embedding's inner validation split; without them every
    slice counts as its own case (near-identical slices of one case can then be on both sides,
    which flatters every candidate alike; `model.config["selection"]["inner_split"]` says so).
    The model's `config` is the training config plus `size` and `weights` (the weights' source
    as resolved by the backbone factory) and, for the adaptive embedding, the chosen candidate,
    the kNN k and the abstention thresholds; `metrics` are the training metrics. Raises
    ValueError when fewer than two classes keep usable slices and BackboneWeightsUnavailable
    when the weights cannot be had.
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
    patient_ids = (
        [str(i) for i in range(len(labels))] if patients is None else [str(p) for p in patients]
    )
    if len(patient_ids) != len(labels):
        raise ValueError("patients must give one id per slice")
    rows, kept, y, kept_patients = [], [], [], []
    for p, label, patient in zip(prepared, labels, patient_ids, strict=True):
        try:
            rows.append(radiomics.extract(p.image, p.mask))
        except RadiomicsError:
            continue
        kept.append(p)
        y.append(class_names.index(label))
        kept_patients.append(patient)
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
        if config.embedding == "adaptive":
            return _adaptive_model(
                config,
                backbone=backbone,
                radiomics=radiomics,
                standardizer=standardizer,
                deep=deep,
                rad=standardizer.transform(rad),
                y=y,
                patients=kept_patients,
                class_names=class_names,
                patients_given=patients is not None,
            )
        head, metrics = train_head(
            deep=deep, rad=standardizer.transform(rad), labels=y, config=config.train
        )
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head,
        class_names=class_names,
        config={
            **asdict(config.train),
            "size": config.size,
            "fov_mm": config.fov_mm,
            "weights": backbone.weights_source,
        },
        metrics=metrics,
    )


def _adaptive_model(
    config: RecipeConfig,
    *,
    backbone,
    radiomics,
    standardizer,
    deep: np.ndarray,
    rad: np.ndarray,
    y: np.ndarray,
    patients: list[str],
    class_names: list[str],
    patients_given: bool,
) -> RetrievalModel:
    """The evaluation's headline embedding trained on the whole library (module docstring)."""
    from retrieval.engine.selection import SelectionConfig, select_embedding

    sel = select_embedding(
        deep=deep,
        rad=rad,
        labels=np.asarray(class_names)[y],
        patients=np.asarray(patients),
        config=SelectionConfig(seed=config.train.seed),
    )
    selection = {
        **sel.chosen,
        "inner_split": "patient-level" if patients_given else "slice-level (no patient ids)",
    }
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=sel.model,
        class_names=class_names,
        config={
            **asdict(config.train),
            "fusion": "adaptive",
            "embedding": "adaptive",
            "knn_k": sel.k,
            "selection": selection,
            "abstain": sel.thresholds,
            "size": config.size,
            "fov_mm": config.fov_mm,
            "weights": backbone.weights_source,
        },
        metrics={
            "selection": selection,
            "candidate_scores": sel.scores,
            "abstain": sel.thresholds,
            "n_train": int(len(y)),
            "n_classes": int(len(np.unique(y))),
            **sel.info,
        },
    )
