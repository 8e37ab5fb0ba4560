"""The held-out gate: does a newly trained model retrieve better than what we already have?

Protocol (train-on-the-rest, evaluate on held-out patients):

1. The library's slices are split by *patient*, seeded (`patient_split`): about `fraction` of
   each class's patients are held out (at least one per class that has two or more patients),
   so no held-out patient has a slice in the training part.
2. The candidate is trained on the training part only, by the caller's `train` function — the
   same recipe (`retrieval.engine.recipe.train_retrieval_model`) and configuration as the
   version that will be registered, which is then trained again on the whole library. The
   figures therefore describe the recipe on unseen patients, not the final weights themselves
   (the honest figure for them would need patients that no version has seen).
3. Every embedder embeds every slice; each held-out slice queries the training part (cosine,
   top 10) and is scored with `retrieval.engine.metrics.retrieval_metrics`: macro F1 and
   accuracy of the top-1 retrieved label, mAP@10.

Embedders: "frozen" (the frozen backbone's GeM vector, L2-normalised: the deep_only baseline),
"active" (the version serving now, when there is one; it may have been trained on the held-out
patients, which favours it: the gate is then stricter, never laxer) and "this" (the candidate).
Deep features and radiomics are computed once per distinct backbone / radiomics parameters
(`FeatureMemo`). Slices whose radiomics cannot be computed are left out for every row, so all
rows score the same queries.

Django-free; `table` is JSON-serialisable and is what `ModelVersion.holdout` stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

HOLDOUT_FRACTION = 0.25
DEPTH = 10
ROWS = ("frozen", "active", "this")
ROW_TITLES = {"frozen": "frozen backbone", "active": "active version", "this": "this version"}
METRICS = ("macro_f1", "accuracy", "map_at_10")
PROTOCOL = (
    "patient-level split of the library (seeded); the candidate recipe trained on the training "
    "patients only; each held-out slice queries the training slices (cosine, top 10); macro F1 "
    "and accuracy of the top-1 retrieved label, mAP@10"
)


def patient_split(
    labels: Sequence[str], patients: Sequence, *, fraction: float = HOLDOUT_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices) of a seeded patient-level split, stratified by each
    patient's most frequent label. Raises ValueError when no class has two patients (nothing
    can be held out without emptying a class of the training part)."""
    labels = np.asarray(labels).astype(str)
    patients = np.asarray([str(p) for p in patients])
    by_class: dict[str, list[str]] = {}
    for patient in sorted(set(patients.tolist())):
        values, counts = np.unique(labels[patients == patient], return_counts=True)
        by_class.setdefault(str(values[np.argmax(counts)]), []).append(patient)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in sorted(by_class):
        members = by_class[label]
        if len(members) < 2:
            continue
        n = min(max(1, round(fraction * len(members))), len(members) - 1)
        held.update(rng.permutation(members)[:n].tolist())
    if not held:
        raise ValueError("the held-out gate needs a class with at least two patients")
    mask = np.isin(patients, list(held))
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def retrieval_row(
    query: np.ndarray,
    query_labels: Sequence[str],
    gallery: np.ndarray,
    gallery_labels: Sequence[str],
    *,
    class_names: Sequence[str],
) -> dict:
    """Macro F1 / accuracy of the top-1 label and mAP@10 of queries against a gallery."""
    from retrieval.engine.metrics import l2_normalise, retrieval_metrics

    sims = l2_normalise(query) @ l2_normalise(gallery).T
    depth = min(DEPTH, sims.shape[1])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :depth]
    retrieved = np.asarray(gallery_labels).astype(str)[order]
    if depth < DEPTH:  # a missing result is not a relevant one
        pad = np.full((len(retrieved), DEPTH - depth), "(none)")
        retrieved = np.hstack([retrieved, pad])
    full = retrieval_metrics(
        np.asarray(query_labels).astype(str), retrieved, labels=[str(c) for c in class_names]
    )
    return {key: float(full[key]) for key in METRICS}


