"""Retrieval and embedding-quality metrics (pure numpy / scikit-learn, no torch, no Django).

Conventions used throughout (they are what `report.json` documents):

- A *query* has a true label and a ranked list of retrieved labels (best first), the labels of
  the reference slices an index returned for it. "Relevant" means "same label as the query".
- The classification metrics (per-class precision/recall/F1, macro F1, accuracy, confusion
  matrix) score the label of the top-1 retrieved slice as the predicted diagnosis.
- `precision_at_k`: mean over queries of the fraction of the top k that is relevant.
- `map_at_k`: mean over queries of AP@k = sum_i P@i * rel_i / (number of relevant items in the
  top k); a query with no relevant item in its top k scores 0. This is the usual CBIR/hashing
  "mAP@k" (the database here holds hundreds of relevant items per query, so normalising by the
  total number of relevant items would make AP@10 meaningless).
- `recall_at_k` is recall in the metric-learning sense (Oh Song et al. 2016): the fraction of
  queries with at least one relevant item in the top k.
- Embedding geometry is measured on L2-normalised embeddings with the Euclidean distance (the
  distance the paper's contrastive loss uses; on the unit sphere it is a monotone function of
  cosine, ||a-b||^2 = 2 - 2 cos). `silhouette` uses that same Euclidean distance.
- `intra_class_distance`: mean pairwise distance between embeddings of the same class, averaged
  over classes (each class weighs the same). `inter_class_distance`: mean distance between the
  class centres (means of the class embeddings), over all pairs of classes. Those are the
  paper's compactness/separation figures; `inter_class_sample_distance` (mean distance between
  samples of different classes) is reported as well, since it is on the same scale as the
  intra-class figure.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, silhouette_score

RECALL_KS: tuple[int, ...] = (1, 2, 4, 8)


def l2_normalise(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, eps)


def classification_metrics(
    y_true: Sequence, y_pred: Sequence, *, labels: Sequence[str] | None = None
) -> dict:
    """Per-class precision/recall/F1, macro F1, accuracy and the confusion matrix.

    `labels` fixes the class order (default: sorted union of true and predicted labels). A class
    that is never predicted has precision 0 (sklearn's zero_division=0), not NaN.
    """
    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if labels is None:
        labels = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    labels = [str(label) for label in labels]
    p, r, f, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "per_class": per_class,
        "macro_f1": float(np.mean(f)) if len(labels) else 0.0,
        "accuracy": float(np.mean(y_true == y_pred)) if y_true.size else 0.0,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "labels": labels,
    }


def _relevance(query_labels: Sequence, retrieved_labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (Q, k) matrix: retrieved item j of query i has the query's label."""
    retrieved = np.asarray(retrieved_labels).astype(str)
    if retrieved.ndim != 2:
        raise ValueError("retrieved_labels must be a (Q, k) array")
    if retrieved.shape[1] < k:
        raise ValueError(f"need at least {k} retrieved items per query, got {retrieved.shape[1]}")
    q = np.asarray(query_labels).astype(str)[:, None]
    return retrieved[:, :k] == q


def precision_at_k(query_labels: Sequence, retrieved_labels: np.ndarray, *, k: int) -> float:
    """Mean fraction of relevant items among each query's top k."""
    rel = _relevance(query_labels, retrieved_labels, k)
    return float(rel.mean()) if rel.size else 0.0


def average_precision_at_k(relevant: np.ndarray) -> np.ndarray:
    """AP@k per row of a boolean (Q, k) relevance matrix (see the module docstring)."""
    rel = np.asarray(relevant, dtype=np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    precision_at_i = np.cumsum(rel, axis=1) / ranks
    n_rel = rel.sum(axis=1)
    ap = (precision_at_i * rel).sum(axis=1)
    return np.divide(ap, n_rel, out=np.zeros_like(ap), where=n_rel > 0)


def map_at_k(query_labels: Sequence, retrieved_labels: np.ndarray, *, k: int) -> float:
    """Mean over queries of AP@k."""
    rel = _relevance(query_labels, retrieved_labels, k)
    return float(average_precision_at_k(rel).mean()) if rel.size else 0.0


def recall_at_k(
    query_labels: Sequence, retrieved_labels: np.ndarray, *, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """{str(k): fraction of queries with at least one relevant item in the top k}."""
    out: dict[str, float] = {}
    for k in ks:
        rel = _relevance(query_labels, retrieved_labels, k)
        out[str(k)] = float(rel.any(axis=1).mean()) if rel.size else 0.0
    return out


def knn_vote(retrieved_labels: np.ndarray, *, k: int, scores: np.ndarray | None = None) -> list:
    """Predicted label per query by a vote over its top k (score-weighted when `scores` given).

    Ties go to the label that appears first in the ranking (the better-ranked one).
    """
    retrieved = np.asarray(retrieved_labels).astype(str)[:, :k]
    weights = np.ones(retrieved.shape) if scores is None else np.asarray(scores)[:, :k]
    preds = []
    for row, w in zip(retrieved, weights, strict=True):
        totals: dict[str, float] = {}
        for label, weight in zip(row, w, strict=True):
            totals[label] = totals.get(label, 0.0) + float(weight)
        best = max(totals.values())
        preds.append(next(label for label in row if totals[label] == best))
    return preds


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))


def intra_class_distance(embeddings: np.ndarray, labels: Sequence) -> float:
    """Mean pairwise Euclidean distance within each class, averaged over classes.

    Classes with a single sample have no pairs and are skipped.
    """
    x = l2_normalise(embeddings)
    labels = np.asarray(labels).astype(str)
    values = []
    for label in np.unique(labels):
        members = x[labels == label]
        n = len(members)
        if n < 2:
            continue
        d = _pairwise(members, members)
        values.append(d[np.triu_indices(n, k=1)].mean())
    return float(np.mean(values)) if values else 0.0


def class_centres(embeddings: np.ndarray, labels: Sequence) -> dict[str, np.ndarray]:
    """Mean L2-normalised embedding of each class (not re-normalised)."""
    x = l2_normalise(embeddings)
    labels = np.asarray(labels).astype(str)
    return {label: x[labels == label].mean(axis=0) for label in np.unique(labels)}


def inter_class_distance(embeddings: np.ndarray, labels: Sequence) -> float:
    """Mean Euclidean distance between class centres over all pairs of classes."""
    centres = np.stack(list(class_centres(embeddings, labels).values()))
    n = len(centres)
    if n < 2:
        return 0.0
    d = _pairwise(centres, centres)
    return float(d[np.triu_indices(n, k=1)].mean())


def inter_class_sample_distance(embeddings: np.ndarray, labels: Sequence) -> float:
    """Mean Euclidean distance between samples of different classes."""
    x = l2_normalise(embeddings)
    labels = np.asarray(labels).astype(str)
    d = _pairwise(x, x)
    different = labels[:, None] != labels[None, :]
    return float(d[different].mean()) if different.any() else 0.0


def silhouette(embeddings: np.ndarray, labels: Sequence, *, seed: int = 0) -> float:
    """Silhouette score of the L2-normalised embeddings (Euclidean); 0.0 when undefined
    (fewer than 2 classes, or every sample its own class). Subsamples above 5,000 points."""
    x = l2_normalise(embeddings)
    labels = np.asarray(labels).astype(str)
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return 0.0
    sample = 5000 if len(labels) > 5000 else None
    return float(
        silhouette_score(x, labels, metric="euclidean", sample_size=sample, random_state=seed)
    )


def embedding_metrics(embeddings: np.ndarray, labels: Sequence) -> dict[str, float]:
    """Silhouette and intra/inter-class distances of one set of embeddings."""
    return {
        "silhouette": silhouette(embeddings, labels),
        "intra_class_distance": intra_class_distance(embeddings, labels),
        "inter_class_distance": inter_class_distance(embeddings, labels),
        "inter_class_sample_distance": inter_class_sample_distance(embeddings, labels),
    }


def retrieval_metrics(
    query_labels: Sequence,
    retrieved_labels: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    predicted: Sequence | None = None,
) -> dict:
    """All ranking and top-1 classification metrics for one set of queries.

    `predicted` overrides the top-1 label as the predicted class (e.g. a k-NN vote).
    """
    retrieved = np.asarray(retrieved_labels).astype(str)
    y_pred = retrieved[:, 0] if predicted is None else np.asarray(predicted).astype(str)
    out = classification_metrics(query_labels, y_pred, labels=labels)
    out["map_at_10"] = map_at_k(query_labels, retrieved, k=10)
    out["precision_at_10"] = precision_at_k(query_labels, retrieved, k=10)
    out["recall_at_k"] = recall_at_k(query_labels, retrieved)
    return out


# --- Decisions: class-balanced similarity-weighted kNN vote, abstention, case level ---------


def class_priors(library_labels: Sequence, classes: Sequence[str]) -> np.ndarray:
    """Share of each class (in `classes` order) among the library's labels; a class absent from
    the library gets the smallest positive share, so dividing by it never divides by zero."""
    lib = np.asarray(library_labels).astype(str)
    counts = np.array([(lib == str(c)).sum() for c in classes], dtype=np.float64)
    counts = np.maximum(counts, 0.5)
    return counts / counts.sum()


def balanced_knn_vote(
    retrieved_labels: np.ndarray,
    scores: np.ndarray,
    *,
    k: int,
    classes: Sequence[str],
    priors: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Similarity-weighted vote over each query's top k, corrected for class balance.

    Each hit votes for its label with weight max(similarity, 0); a class's total is divided by
    its prior in the library (`priors`, in `classes` order; None = no correction), so a class
    that fills 80 % of the library does not win by sheer numbers. The shares are normalised to
    sum 1 (a query whose top k all have similarity <= 0 counts hits instead).

    Returns {"predicted": labels (Q,), "probs": (Q, C) vote shares, "top_similarity": (Q,)
    similarity of the best hit, "margin": (Q,) best share minus second-best share}. Ties go to
    the class of the better-ranked hit.
    """
    retrieved = np.asarray(retrieved_labels).astype(str)[:, :k]
    sims = np.asarray(scores, dtype=np.float64)[:, :k]
    classes = [str(c) for c in classes]
    lookup = {c: i for i, c in enumerate(classes)}
    q = len(retrieved)
    n_cls = len(classes)
    idx = np.vectorize(lambda s: lookup.get(s, -1), otypes=[np.int64])(retrieved)
    weights = np.maximum(sims, 0.0)
    dead = weights.sum(axis=1) <= 0
    weights[dead] = 1.0
    mass = np.zeros((q, n_cls))
    for j in range(retrieved.shape[1]):
        ok = idx[:, j] >= 0
        np.add.at(mass, (np.flatnonzero(ok), idx[ok, j]), weights[ok, j])
    if priors is not None:
        mass = mass / np.asarray(priors, dtype=np.float64)[None, :]
    total = mass.sum(axis=1, keepdims=True)
    probs = np.divide(mass, total, out=np.zeros_like(mass), where=total > 0)
    best = probs.max(axis=1)
    predicted = []
    for i in range(q):
        winners = {classes[c] for c in np.flatnonzero(np.isclose(probs[i], best[i]))}
        predicted.append(next((lab for lab in retrieved[i] if lab in winners), classes[0]))
    ordered = np.sort(probs, axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if n_cls > 1 else 0.0)
    return {
        "predicted": np.asarray(predicted),
        "probs": probs,
        "top_similarity": sims[:, 0] if sims.shape[1] else np.zeros(q),
        "margin": margin,
    }


def calibrate_abstain(
    top_sim: np.ndarray,
    margin: np.ndarray,
    correct: np.ndarray,
    *,
    target_coverage: float = 0.9,
    target_accuracy: float | None = None,
) -> dict:
    """Abstention thresholds calibrated on validation queries (pure function, stable API).

    Inputs, one per validation query: the best hit's similarity, the vote margin (see
    `balanced_knn_vote`) and whether the decision was correct. The rule abstains ("no close
    match") when `top_sim < min_similarity` or `margin < min_margin`.

    Thresholds: `min_similarity` is the (1 - target_coverage) / 2 quantile of the validation
    top similarities (a query less similar to the library than almost all validation queries
    has no close match); `min_margin` is then the smallest margin threshold that reaches
    `target_accuracy` on the queries kept (when given and reachable), else the one that keeps
    `target_coverage` overall. Returns {"min_similarity", "min_margin", "coverage",
    "accuracy_at_coverage", "accuracy_all", "n"} measured on the validation queries.
    """
    top_sim = np.asarray(top_sim, dtype=np.float64)
    margin = np.asarray(margin, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    n = len(correct)
    if not (len(top_sim) == len(margin) == n):
        raise ValueError("top_sim, margin and correct must have the same length")
    if not 0.0 < target_coverage <= 1.0:
        raise ValueError(f"target_coverage must be in (0, 1], got {target_coverage}")
    if n == 0:
        return {
            "min_similarity": -1.0,
            "min_margin": 0.0,
            "coverage": 1.0,
            "accuracy_at_coverage": 0.0,
            "accuracy_all": 0.0,
            "n": 0,
        }
    sim_share = (1.0 - target_coverage) / 2.0
    min_sim = float(np.quantile(top_sim, sim_share)) if sim_share > 0 else float(top_sim.min())
    keep_sim = top_sim >= min_sim
    candidates = np.unique(np.r_[0.0, margin[keep_sim]])
    min_margin = 0.0
    chosen = None
    if target_accuracy is not None:
        for t in candidates:  # ascending: the first that reaches the target keeps the most
            kept = keep_sim & (margin >= t)
            if kept.any() and correct[kept].mean() >= target_accuracy:
                chosen = float(t)
                break
    if chosen is None:
        # the margin threshold that leaves target_coverage of all queries answered
        for t in candidates[::-1]:
            if (keep_sim & (margin >= t)).mean() >= target_coverage:
                chosen = float(t)
                break
    min_margin = 0.0 if chosen is None else chosen
    kept = ~abstains(top_sim, margin, {"min_similarity": min_sim, "min_margin": min_margin})
    return {
        "min_similarity": min_sim,
        "min_margin": min_margin,
        "coverage": float(kept.mean()),
        "accuracy_at_coverage": float(correct[kept].mean()) if kept.any() else 0.0,
        "accuracy_all": float(correct.mean()),
        "n": int(n),
    }


def abstains(top_sim: np.ndarray, margin: np.ndarray, thresholds: dict) -> np.ndarray:
    """Boolean array: True where the decision is "no close match" under `thresholds` (from
    `calibrate_abstain`): best similarity or vote margin below its threshold."""
    top_sim = np.atleast_1d(np.asarray(top_sim, dtype=np.float64))
    margin = np.atleast_1d(np.asarray(margin, dtype=np.float64))
    return (top_sim < float(thresholds.get("min_similarity", -np.inf))) | (
        margin < float(thresholds.get("min_margin", 0.0))
    )


def coverage_metrics(correct: np.ndarray, abstained: np.ndarray) -> dict[str, float]:
    """Coverage (share answered) and accuracy on the answered queries."""
    correct = np.asarray(correct, dtype=bool)
    answered = ~np.asarray(abstained, dtype=bool)
    return {
        "coverage": float(answered.mean()) if answered.size else 0.0,
        "accuracy_at_coverage": float(correct[answered].mean()) if answered.any() else 0.0,
    }


def case_metrics(
    query_patients: Sequence,
    query_labels: Sequence,
    retrieved_patients: np.ndarray,
    retrieved_labels: np.ndarray,
    scores: np.ndarray,
    *,
    labels: Sequence[str] | None = None,
    k_cases: int = 10,
) -> dict:
    """Case-level retrieval: the slices of one query patient are pooled into one case query.

    Aggregation (as `query.rank_cases` with aggregate "sum"): a reference case's score is the
    mean over the query patient's slices of the best similarity any of its slices reaches in
    that slice's hit list (0 when absent). Reference cases are ranked by that score; the case
    label is the label of the best-ranked case (top-1 case label); case mAP@k_cases is AP over
    the ranked cases (relevant = same label). Returns the classification metrics of the top-1
    case label plus `case_map_at_10` and `n_cases`.
    """
    qp = np.asarray(query_patients).astype(str)
    ql = np.asarray(query_labels).astype(str)
    rp = np.asarray(retrieved_patients).astype(str)
    rl = np.asarray(retrieved_labels).astype(str)
    sc = np.asarray(scores, dtype=np.float64)
    true, pred, rel_rows = [], [], []
    for patient in sorted(set(qp.tolist())):
        rows = np.flatnonzero(qp == patient)
        best: dict[str, dict[int, float]] = {}
        case_label: dict[str, str] = {}
        for qi, r in enumerate(rows):
            for j in range(rp.shape[1]):
                case = rp[r, j]
                per_q = best.setdefault(case, {})
                per_q[qi] = max(per_q.get(qi, -np.inf), sc[r, j])
                case_label[case] = rl[r, j]
        ranked = sorted(best, key=lambda c: (-sum(best[c].values()) / len(rows), c))
        label = ql[rows[0]]
        true.append(label)
        pred.append(case_label[ranked[0]])
        rel = np.zeros(k_cases, dtype=bool)
        for i, case in enumerate(ranked[:k_cases]):
            rel[i] = case_label[case] == label
        rel_rows.append(rel)
    out = classification_metrics(true, pred, labels=labels)
    rel_m = np.vstack(rel_rows) if rel_rows else np.zeros((0, k_cases), bool)
    return {
        "case_macro_f1": out["macro_f1"],
        "case_accuracy": out["accuracy"],
        "case_map_at_10": float(average_precision_at_k(rel_m).mean()) if rel_rows else 0.0,
        "n_cases": len(true),
    }
