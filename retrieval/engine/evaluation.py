"""Patient-level cross-validated evaluation of retrieval, with the ablation rows of the paper.

One run:
1. reads every image once, prepares it (window, resize, lung mask) and extracts its deep (backbone
   + GeM) and radiomics features, through the FeatureExtractor's on-disk cache;
2. splits patients into folds (`patient_kfold`; with folds=1 the manifest's `split` column);
3. for each fold and each variant, embeds the train fold (the reference library), indexes it,
   queries with the held-out fold and keeps the ranked labels;
4. pools the held-out predictions of all folds and computes the metrics of `metrics.py` per
   variant; embedding-geometry figures (silhouette, intra/inter-class distances) are computed per
   fold on the held-out embeddings (each fold has its own embedding space) and averaged.

Variants (all on the same folds, the same cached features):
- `radiomics_only`: standardised radiomics vector (standardiser fitted on the train fold);
- `deep_only`: backbone + GeM vector, no training;
- `deep_contrastive`: ProjectionHead on the deep vector, paper's contrastive loss;
- `fused_contrastive`: ILD-FFN on deep + radiomics, paper's contrastive loss (the headline);
- extras: `fused_supcon` (ILD-FFN trained with SupCon), `fused_contrastive_knn` (the headline's
  embeddings, diagnosis by a vote over the top k instead of the top 1) and, when the index
  backend is not exact, the headline row searched exactly for comparison.
"""

from __future__ import annotations

import csv
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from retrieval.engine import metrics

Progress = Callable[[str, int, int], None]
"""progress(stage, done, total): called as work advances (the command drives tqdm with it)."""

HEADLINE = "fused_contrastive"
BASE_VARIANTS: tuple[str, ...] = (
    "radiomics_only",
    "deep_only",
    "deep_contrastive",
    "fused_contrastive",
)
EXTRA_VARIANTS: tuple[str, ...] = ("fused_supcon", "fused_contrastive_knn")
# name -> (fusion, loss) for the trained variants
TRAINED: dict[str, tuple[str, str]] = {
    "deep_contrastive": ("deep", "paper"),
    "fused_contrastive": ("ildffn", "paper"),
    "fused_supcon": ("ildffn", "supcon"),
    "radiomics_contrastive": ("radiomics", "paper"),
}
SEARCH_K = 10


class ManifestError(ValueError):
    """The manifest cannot be used (missing column, missing file, too few classes...)."""


