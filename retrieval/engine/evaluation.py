"""Patient-level cross-validated evaluation of retrieval, with the ablation rows.

One run:
1. reads every image once (unreadable rows are listed and skipped, see `check_images`),
   prepares it (window, resize, lung mask) and extracts its deep (backbone + GeM) and radiomics
   features, through the FeatureExtractor's on-disk cache;
2. splits patients into folds (`patient_kfold`; with folds=1 the manifest's `split` column);
3. for each fold and each row (`variants.py`), embeds the train fold (the reference library),
   indexes it, queries with the held-out fold and keeps the ranked labels and the decisions;
4. pools the held-out predictions of all folds and computes the metrics of `metrics.py` per
   row, slice level and case level (the slices of one patient pooled, when patients have
   several); embedding-geometry figures (silhouette, intra/inter-class distances) are computed
   per fold on the held-out embeddings and averaged.

The headline row is `adaptive` (selection.py): per fold, the embedding is chosen by
patient-level inner validation among the frozen vector and what may add to it, and decided by
the class-balanced kNN vote with calibrated abstention. Every row of one run uses the same
folds and cached features; `deep_only` (frozen) is always reported beside the trained rows.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from retrieval.engine import metrics
from retrieval.engine.manifest import (  # noqa: F401 (re-exported: the commands import them here)
    ManifestError,
    ManifestItems,
    check_images,
    read_manifest,
)
from retrieval.engine.variants import HEADLINE, TRAINED

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances (the command drives tqdm with it)."""

BASE_VARIANTS: tuple[str, ...] = (
    "radiomics_only",
    "deep_only",
    "deep_contrastive",
    HEADLINE,
)
# The paper's ILD-FFN row: its epochs cost ~25x a projection head's on CPU (2-9 min per
# COVID-CT fold on the shared 2-core machine), so it is one flag away (`--fused`).
FUSED_VARIANTS: tuple[str, ...] = ("fused_contrastive",)
EXTRA_VARIANTS: tuple[str, ...] = (
    "deep_only_knn",
    "pca_whiten",
    "linear_probe",
    "deep_contrastive_v0",
    "deep_contrastive_b64",
    "deep_contrastive_hn",
    "deep_contrastive_hn_aug",
    "deep_supcon",
    "gated_fusion",
    "hierarchical",
)
SEARCH_K = 10


@dataclass
class EvalConfig:
    """Settings of one evaluation run (all recorded in the report)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet" | "random" (tests) | path to a weights file
    imagenet_file: str | None = None  # local copy of downloaded ImageNet weights (build_backbone)
    size: int = 512
    input_size: int | None = None  # backbone input side (None: the slice size)
    epochs: int = 10  # trained rows; the early-stopped ones run up to twice that
    embed_dim: int = 128
    margin: float = 0.7
    # ILD-FFN: linear reduction of the deep vector before the outer product only (None = the
    # paper's full p x q map, ~8 s per training step on 2 CPU cores with p = 1280).
    reduce_deep: int | None = 32
    index: str = "exact"
    seed: int = 0
    knn_k: int = 5
    min_lung_fraction: float = 0.0
    extra_variants: tuple[str, ...] = EXTRA_VARIANTS
    fused: bool = False  # add FUSED_VARIANTS (the paper's ILD-FFN row)
    cache_dir: str | None = None
    device: str | None = None
    strict: bool = False  # True: an unreadable image fails the run instead of being skipped
    mode: str = "head"  # "head": frozen backbone | "finetune": last blocks tuned per fold
    finetune_input_size: int = 224
    finetune_blocks: int = 2
    finetune_epochs: int = 8
    extras: dict = field(default_factory=dict)


def _fold_splits(
    items: ManifestItems, *, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) pairs, patient-disjoint."""
    if folds == 1:
        splits = np.asarray(items.splits)
        train = np.flatnonzero(splits == "train")
        test = np.flatnonzero(splits == "test")
        if not len(train) or not len(test):
            raise ManifestError(
                "--folds 1 needs a manifest `split` column with train and test rows"
            )
        return [(train, test)]
    from retrieval.engine.training import patient_kfold

    label_ids = _label_ids(items.labels)[0]
    try:
        return [
            (np.asarray(tr), np.asarray(te))
            for tr, te in patient_kfold(items.patients, label_ids, folds=folds, seed=seed)
        ]
    except ValueError as exc:
        raise ManifestError(str(exc)) from exc


