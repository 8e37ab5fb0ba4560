"""The headline embedding, chosen per training set by patient-level inner validation.

Trained heads alone lost to the frozen backbone on every 8-bit dataset measured (see
docs/evaluation.md), so the headline does not bet on training: it *chooses*, on held-out
patients of the training set itself, between the frozen vector and embeddings that add to it.

Candidates (`AdaptiveEmbedding`, fusion.py), every combination of
- transform of the frozen vector: "raw" (exactly deep_only) or "whiten" (centring + PCA
  whitening with shrinkage, fitted on the training rows);
- alpha: weight of the frozen part against a learned `ProjectionHead` (alpha 1 = no head; the
  head is trained with the training fixes: SupCon, early stopping on the inner validation
  split, feature-space noise and dropout, batch 64);
- w_rad: weight of the standardised radiomics part (0 = radiomics off);
and the k of the class-balanced similarity-weighted kNN vote (`metrics.balanced_knn_vote`).

Selection (`select_embedding`): `inner_folds`-fold StratifiedGroupKFold over the training
rows' patients (seeded); every candidate is scored by the macro F1 of its kNN decisions pooled
over the inner validation folds (each inner fold fits transforms and trains the head on its
own inner-train rows). The winner is the *simplest* candidate whose score is within `margin`
of the best (frozen raw, alpha 1, w 0 is the simplest of all): a learned or fused part has to
earn its place by more than noise. The chosen settings are then refitted on all training rows
(the head for the median early-stopped epoch count), and the abstention thresholds are
calibrated on the chosen candidate's pooled inner-validation decisions
(`metrics.calibrate_abstain`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from retrieval.engine import metrics
from retrieval.engine.fusion import AdaptiveEmbedding, head_embed
from retrieval.engine.training import TrainConfig, train_head

TRANSFORM_RANK = {"raw": 0, "centre": 1, "whiten": 1}


def default_head_config(seed: int = 0) -> TrainConfig:
    """The learned part's training: every fix of docs/evaluation.md's ablation."""
    return TrainConfig(
        loss="supcon",
        temperature=0.1,
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=64,
        epochs=40,
        embed_dim=128,
        fusion="deep",
        seed=seed,
        patience=6,
        feature_noise=0.2,
        feature_dropout=0.1,
        device="cpu",
    )


@dataclass
class SelectionConfig:
    """Search space and rules of the selection (defaults: the headline's)."""

    inner_folds: int = 3
    transforms: tuple[str, ...] = ("raw", "whiten")
    alphas: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4, 0.2)
    # up to 3: radiomics then weigh 9x the frozen part, so a dataset where radiomics alone wins
    # is not held below the radiomics-only row
    w_rads: tuple[float, ...] = (0.0, 0.3, 0.6, 1.0, 3.0)
    ks: tuple[int, ...] = (1, 5, 10)
    margin: float = 0.01  # macro F1 a more complex candidate must gain over a simpler one
    # The chosen candidate must also beat the frozen one on the inner validation rows with this
    # one-sided confidence (patient-level paired bootstrap); else the frozen vector is kept.
    # 0 switches the guard off.
    guard_confidence: float = 0.9
    guard_resamples: int = 1000
    whiten_dim: int = 256
    shrinkage: float = 0.1
    target_coverage: float = 0.9
    seed: int = 0
    head: TrainConfig | None = None  # None: default_head_config(seed)

    def head_config(self) -> TrainConfig:
        return self.head if self.head is not None else default_head_config(self.seed)


@dataclass(frozen=True)
class Candidate:
    transform: str
    alpha: float
    w_rad: float

    @property
    def name(self) -> str:
        return f"{self.transform}/a{self.alpha:g}/w{self.w_rad:g}"

    @property
    def complexity(self) -> tuple:
        # learned part > fused radiomics > whitening; within each, the smaller departure
        return (
            self.alpha < 1.0,
            self.w_rad > 0.0,
            TRANSFORM_RANK[self.transform],
            1.0 - self.alpha,
            self.w_rad,
        )


@dataclass
class Selection:
    """Result: the refitted embedding module, the decision's k, the chosen candidate, every
    candidate's inner score, the abstention thresholds and timing."""

    model: AdaptiveEmbedding
    k: int
    chosen: dict
    scores: dict[str, float]
    thresholds: dict
    info: dict = field(default_factory=dict)


def _candidates(config: SelectionConfig) -> list[Candidate]:
    out = [
        Candidate(t, float(a), float(w))
        for t in config.transforms
        for a in config.alphas
        for w in config.w_rads
    ]
    return sorted(set(out), key=lambda c: c.complexity)