@dataclass
class FeatureMemo:
    """Deep features per backbone and raw radiomics per parameter set, each computed once for
    the whole slice list (the embedders share them)."""

    slices: Sequence
    batch_size: int = 8
    deep: dict[tuple, np.ndarray] = field(default_factory=dict)
    rad: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def deep_of(self, backbone, *, input_size: int | None = None) -> np.ndarray:
        from retrieval.engine.features import FeatureExtractor

        key = (
            str(getattr(backbone, "name", "")),
            str(getattr(backbone, "weights_sha256", "")),
            str(getattr(backbone, "fine_tuned_sha256", "")),
            id(backbone) if getattr(backbone, "fine_tuned", False) else 0,
            input_size,
        )
        if key not in self.deep:
            extractor = FeatureExtractor(backbone, None, self.batch_size, input_size=input_size)
            self.deep[key] = extractor.deep([s.image for s in self.slices])
        return self.deep[key]

    def rad_of(self, radiomics) -> tuple[np.ndarray, np.ndarray]:
        """(raw radiomics (N, Cr) with zero rows where it failed, ok mask (N,))."""
        from retrieval.engine.radiomics import RadiomicsError

        key = radiomics.params_sha256
        if key not in self.rad:
            width = len(radiomics.feature_names)
            rows, ok = [], []
            for s in self.slices:
                try:
                    rows.append(np.asarray(radiomics.extract(s.image, s.mask), np.float64))
                    ok.append(True)
                except RadiomicsError:
                    rows.append(np.zeros(width, np.float64))
                    ok.append(False)
            self.rad[key] = (np.vstack(rows), np.asarray(ok, dtype=bool))
        return self.rad[key]


# An embedder: FeatureMemo -> (embeddings (N, E), usable mask (N,)).
Embedder = Callable[[FeatureMemo], tuple[np.ndarray, np.ndarray]]


def frozen_embedder(backbone, *, input_size: int | None = None) -> Embedder:
    """The deep_only baseline: the frozen backbone's GeM vector (normalised when scored)."""

    def embed(memo: FeatureMemo):
        deep = memo.deep_of(backbone, input_size=input_size)
        return deep, np.ones(len(deep), dtype=bool)

    return embed


def model_embedder(model) -> Embedder:
    """A `RetrievalModel`'s served embedding (its backbone, radiomics and head)."""

    def embed(memo: FeatureMemo):
        deep = memo.deep_of(model.backbone, input_size=model.config.get("input_size"))
        if model.fusion == "deep":  # the head ignores radiomics: every slice is usable
            return model.embed_features(deep, np.zeros((len(deep), 0))), np.ones(len(deep), bool)
        rad, ok = memo.rad_of(model.radiomics)
        return model.embed_features(deep, rad), ok

    return embed


def holdout_evaluate(
    *,
    prepared: Sequence,
    labels: Sequence[str],
    patients: Sequence,
    train: Callable[[list, list[str], list], object],
    frozen_backbone=None,
    frozen_backbone_factory: Callable[[], object] | None = None,
    active_model=None,
    active_name: str = "",
    class_names: Sequence[str] | None = None,
    fraction: float = HOLDOUT_FRACTION,
    seed: int = 0,
) -> dict:
    """The gate's table for the candidate that `train(prepared, labels, patients)` returns
    when given the training part (see the module docstring).

    `frozen_backbone`: the frozen backbone of the deep_only row (default: the candidate's own
    backbone, which is the frozen one unless the recipe fine-tuned it, in which case
    `frozen_backbone_factory()` builds it); `active_model`: the
    `RetrievalModel` serving now, if any. Returns {"protocol", "seed", "fraction", counts,
    "rows": {"frozen"|"active"|"this": {macro_f1, accuracy, map_at_10, ...}}, "deltas":
    {"vs_frozen"|"vs_active": {metric: this - other}}}.
    """
    labels = [str(label) for label in labels]
    class_names = sorted(set(labels)) if class_names is None else [str(c) for c in class_names]
    train_idx, test_idx = patient_split(labels, patients, fraction=fraction, seed=seed)
    pick = lambda idx, xs: [xs[i] for i in idx]  # noqa: E731
    candidate = train(pick(train_idx, prepared), pick(train_idx, labels), pick(train_idx, patients))
    if frozen_backbone is None:
        if not getattr(candidate.backbone, "fine_tuned", False):
            frozen_backbone = candidate.backbone
        elif frozen_backbone_factory is not None:
            frozen_backbone = frozen_backbone_factory()
        else:
            raise ValueError("give the frozen backbone: the candidate's own was fine-tuned")
    embedders: dict[str, Embedder] = {"frozen": frozen_embedder(frozen_backbone)}
    if active_model is not None:
        embedders["active"] = model_embedder(active_model)
    embedders["this"] = model_embedder(candidate)

    memo = FeatureMemo(prepared)
    embedded = {name: embed(memo) for name, embed in embedders.items()}
    usable = np.logical_and.reduce([ok for _, ok in embedded.values()])
    tr = np.asarray([i for i in train_idx if usable[i]], dtype=int)
    te = np.asarray([i for i in test_idx if usable[i]], dtype=int)
    if not len(tr) or not len(te):
        raise ValueError("the held-out gate has no usable slices on one side of the split")
    y = np.asarray(labels)
    patients_arr = np.asarray([str(p) for p in patients])
    rows = {}
    for name, (emb, _) in embedded.items():
        rows[name] = retrieval_row(emb[te], y[te], emb[tr], y[tr], class_names=class_names)
        rows[name]["title"] = ROW_TITLES[name]
    if "active" in rows and active_name:
        rows["active"]["version"] = active_name
    deltas = {
        f"vs_{other}": {m: rows["this"][m] - rows[other][m] for m in METRICS}
        for other in ("frozen", "active")
        if other in rows
    }
    return {
        "protocol": PROTOCOL,
        "seed": int(seed),
        "fraction": float(fraction),
        "n_train_slices": len(tr),
        "n_train_patients": len(set(patients_arr[tr].tolist())),
        "n_heldout_slices": len(te),
        "n_heldout_patients": len(set(patients_arr[te].tolist())),
        "n_unusable_slices": int((~usable).sum()),
        "rows": rows,
        "deltas": deltas,
    }