def _label_ids(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    names = sorted(set(labels))
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[x] for x in labels], dtype=np.int64), names


def extract_features(
    items: ManifestItems, config: EvalConfig, *, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Deep and radiomics features and the lung fraction of every item, each image read and
    prepared once; through the on-disk FeatureCache when `config.cache_dir` is set."""
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.features import FeatureCache, FeatureExtractor
    from retrieval.engine.radiomics import RadiomicsExtractor

    backbone = build_backbone(
        config.backbone,
        weights=config.weights,
        imagenet_file=config.imagenet_file,
        device=config.device,
    )
    extractor = FeatureExtractor(backbone, RadiomicsExtractor(), input_size=config.input_size)
    cache = FeatureCache(config.cache_dir) if config.cache_dir else None

    def step(done: int, total: int) -> None:
        if progress:
            progress("features", done, total)

    deep, rad, frac = extractor.extract_paths(
        items.paths, size=config.size, cache=cache, progress=step
    )
    info = {
        "deep_dim": int(deep.shape[1]),
        "rad_dim": int(rad.shape[1]),
        "backbone_weights_sha256": backbone.weights_sha256,
        "backbone_weights_source": backbone.weights_source,
    }
    return deep, rad, frac, info


def _search(train_emb: np.ndarray, test_emb: np.ndarray, *, backend: str, k: int, seed: int):
    """Indices into the train set (Q, k) of each query's top k, and their scores."""
    from retrieval.engine.index import build_index

    index = build_index(backend, dim=train_emb.shape[1], seed=seed)
    index.add(np.arange(len(train_emb), dtype=np.int64), train_emb.astype(np.float32))
    ids, scores = index.search(test_emb.astype(np.float32), min(k, len(train_emb)))
    return np.asarray(ids), np.asarray(scores)


def _row(name: str, fold, *, config: EvalConfig):
    from retrieval.engine import variants

    if name in TRAINED:
        return variants.trained_row(name, fold, config=config)
    return variants.baseline_row(name, fold, seed=config.seed)


def _variants(config: EvalConfig) -> list[str]:
    names = list(BASE_VARIANTS) + (["finetuned"] if config.mode == "finetune" else [])
    if config.fused:
        names += [v for v in FUSED_VARIANTS if v not in names]
    for extra in config.extra_variants:
        if extra not in names:
            names.append(extra)
    return names


def evaluate(
    *,
    items: ManifestItems,
    folds: int,
    config: EvalConfig | None = None,
    progress: Progress | None = None,
) -> tuple[dict, tuple[np.ndarray, list[str], np.ndarray]]:
    """Cross-validated retrieval metrics for every row; returns (report, projection).

    `report` is what `report.json` holds (the headline row's metrics at the top level, every
    row under `ablation`, `folds` with the held-out patients and the headline's chosen
    candidate of each fold, `skipped` rows with reasons); `projection` is (embeddings, labels,
    held-out mask) of the headline on fold 1, for the report's scatter plot.
    """
    from retrieval.engine.radiomics import Standardizer
    from retrieval.engine.variants import Fold, hierarchical_predictions

    config = config or EvalConfig()
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    items = check_images(items, strict=config.strict, progress=progress)
    if len(set(items.labels)) < 2:
        raise ManifestError(
            f"need at least 2 classes among the readable rows, found {sorted(set(items.labels))}"
        )
    splits = _fold_splits(items, folds=folds, seed=config.seed)  # fail before the slow part
    deep, rad, lung_fraction, feat_info = extract_features(items, config, progress=progress)
    t_feat = time.perf_counter() - t0

    usable = lung_fraction >= config.min_lung_fraction
    labels = np.asarray(items.labels)
    patients = np.asarray(items.patients)
    class_names = sorted(set(items.labels))
    multi_slice = len(set(items.patients)) < len(items)

    names = _variants(config)
    tune = _finetune_setup(items, config, progress=progress) if config.mode == "finetune" else None
    row_names = [n for n in names if n != "hierarchical"]
    pooled_names = list(names) + ([f"{HEADLINE}_exact"] if config.index != "exact" else [])
    pooled: dict[str, dict[str, list]] = {
        v: {"query": [], "patients": [], "retrieved": [], "rpatients": [], "scores": [],
            "predicted": [], "abstained": []}
        for v in pooled_names
    }  # fmt: skip
    geometry: dict[str, list[dict]] = {v: [] for v in pooled_names}
    infos: dict[str, list[dict]] = {v: [] for v in pooled_names}
    fold_info = []
    projection = None
    total_steps = len(splits) * len(names)
    step = 0

    def pool(name, *, te, retrieved, rpatients, scores, predicted, abstained, geo):
        p = pooled[name]
        p["query"].extend(labels[te].tolist())
        p["patients"].extend(patients[te].tolist())
        p["retrieved"].append(retrieved[:, :SEARCH_K])
        p["rpatients"].append(rpatients[:, :SEARCH_K])
        p["scores"].append(scores[:, :SEARCH_K])
        p["predicted"].extend(np.asarray(predicted).astype(str).tolist())
        p["abstained"].extend(
            np.zeros(len(te), bool).tolist() if abstained is None else abstained.tolist()
        )
        geometry[name].append(geo)

    for f, (train_idx, test_idx) in enumerate(splits):
        train_idx = train_idx[usable[train_idx]]
        test_idx = test_idx[usable[test_idx]]
        overlap = set(patients[train_idx]) & set(patients[test_idx])
        if len(train_idx) < SEARCH_K or not len(test_idx):
            raise ManifestError(
                f"fold {f + 1}: {len(train_idx)} usable reference and {len(test_idx)} query "
                f"slices; the metrics need at least {SEARCH_K} references and one query per fold"
            )
        if overlap:  # guard: a leak here would inflate every number in the report
            raise RuntimeError(
                f"fold {f + 1}: patients in both train and test: {sorted(overlap)[:5]}"
            )
        std = Standardizer().fit(rad[train_idx])
        fold = Fold(
            deep_tr=deep[train_idx],
            rad_tr=std.transform(rad[train_idx]).astype(np.float32),
            y_tr=labels[train_idx].astype(str),
            patients_tr=patients[train_idx].astype(str),
            deep_te=deep[test_idx],
            rad_te=std.transform(rad[test_idx]).astype(np.float32),
            classes=class_names,
        )
        info_f = {
            "fold": f + 1,
            "n_train": int(len(train_idx)),
            "n_test": int(len(test_idx)),
            "test_patients": sorted(set(patients[test_idx].tolist())),
        }
        fold_ft = fold
        if tune is not None:
            fold_ft, info_f["finetune"] = _finetuned_fold(
                fold, tune, labels, patients, train_idx, test_idx, config=config
            )
        headline_row = None
        for name in row_names:
            t_row = time.perf_counter()
            row = _row(name, fold_ft if name in (HEADLINE, "finetuned") else fold, config=config)
            ids, scores = _search(
                row.emb_tr, row.emb_te, backend=config.index, k=SEARCH_K, seed=config.seed
            )
            retrieved = labels[train_idx][ids]
            predicted = retrieved[:, 0] if row.predicted is None else row.predicted
            geo = metrics.embedding_metrics(row.emb_te, labels[test_idx])
            pool(
                name,
                te=test_idx,
                retrieved=retrieved,
                rpatients=patients[train_idx][ids],
                scores=scores,
                predicted=predicted,
                abstained=row.abstained,
                geo=geo,
            )
            fold_f1 = metrics.classification_metrics(
                labels[test_idx].astype(str), np.asarray(predicted).astype(str), labels=class_names
            )["macro_f1"]
            infos[name].append(
                {
                    **row.info,
                    "fold_macro_f1": round(float(fold_f1), 4),  # this fold's queries alone
                    "seconds": round(time.perf_counter() - t_row, 1),
                }
            )
            if name == HEADLINE:
                headline_row = row
                info_f["chosen"] = row.info.get("chosen")
                if config.index != "exact":
                    ids_x, sc_x = _search(
                        row.emb_tr, row.emb_te, backend="exact", k=SEARCH_K, seed=config.seed
                    )
                    pool(
                        f"{HEADLINE}_exact",
                        te=test_idx,
                        retrieved=labels[train_idx][ids_x],
                        rpatients=patients[train_idx][ids_x],
                        scores=sc_x,
                        predicted=predicted,
                        abstained=row.abstained,
                        geo=geo,
                    )
                if projection is None:
                    projection = (
                        np.vstack([row.emb_tr, row.emb_te]),
                        labels[train_idx].tolist() + labels[test_idx].tolist(),
                        np.r_[np.zeros(len(row.emb_tr), bool), np.ones(len(row.emb_te), bool)],
                    )
            step += 1
            if progress:
                progress("folds", step, total_steps)
        if "hierarchical" in names and headline_row is not None:
            pred_h, retr_h = hierarchical_predictions(
                headline_row.emb_tr,
                fold.y_tr,
                fold.patients_tr,
                headline_row.emb_te,
                k=SEARCH_K,
            )
            pool(
                "hierarchical",
                te=test_idx,
                retrieved=retr_h,
                rpatients=np.full(retr_h.shape, ""),
                scores=np.zeros(retr_h.shape),
                predicted=pred_h,
                abstained=None,
                geo=geometry[HEADLINE][-1],
            )
            step += 1
            if progress:
                progress("folds", step, total_steps)
        fold_info.append(info_f)

    ablation = {}
    for name, p in pooled.items():
        if not p["query"]:
            continue
        row = metrics.retrieval_metrics(
            p["query"], np.vstack(p["retrieved"]), labels=class_names, predicted=p["predicted"]
        )
        for key in geometry[name][0]:
            row[key] = float(np.mean([g[key] for g in geometry[name]]))
        correct = np.asarray(p["predicted"]) == np.asarray(p["query"])
        abstained = np.asarray(p["abstained"], bool)
        if abstained.any() or name == HEADLINE:
            row.update(metrics.coverage_metrics(correct, abstained))
        if multi_slice and name != "hierarchical":
            row.update(
                metrics.case_metrics(
                    p["patients"],
                    p["query"],
                    np.vstack(p["rpatients"]),
                    np.vstack(p["retrieved"]),
                    np.vstack(p["scores"]),
                    labels=class_names,
                )
            )
        if infos[name] and any(infos[name]):
            row["folds"] = infos[name]
        ablation[name] = row

    headline = ablation[HEADLINE]
    report = {key: value for key, value in headline.items() if key != "folds"}
    report.update(
        {
            "headline": HEADLINE,
            "ablation": ablation,
            "folds": fold_info,
            "skipped": items.skipped,
            "converted": items.converted,
            "meta": {
                "n_items": len(items) + len(items.skipped),
                "n_read": len(items),
                "n_skipped": len(items.skipped),
                "n_used": int(usable.sum()),
                "n_patients": len(set(items.patients)),
                "classes": class_names,
                "n_folds": len(splits),
                "fold_source": "manifest split column" if folds == 1 else "patient_kfold",
                "feature_seconds": round(t_feat, 1),
                "total_seconds": round(time.perf_counter() - t0, 1),
                "config": asdict(config),
                "features": feat_info,
                "machine": _machine(),
                "metric_definitions": metrics.__doc__.strip(),
            },
        }
    )
    return report, projection


def _finetune_setup(items: ManifestItems, config: EvalConfig, *, progress=None) -> dict:
    """Prepared slices (cached) and the frozen backbone for `--mode finetune`."""
    import tempfile

    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.finetune import FinetuneConfig
    from retrieval.engine.finetune_eval import PreparedCache

    root = Path(config.cache_dir) if config.cache_dir else Path(tempfile.mkdtemp())
    images = PreparedCache(root / "prepared").images(
        items.paths, size=config.size, input_size=config.finetune_input_size, progress=progress
    )
    backbone = build_backbone(
        config.backbone,
        weights=config.weights,
        imagenet_file=config.imagenet_file,
        device=config.device,
    )
    ft = FinetuneConfig(
        input_size=config.finetune_input_size,
        blocks=config.finetune_blocks,
        epochs=config.finetune_epochs,
        seed=config.seed,
    )
    return {"images": images, "backbone": backbone, "config": ft}


def _finetuned_fold(fold, tune: dict, labels, patients, train_idx, test_idx, *, config):
    from dataclasses import replace

    from retrieval.engine.finetune_eval import tuned_features

    d_tr, d_te, info = tuned_features(
        tune["backbone"],
        tune["images"],
        labels,
        patients,
        train_idx,
        test_idx,
        config=tune["config"],
    )
    return replace(fold, deep_tr=d_tr, deep_te=d_te), info


def _machine() -> dict:
    import os

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