def _inner_splits(patients: np.ndarray, labels: np.ndarray, config: SelectionConfig) -> list:
    """Patient-level stratified inner folds; [] when some class has fewer than 2 patients
    (nothing to validate on: the selection then keeps the frozen vector)."""
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    per_class = [len(np.unique(patients[labels == c])) for c in np.unique(labels)]
    if len(per_class) < 2 or min(per_class) < 2:
        return []
    folds = max(2, min(config.inner_folds, min(per_class)))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" on tiny sets
        splits = list(splitter.split(np.zeros(len(labels)), labels, patients))
    # an inner fold whose train side lacks a class cannot score a vote: drop it
    return [(tr, va) for tr, va in splits if len(np.unique(labels[tr])) == len(per_class)]


def build_embedding(
    candidate: Candidate,
    *,
    deep: np.ndarray,
    rad: np.ndarray,
    head=None,
    config: SelectionConfig,
) -> AdaptiveEmbedding:
    """An AdaptiveEmbedding for `candidate`, transform fitted on `deep`, with `head` (a
    trained ProjectionHead on the deep vector) as its learned part when alpha < 1."""
    use_head = candidate.alpha < 1.0 and head is not None
    whiten_dim = min(config.whiten_dim, deep.shape[1], max(len(deep) - 1, 1))
    model = AdaptiveEmbedding(
        deep.shape[1],
        rad.shape[1],
        transform=candidate.transform,
        whiten_dim=whiten_dim if candidate.transform == "whiten" else 0,
        head_dim=int(head.embed_dim) if use_head else 0,
        alpha=candidate.alpha if use_head else 1.0,
        w_rad=candidate.w_rad,
    )
    model.fit_transform_stats(deep, shrinkage=config.shrinkage)
    if use_head:
        model.head.load_state_dict(head.state_dict())
    return model.eval()


def knn_decisions(
    train_emb: np.ndarray,
    train_labels: np.ndarray,
    query_emb: np.ndarray,
    *,
    k: int,
    classes: list[str],
) -> dict[str, np.ndarray]:
    """Exact cosine search + class-balanced weighted kNN vote (see metrics.balanced_knn_vote)."""
    sims = metrics.l2_normalise(query_emb) @ metrics.l2_normalise(train_emb).T
    k = min(k, sims.shape[1])
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    train_labels = np.asarray(train_labels).astype(str)
    return metrics.balanced_knn_vote(
        train_labels[top],
        np.take_along_axis(sims, top, axis=1),
        k=k,
        classes=classes,
        priors=metrics.class_priors(train_labels, classes),
    )


def _part_similarities(cands, *, deep, rad, tr, va, head, config) -> dict:
    """Cosine similarities (val x train) of each unit-norm part of the candidates: the
    frozen part per transform, the learned part, the radiomics part. A candidate's cosine is
    their weighted mean (`_combined`), so the parts are embedded once per inner fold."""
    out = {}
    for t in sorted({c.transform for c in cands}):
        model = build_embedding(Candidate(t, 1.0, 0.0), deep=deep[tr], rad=rad[tr], config=config)
        e_tr = head_embed(model, "adaptive", deep[tr], rad[tr])
        e_va = head_embed(model, "adaptive", deep[va], rad[va])
        out[t] = e_va @ e_tr.T
    if head is not None:
        e_tr = head_embed(head, "deep", deep[tr], rad[tr])
        e_va = head_embed(head, "deep", deep[va], rad[va])
        out["head"] = e_va @ e_tr.T
    r_tr, r_va = metrics.l2_normalise(rad[tr]), metrics.l2_normalise(rad[va])
    out["rad"] = r_va @ r_tr.T
    return out


def _combined(parts: dict, c: Candidate) -> np.ndarray:
    """Cosine of the candidate's L2-normalised concatenation from the parts' cosines."""
    a = c.alpha if "head" in parts else 1.0
    total = parts[c.transform] * a * a
    norm = a * a
    if a < 1.0:
        total = total + parts["head"] * (1.0 - a) ** 2
        norm += (1.0 - a) ** 2
    if c.w_rad > 0:
        total = total + parts["rad"] * c.w_rad**2
        norm += c.w_rad**2
    return total / norm


