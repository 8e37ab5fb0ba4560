"""The evaluation's rows: how each variant embeds one fold and decides a diagnosis.

Every row gets the same fold: frozen deep features and train-standardised radiomics of the
train rows (the reference library) and of the held-out rows (the queries). A row returns the
library and query embeddings (searched by the evaluation with the configured index) and,
when it has its own decision rule, the predicted labels; otherwise the top-1 retrieved label
is the decision.

Rows (see docs/evaluation.md for what each one measures):
- `radiomics_only`, `deep_only`: no training (frozen); `deep_only_knn`: the frozen vector with
  the headline's decision rule (class-balanced weighted kNN vote, k 10);
- `pca_whiten`: centring + PCA whitening of the frozen vector (shrinkage 0.1, 256 axes);
- `linear_probe`: logistic regression on the frozen vector; its class probabilities are the
  decision and the embedding;
- trained heads, one change at a time from the recipe as first shipped (`RECIPES`):
  `deep_contrastive_v0` (batch 8 anchors + partners, one random negative per other class,
  margin 0.7, lr 1e-4, 10 epochs, no validation), `_b64` (batch 64), `_hn` (hardest in-batch
  negatives), `_hn_aug` (+ feature noise/dropout), `deep_contrastive` (+ early stopping on a
  patient-level validation split, up to 2 x --epochs), `deep_supcon` (SupCon, same fixes);
  `fused_contrastive` (ILD-FFN, hardest negatives and feature noise, --epochs / 2 epochs: its
  epochs cost ~25x a projection head's), `fused_contrastive_es` (early-stopped),
  `fused_contrastive_v0`, `fused_supcon` on request;
- `gated_fusion`: frozen vector + w x radiomics, w chosen on inner validation (0 = off);
- `adaptive` (the headline): `selection.select_embedding`, with abstention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from retrieval.engine import metrics

# Training recipes of the trained rows, from the recipe as first shipped ("v0") to the one
# with every fix ("fixed"); each intermediate recipe adds one change (docs/evaluation.md).
_V0 = {"batch_size": 8, "epochs": 10, "lr": 1e-4, "weight_decay": 1e-6}
RECIPES: dict[str, dict] = {
    "v0": _V0,
    "b64": {**_V0, "batch_size": 64},
    "hn": {**_V0, "hard_negatives": True},
    "hn_aug": {**_V0, "hard_negatives": True, "feature_noise": 0.2, "feature_dropout": 0.1},
    "fixed": {
        **_V0,
        "hard_negatives": True,
        "feature_noise": 0.2,
        "feature_dropout": 0.1,
        "epochs": 20,
        "patience": 4,
        "validate": True,  # early stopping on a patient-level validation split
    },
    "fused": {**_V0, "hard_negatives": True, "feature_noise": 0.2, "feature_dropout": 0.1},
}
# name -> (fusion, loss, recipe)
TRAINED: dict[str, tuple[str, str, str]] = {
    "deep_contrastive_v0": ("deep", "paper", "v0"),
    "deep_contrastive_b64": ("deep", "paper", "b64"),
    "deep_contrastive_hn": ("deep", "paper", "hn"),
    "deep_contrastive_hn_aug": ("deep", "paper", "hn_aug"),
    "deep_contrastive": ("deep", "paper", "fixed"),
    "deep_supcon": ("deep", "supcon", "fixed"),
    "fused_contrastive_v0": ("ildffn", "paper", "v0"),
    # ILD-FFN epochs cost ~25x a projection head's on CPU (an early-stopped run took 9 min per
    # COVID-CT fold under load): the default fused row gets the fixes but no validation pass
    # and half the epochs; fused_contrastive_es is the early-stopped one, on request
    "fused_contrastive": ("ildffn", "paper", "fused"),
    "fused_contrastive_es": ("ildffn", "paper", "fixed"),
    "fused_supcon": ("ildffn", "supcon", "fixed"),
    "radiomics_contrastive": ("radiomics", "paper", "fixed"),
}
HEADLINE = "adaptive"


@dataclass
class Row:
    """One variant on one fold."""

    emb_tr: np.ndarray
    emb_te: np.ndarray
    predicted: np.ndarray | None = None  # None: the top-1 retrieved label
    abstained: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass
class Fold:
    deep_tr: np.ndarray
    rad_tr: np.ndarray
    y_tr: np.ndarray  # class names
    patients_tr: np.ndarray
    deep_te: np.ndarray
    rad_te: np.ndarray
    classes: list[str]


def _validation_split(fold: Fold, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About 1/5 of the train patients held out (stratified by label) for early stopping."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([fold.classes.index(v) for v in fold.y_tr])
    n_splits = max(2, min(5, len(np.unique(fold.patients_tr))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
        tr, va = next(splitter.split(np.zeros(len(y)), y, fold.patients_tr))
    return tr, va


def trained_row(name: str, fold: Fold, *, config) -> Row:
    """A head trained on the fold's library (`TRAINED[name]`)."""
    from retrieval.engine.fusion import head_embed
    from retrieval.engine.training import TrainConfig, train_head

    fusion, loss, recipe = TRAINED[name]
    settings = dict(RECIPES[recipe])
    validate = settings.pop("validate", False)
    if config.epochs is not None:  # --epochs; an early-stopped deep head may run twice that
        settings["epochs"] = config.epochs * (2 if validate else 1)
    tc = TrainConfig(
        loss=loss,
        margin=config.margin,
        embed_dim=config.embed_dim,
        mode="head",
        seed=config.seed,
        fusion=fusion,
        reduce_deep=config.reduce_deep,
        device=config.device,
        **settings,
    )
    if recipe == "fused" and config.epochs is not None:
        settings["epochs"] = max(1, config.epochs // 2)
    y = np.array([fold.classes.index(v) for v in fold.y_tr])
    tr, va = _validation_split(fold, config.seed) if validate else (None, None)
    if tr is not None and len(np.unique(y[tr])) == len(np.unique(y)) and len(va):
        head, info = train_head(
            deep=fold.deep_tr[tr],
            rad=fold.rad_tr[tr],
            labels=y[tr],
            config=tc,
            val=(fold.deep_tr[va], fold.rad_tr[va], y[va]),
        )
    else:  # v0 recipe, or too few patients for a validation split: fixed epochs
        head, info = train_head(deep=fold.deep_tr, rad=fold.rad_tr, labels=y, config=tc)
    info = {k: v for k, v in info.items() if k != "loss_history"}
    return Row(
        emb_tr=head_embed(head, fusion, fold.deep_tr, fold.rad_tr),
        emb_te=head_embed(head, fusion, fold.deep_te, fold.rad_te),
        info=info,
    )


def _frozen_selection_config(seed: int, **overrides):
    from retrieval.engine.selection import SelectionConfig

    return SelectionConfig(seed=seed, **overrides)


def selection_row(fold: Fold, *, seed: int, restrict: dict | None = None) -> Row:
    """The headline (or, with `restrict`, a restricted selection such as the radiomics gate):
    inner-validation choice, kNN decision with the chosen k, abstention."""
    from retrieval.engine.fusion import head_embed
    from retrieval.engine.selection import knn_decisions, select_embedding

    cfg = _frozen_selection_config(seed, **(restrict or {}))
    sel = select_embedding(
        deep=fold.deep_tr,
        rad=fold.rad_tr,
        labels=fold.y_tr,
        patients=fold.patients_tr,
        config=cfg,
    )
    emb_tr = head_embed(sel.model, "adaptive", fold.deep_tr, fold.rad_tr)
    emb_te = head_embed(sel.model, "adaptive", fold.deep_te, fold.rad_te)
    d = knn_decisions(emb_tr, fold.y_tr, emb_te, k=sel.k, classes=fold.classes)
    abstained = metrics.abstains(d["top_similarity"], d["margin"], sel.thresholds)
    return Row(
        emb_tr=emb_tr,
        emb_te=emb_te,
        predicted=d["predicted"],
        abstained=abstained,
        info={"chosen": sel.chosen, "thresholds": sel.thresholds, **sel.info},
    )


def baseline_row(name: str, fold: Fold, *, seed: int) -> Row:
    """Rows without training of a head."""
    if name == "radiomics_only":
        return Row(metrics.l2_normalise(fold.rad_tr), metrics.l2_normalise(fold.rad_te))
    if name in ("deep_only", "deep_only_knn", "finetuned"):  # finetuned: the tuned fold
        tr, te = metrics.l2_normalise(fold.deep_tr), metrics.l2_normalise(fold.deep_te)
        if name in ("deep_only", "finetuned"):
            return Row(tr, te)
        from retrieval.engine.selection import knn_decisions

        d = knn_decisions(tr, fold.y_tr, te, k=10, classes=fold.classes)
        return Row(tr, te, predicted=d["predicted"])
    if name == "pca_whiten":
        from retrieval.engine.fusion import head_embed
        from retrieval.engine.selection import Candidate, SelectionConfig, build_embedding

        model = build_embedding(
            Candidate("whiten", 1.0, 0.0),
            deep=fold.deep_tr,
            rad=fold.rad_tr,
            config=SelectionConfig(seed=seed),
        )
        return Row(
            head_embed(model, "adaptive", fold.deep_tr, fold.rad_tr),
            head_embed(model, "adaptive", fold.deep_te, fold.rad_te),
        )
    if name == "linear_probe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(metrics.l2_normalise(fold.deep_tr))
        x_tr = scaler.transform(metrics.l2_normalise(fold.deep_tr))
        x_te = scaler.transform(metrics.l2_normalise(fold.deep_te))
        clf = LogisticRegression(C=0.05, max_iter=2000, class_weight="balanced")
        clf.fit(x_tr, fold.y_tr)
        p_tr, p_te = clf.predict_proba(x_tr), clf.predict_proba(x_te)
        return Row(p_tr, p_te, predicted=clf.classes_[p_te.argmax(axis=1)].astype(str))
    if name == "gated_fusion":
        return selection_row(fold, seed=seed, restrict={"transforms": ("raw",), "alphas": (1.0,)})
    if name == HEADLINE:
        return selection_row(fold, seed=seed)
    raise ValueError(f"unknown variant {name!r}")


def hierarchical_predictions(
    emb_tr: np.ndarray, y_tr: np.ndarray, patients_tr: np.ndarray, emb_te: np.ndarray, *, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-first search (query.rank_cases, hierarchical=True) of each held-out slice:
    (predicted class (Q,), labels of the first k slice hits (Q, k), padded with the last)."""
    from retrieval.engine.index import build_index
    from retrieval.engine.query import class_centroids, rank_cases

    index = build_index("exact", dim=emb_tr.shape[1])
    index.add(np.arange(len(emb_tr), dtype=np.int64), np.asarray(emb_tr, np.float32))
    case_ids = {p: i for i, p in enumerate(sorted(set(np.asarray(patients_tr).tolist())))}
    meta = {
        i: (case_ids[p], str(lab))
        for i, (p, lab) in enumerate(zip(patients_tr.tolist(), y_tr.tolist(), strict=True))
    }
    centroids = class_centroids(index=index, slice_meta=meta)
    predicted, retrieved = [], []
    for q in np.asarray(emb_te, np.float32):
        res = rank_cases(
            query_vectors=q[None],
            index=index,
            slice_meta=meta,
            k_slices=k,
            k_cases=1,
            hierarchical=True,
            centroids=centroids,
        )
        hits = [h.label for h in (res.slice_hits[0] if res.slice_hits else [])][:k]
        hits = hits or [res.predicted_label or ""]
        hits += [hits[-1]] * (k - len(hits))
        predicted.append(res.predicted_label)
        retrieved.append(hits)
    return np.asarray(predicted).astype(str), np.asarray(retrieved).astype(str)