def gate_verdict(table: dict, *, metric: str = "macro_f1") -> list[str]:
    """Why the table's candidate ("this") must not be activated without an override: one
    sentence per row ("frozen", "active") whose `metric` beats it; empty when none does."""
    rows = (table or {}).get("rows") or {}
    this = (rows.get("this") or {}).get(metric)
    if not isinstance(this, int | float):
        return []
    out = []
    for other in ("frozen", "active"):
        value = (rows.get(other) or {}).get(metric)
        if isinstance(value, int | float) and this < value:
            out.append(
                f"{metric} {this:.3f} on held-out patients is below the "
                f"{ROW_TITLES[other]}'s {value:.3f}"
            )
    return out


def frozen_retrieval_model(
    *, backbone, radiomics, standardizer, class_names: Sequence[str], config: dict | None = None
):
    """A `RetrievalModel` that serves the frozen backbone's vector itself (deep_only): a "deep"
    head that is the identity on the GeM vector (the embedding is that vector, L2-normalised).
    `config` keeps what embedding needs (`size`, `weights`, `input_size`); abstain thresholds
    calibrated for a trained embedding do not apply and are dropped."""
    import torch

    from retrieval.engine.artefact import RetrievalModel
    from retrieval.engine.fusion import ProjectionHead

    dim = int(backbone.out_dim)
    head = ProjectionHead(dim, dim)
    with torch.no_grad():
        head.net.weight.copy_(torch.eye(dim))
        head.net.bias.zero_()
    device = next(backbone.parameters()).device
    keep = {k: v for k, v in (config or {}).items() if k in ("size", "weights", "input_size")}
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head.to(device).eval(),
        class_names=list(class_names),
        config={**keep, "fusion": "deep", "frozen_backbone": True},
        metrics={"frozen_backbone": True},
    )


def frozen_table(table: dict) -> dict:
    """The gate's table for a version that serves the frozen backbone: its "this" row is the
    frozen row of the same split."""
    rows = dict((table or {}).get("rows") or {})
    if "frozen" not in rows:
        return dict(table or {})
    rows["this"] = {**rows["frozen"], "title": ROW_TITLES["this"]}
    deltas = {
        f"vs_{other}": {m: rows["this"][m] - rows[other][m] for m in METRICS}
        for other in ("frozen", "active")
        if other in rows
    }
    return {**table, "rows": rows, "deltas": deltas, "serves": "frozen backbone"}


def gate_summary(table: dict) -> str:
    """One line: held-out macro F1 of each row and the size of the held-out part."""
    rows = (table or {}).get("rows") or {}
    if not rows:
        return (table or {}).get("skipped") or "no held-out figures"
    parts = [
        f"{ROW_TITLES[name]} {rows[name]['macro_f1']:.3f}"
        for name in ROWS
        if isinstance((rows.get(name) or {}).get("macro_f1"), int | float)
    ]
    return (
        "held-out macro F1: "
        + ", ".join(parts)
        + f" ({table.get('n_heldout_slices', '?')} slices of "
        f"{table.get('n_heldout_patients', '?')} patients)"
    )