def _vote(sims: np.ndarray, train_labels: np.ndarray, *, k: int, classes: list[str]) -> dict:
    k = min(k, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else None
    if top is None:
        top = np.argsort(-sims, axis=1, kind="stable")
    else:  # order the k best
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
    train_labels = np.asarray(train_labels).astype(str)
    return metrics.balanced_knn_vote(
        train_labels[top],
        np.take_along_axis(sims, top, axis=1),
        k=k,
        classes=classes,
        priors=metrics.class_priors(train_labels, classes),
    )


def macro_f1_rows(y: np.ndarray, pred: np.ndarray, weights: np.ndarray, n_classes: int):
    """Macro F1 over `n_classes` (a class without true or predicted rows scores 0, as
    sklearn's with `labels`) of integer labels `y` and predictions `pred` (`n_classes` = none
    of them: wrong for every class), once for each row of `weights` (R, N): how often each
    sample row counts (bootstrap resamples)."""
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    eye = np.eye(n_classes + 1)[:, :n_classes]
    t, p = eye[np.asarray(y)], eye[np.asarray(pred)]  # (N, C) one-hot
    tp = w @ (t * p)
    fp = w @ ((1 - t) * p)
    fn = w @ (t * (1 - p))
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    return f1.mean(axis=1)


def frozen_guard(
    *,
    labels: np.ndarray,
    chosen_pred: np.ndarray,
    frozen_pred: np.ndarray,
    patients: np.ndarray,
    confidence: float,
    resamples: int,
    seed: int = 0,
) -> dict:
    """Paired, patient-level bootstrap of the macro-F1 gain of the chosen candidate over the
    frozen one on the same inner-validation rows: resample patients with replacement (all
    their rows together), score both prediction vectors on each resample. The gain is kept
    when its lower bound at `confidence` (one-sided) is above 0."""
    classes = sorted(set(np.asarray(labels).astype(str).tolist()))
    index = {c: i for i, c in enumerate(classes)}
    n = len(classes)
    y = np.array([index[v] for v in np.asarray(labels).astype(str)])
    a = np.array([index.get(v, n) for v in np.asarray(chosen_pred).astype(str)])
    b = np.array([index.get(v, n) for v in np.asarray(frozen_pred).astype(str)])
    groups, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(resamples, len(groups)))
    counts = np.zeros((resamples, len(groups)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    weights = counts[:, inverse]  # (R, N): each row weighted by its patient's draw count
    ones = np.ones((1, len(y)))
    gain = float(macro_f1_rows(y, a, ones, n)[0] - macro_f1_rows(y, b, ones, n)[0])
    boot = macro_f1_rows(y, a, weights, n) - macro_f1_rows(y, b, weights, n)
    lower = float(np.quantile(boot, 1.0 - confidence))
    return {
        "gain": round(gain, 4),
        "lower": round(lower, 4),
        "confidence": confidence,
        "resamples": resamples,
        "patients": len(groups),
        "kept": bool(lower > 0.0),
    }


def select_embedding(
    *,
    deep: np.ndarray,
    rad: np.ndarray,
    labels: np.ndarray,
    patients: np.ndarray,
    config: SelectionConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Selection:
    """Choose and refit the headline embedding on training rows (see module docstring).

    `rad` must already be standardised; `labels` are class names or ids; `patients` group the
    rows (no patient is on both sides of an inner split)."""
    config = config or SelectionConfig()
    t0 = time.perf_counter()
    deep = np.asarray(deep, np.float32)
    rad = np.asarray(rad, np.float32)
    labels_s = np.asarray(labels).astype(str)
    classes = sorted(set(labels_s.tolist()))
    y = np.array([classes.index(v) for v in labels_s], dtype=np.int64)
    patients = np.asarray(patients).astype(str)
    splits = _inner_splits(patients, y, config)
    cands = _candidates(config) if splits else [Candidate("raw", 1.0, 0.0)]
    need_head = any(c.alpha < 1.0 for c in cands)
    head_cfg = config.head_config()
    pooled = {(c, k): np.zeros(len(y), dtype=object) for c in cands for k in config.ks}
    top_sim = {(c, k): np.zeros(len(y)) for c in cands for k in config.ks}
    margin = {(c, k): np.zeros(len(y)) for c in cands for k in config.ks}
    best_epochs: list[int] = []
    for f, (tr, va) in enumerate(splits):
        head = None
        if need_head and len(np.unique(y[tr])) > 1:
            head, info = train_head(
                deep=deep[tr],
                rad=rad[tr],
                labels=y[tr],
                config=head_cfg,
                val=(deep[va], rad[va], y[va]),
            )
            best_epochs.append(int(info.get("best_epoch") or info["epochs_run"]))
        parts = _part_similarities(
            cands, deep=deep, rad=rad, tr=tr, va=va, head=head, config=config
        )
        for c in cands:
            sims = _combined(parts, c)
            for k in config.ks:
                d = _vote(sims, labels_s[tr], k=k, classes=classes)
                pooled[(c, k)][va] = d["predicted"]
                top_sim[(c, k)][va] = d["top_similarity"]
                margin[(c, k)][va] = d["margin"]
        if progress:
            progress(f + 1, len(splits) + 1)
    if not splits:
        model = build_embedding(cands[0], deep=deep, rad=rad, config=config)
        return Selection(
            model=model,
            k=1,
            chosen={"candidate": cands[0].name, "transform": "raw", "alpha": 1.0, "w_rad": 0.0,
                    "k": 1, "reason": "fewer than 2 patients in some class: frozen kept"},
            scores={},
            thresholds=metrics.calibrate_abstain([], [], []),
            info={"inner_folds": 0, "seconds": round(time.perf_counter() - t0, 1)},
        )  # fmt: skip
    scores: dict[tuple, float] = {
        key: metrics.classification_metrics(labels_s, pred.astype(str), labels=classes)["macro_f1"]
        for key, pred in pooled.items()
    }
    # best k per candidate (ties: the larger k, a steadier vote)
    best_k = {c: max(config.ks, key=lambda k, c=c: (round(scores[(c, k)], 6), k)) for c in cands}
    cand_score = {c: scores[(c, best_k[c])] for c in cands}
    top = max(cand_score.values())
    chosen = next(c for c in cands if cand_score[c] >= top - config.margin)  # simplest first
    frozen = Candidate("raw", 1.0, 0.0)
    k = best_k[chosen]
    # The reference is the frozen vector's nearest neighbour (k 1): the deep_only baseline
    # itself, the thing the served embedding must beat; a vote on frozen vectors is a choice
    # like any other and must beat it too.
    ref_k = 1 if 1 in config.ks else best_k[frozen]
    guard = None
    if (chosen, k) != (frozen, ref_k) and frozen in cand_score and config.guard_confidence > 0:
        # The best of 150 settings scored on the same rows is optimistic (winner's curse):
        # a gain that resampling the validation patients does not keep above 0 is not served.
        guard = frozen_guard(
            labels=labels_s,
            chosen_pred=pooled[(chosen, k)],
            frozen_pred=pooled[(frozen, ref_k)],
            patients=patients,
            confidence=config.guard_confidence,
            resamples=config.guard_resamples,
            seed=config.seed,
        )
        guard["candidate"] = f"{chosen.name} k {k}"
        guard["reference"] = f"{frozen.name} k {ref_k}"
        if not guard["kept"]:
            chosen, k = frozen, ref_k
    correct = pooled[(chosen, k)].astype(str) == labels_s
    thresholds = metrics.calibrate_abstain(
        top_sim[(chosen, k)],
        margin[(chosen, k)],
        correct,
        target_coverage=config.target_coverage,
    )
    # refit on every training row
    head = None
    refit_epochs = None
    if chosen.alpha < 1.0:
        refit_epochs = max(1, int(np.median(best_epochs))) if best_epochs else head_cfg.epochs
        refit_cfg = TrainConfig(**{**asdict(head_cfg), "epochs": refit_epochs, "patience": None})
        head, _ = train_head(deep=deep, rad=rad, labels=y, config=refit_cfg)
    model = build_embedding(chosen, deep=deep, rad=rad, head=head, config=config)
    if progress:
        progress(len(splits) + 1, len(splits) + 1)
    return Selection(
        model=model,
        k=int(k),
        chosen={
            "candidate": chosen.name,
            "transform": chosen.transform,
            "alpha": chosen.alpha,
            "w_rad": chosen.w_rad,
            "k": int(k),
            "inner_macro_f1": float(scores[(chosen, k)]),
            "inner_macro_f1_best": float(top),
            # the frozen vector's top-1 (the deep_only rule), the guard's reference
            "inner_macro_f1_frozen": float(scores.get((frozen, ref_k), np.nan)),
            "head_epochs": refit_epochs,
            "guard": guard,
        },
        scores={c.name: float(v) for c, v in cand_score.items()},
        thresholds=thresholds,
        info={
            "inner_folds": len(splits),
            "inner_best_epochs": best_epochs,
            "seconds": round(time.perf_counter() - t0, 1),
            "torch_threads": torch.get_num_threads(),
        },
    )