@dataclass
class ManifestItems:
    """The rows of a manifest: one image per row."""

    paths: list[Path]
    labels: list[str]
    patients: list[str]
    splits: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> ManifestItems:
        return ManifestItems(
            paths=[self.paths[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            patients=[self.patients[i] for i in idx],
            splits=[self.splits[i] for i in idx],
        )


def read_manifest(path: Path, *, limit: int | None = None, seed: int = 0) -> ManifestItems:
    """Read a manifest (path,label,patient_id[,split]); paths are relative to the manifest.

    `limit` keeps a random subset of that many rows, sampled whole patients at a time so that
    no patient is split, for quick runs. Raises ManifestError naming the file and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "patient_id"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    if not rows:
        raise ManifestError(f"{path}: no rows")
    items = ManifestItems([], [], [], [])
    for n, row in enumerate(rows, start=2):
        file = (path.parent / row["path"]).resolve()
        if not file.exists():
            raise ManifestError(f"{path}, line {n}: {row['path']} does not exist")
        if not row["label"].strip() or not row["patient_id"].strip():
            raise ManifestError(f"{path}, line {n}: empty label or patient_id")
        items.paths.append(file)
        items.labels.append(row["label"].strip())
        items.patients.append(row["patient_id"].strip())
        items.splits.append((row.get("split") or "").strip().lower())
    if limit is not None and limit < len(items):
        items = _limit_by_patient(items, limit=limit, seed=seed)
    if len(set(items.labels)) < 2:
        raise ManifestError(f"{path}: need at least 2 classes, found {sorted(set(items.labels))}")
    return items


def _limit_by_patient(items: ManifestItems, *, limit: int, seed: int) -> ManifestItems:
    """About `limit` rows, whole patients drawn at random, stratified by label."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    first_label: dict[str, str] = {}
    for label, patient in zip(items.labels, items.patients, strict=True):
        if patient not in first_label:
            first_label[patient] = label
            by_label.setdefault(label, []).append(patient)
    order: list[str] = []
    shuffled = {k: list(rng.permutation(v)) for k, v in sorted(by_label.items())}
    while any(shuffled.values()):  # round-robin over labels keeps the classes balanced
        for patients in shuffled.values():
            if patients:
                order.append(patients.pop())
    chosen: set[str] = set()
    count = 0
    counts = {p: items.patients.count(p) for p in first_label}
    for patient in order:
        if count >= limit:
            break
        chosen.add(patient)
        count += counts[patient]
    return items.subset([i for i, p in enumerate(items.patients) if p in chosen])


@dataclass
class EvalConfig:
    """Settings of one evaluation run (all recorded in the report)."""

    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"  # "imagenet" | "random" (tests) | path to a weights file
    imagenet_file: str | None = None  # local copy of downloaded ImageNet weights (build_backbone)
    size: int = 512
    input_size: int | None = None  # backbone input side (None: the slice size)
    epochs: int = 30
    embed_dim: int = 128
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-6
    margin: float = 0.7
    # ILD-FFN: linear reduction of the deep vector before the outer product only (None = the
    # paper's full p x q map, ~8 s per training step on 2 CPU cores with p = 1280).
    reduce_deep: int | None = None
    index: str = "exact"
    seed: int = 0
    knn_k: int = 5
    min_lung_fraction: float = 0.0
    extra_variants: tuple[str, ...] = EXTRA_VARIANTS
    cache_dir: str | None = None
    device: str | None = None
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
    return [
        (np.asarray(tr), np.asarray(te))
        for tr, te in patient_kfold(items.patients, label_ids, folds=folds, seed=seed)
    ]


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
    """Indices into the train set (Q, k) of each query's top k."""
    from retrieval.engine.index import build_index

    index = build_index(backend, dim=train_emb.shape[1], seed=seed)
    index.add(np.arange(len(train_emb), dtype=np.int64), train_emb.astype(np.float32))
    ids, scores = index.search(test_emb.astype(np.float32), min(k, len(train_emb)))
    return np.asarray(ids), np.asarray(scores)


def _variant_embeddings(
    name: str,
    *,
    deep_tr: np.ndarray,
    rad_tr: np.ndarray,
    deep_te: np.ndarray,
    rad_te: np.ndarray,
    y_tr: np.ndarray,
    config: EvalConfig,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(train embeddings, test embeddings, training metrics) of one variant on one fold.

    `rad_*` are already standardised with statistics fitted on the train fold.
    """
    if name == "radiomics_only":
        return metrics.l2_normalise(rad_tr), metrics.l2_normalise(rad_te), {}
    if name == "deep_only":
        return metrics.l2_normalise(deep_tr), metrics.l2_normalise(deep_te), {}
    from retrieval.engine.fusion import head_embed
    from retrieval.engine.training import TrainConfig, train_head

    fusion, loss = TRAINED[name]
    tc = TrainConfig(
        loss=loss,
        margin=config.margin,
        lr=config.lr,
        weight_decay=config.weight_decay,
        batch_size=config.batch_size,
        epochs=config.epochs,
        embed_dim=config.embed_dim,
        mode="head",
        seed=config.seed,
        fusion=fusion,
        reduce_deep=config.reduce_deep,
    )
    head, train_metrics = train_head(deep=deep_tr, rad=rad_tr, labels=y_tr, config=tc)
    return (
        head_embed(head, fusion, deep_tr, rad_tr),
        head_embed(head, fusion, deep_te, rad_te),
        train_metrics,
    )


def evaluate(
    *,
    items: ManifestItems,
    folds: int,
    config: EvalConfig | None = None,
    progress: Progress | None = None,
) -> tuple[dict, tuple[np.ndarray, list[str], np.ndarray]]:
    """Cross-validated retrieval metrics for every variant; returns (report, projection).

    `report` is what `report.json` holds (headline metrics of `fused_contrastive` at the top
    level, every variant under `ablation`, `folds` with the patients of each held-out fold);
    `projection` is (embeddings, labels, held-out mask) of the headline variant on fold 1, for
    the report's scatter plot.
    """
    from retrieval.engine.radiomics import Standardizer

    config = config or EvalConfig()
    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    splits = _fold_splits(items, folds=folds, seed=config.seed)  # fail before the slow part
    deep, rad, lung_fraction, feat_info = extract_features(items, config, progress=progress)
    t_feat = time.perf_counter() - t0

    usable = lung_fraction >= config.min_lung_fraction
    labels = np.asarray(items.labels)
    y, class_names = _label_ids(items.labels)

    variants = list(BASE_VARIANTS)
    for extra in config.extra_variants:
        if extra not in variants:
            variants.append(extra)
    exact_twin = config.index != "exact"
    trained_needed = [v for v in variants if v in TRAINED]

    pooled: dict[str, dict[str, list]] = {
        v: {"query": [], "retrieved": [], "predicted": []} for v in variants
    }
    if exact_twin:
        pooled[f"{HEADLINE}_exact"] = {"query": [], "retrieved": [], "predicted": []}
    geometry: dict[str, list[dict]] = {v: [] for v in pooled}
    training: dict[str, list[dict]] = {v: [] for v in trained_needed}
    fold_info = []
    projection = None
    total_steps = len(splits) * len(variants)
    step = 0
    for f, (train_idx, test_idx) in enumerate(splits):
        train_idx = train_idx[usable[train_idx]]
        test_idx = test_idx[usable[test_idx]]
        overlap = set(np.asarray(items.patients)[train_idx]) & set(
            np.asarray(items.patients)[test_idx]
        )
        if len(train_idx) < SEARCH_K or not len(test_idx):
            raise ManifestError(
                f"fold {f + 1}: {len(train_idx)} usable reference and {len(test_idx)} query "
                f"slices; the metrics need at least {SEARCH_K} references and one query per fold"
            )
        if overlap:  # guard: a leak here would inflate every number in the report
            raise RuntimeError(
                f"fold {f + 1}: patients in both train and test: {sorted(overlap)[:5]}"
            )
        fold_info.append(
            {
                "fold": f + 1,
                "n_train": int(len(train_idx)),
                "n_test": int(len(test_idx)),
                "test_patients": sorted(set(np.asarray(items.patients)[test_idx].tolist())),
            }
        )
        std = Standardizer().fit(rad[train_idx])
        rad_tr = std.transform(rad[train_idx])
        rad_te = std.transform(rad[test_idx])
        cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in variants:
            base = HEADLINE if name == f"{HEADLINE}_knn" else name
            if base not in cache:
                emb_tr, emb_te, tm = _variant_embeddings(
                    base,
                    deep_tr=deep[train_idx],
                    rad_tr=rad_tr,
                    deep_te=deep[test_idx],
                    rad_te=rad_te,
                    y_tr=y[train_idx],
                    config=config,
                )
                cache[base] = (emb_tr, emb_te)
                if base in training:
                    training[base].append(tm)
            emb_tr, emb_te = cache[base]
            k = max(SEARCH_K, config.knn_k)
            ids, scores = _search(emb_tr, emb_te, backend=config.index, k=k, seed=config.seed)
            retrieved = labels[train_idx][ids]
            if name.endswith("_knn"):
                predicted = metrics.knn_vote(retrieved, k=config.knn_k, scores=scores)
            else:
                predicted = retrieved[:, 0].tolist()
            pooled[name]["query"].extend(labels[test_idx].tolist())
            pooled[name]["retrieved"].append(retrieved[:, :SEARCH_K])
            pooled[name]["predicted"].extend(predicted)
            geometry[name].append(metrics.embedding_metrics(emb_te, labels[test_idx]))
            if name == HEADLINE and exact_twin:
                ids_x, _ = _search(emb_tr, emb_te, backend="exact", k=SEARCH_K, seed=config.seed)
                twin = pooled[f"{HEADLINE}_exact"]
                twin["query"].extend(labels[test_idx].tolist())
                twin["retrieved"].append(labels[train_idx][ids_x])
                twin["predicted"].extend(labels[train_idx][ids_x[:, 0]].tolist())
                geometry[f"{HEADLINE}_exact"].append(geometry[name][-1])
            if name == HEADLINE and projection is None:
                projection = (
                    np.vstack([emb_tr, emb_te]),
                    labels[train_idx].tolist() + labels[test_idx].tolist(),
                    np.r_[np.zeros(len(emb_tr), bool), np.ones(len(emb_te), bool)],
                )
            step += 1
            if progress:
                progress("folds", step, total_steps)

    ablation = {}
    for name, pool in pooled.items():
        row = metrics.retrieval_metrics(
            pool["query"],
            np.vstack(pool["retrieved"]),
            labels=class_names,
            predicted=pool["predicted"],
        )
        geo = geometry[name]
        for key in geo[0]:
            row[key] = float(np.mean([g[key] for g in geo]))
        if name in training and training[name]:
            row["training"] = training[name]
        ablation[name] = row

    headline = ablation[HEADLINE]
    report = {key: value for key, value in headline.items() if key != "training"}
    report.update(
        {
            "headline": HEADLINE,
            "ablation": ablation,
            "folds": fold_info,
            "meta": {
                "n_items": len(items),
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
