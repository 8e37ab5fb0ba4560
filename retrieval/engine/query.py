"""From query slices to ranked reference cases and a suggested diagnosis.

A study is queried with the embeddings of its usable slices. Each query slice retrieves its
nearest reference slices from a `VectorIndex` (slice level); the hits are grouped by the
reference case they belong to (case level); the top cases vote for a diagnosis.

Case score (`aggregate`):
- "sum" (default): the mean over the query slices of the best similarity that the case reaches
  among that query slice's hits (0 when the case is not among them). A case similar to many
  query slices ranks above one that matches a single slice very well, and a case with many
  near-duplicate slices gets no extra weight from one query slice. Range [-1, 1].
- "max": the best single (query slice, reference slice) similarity.
For every case the best pair (query slice index, reference slice id, similarity) is kept: the
review page shows it side by side.

Depth: each query slice contributes its top `k_slices` hits; when they cover fewer than
`k_cases` distinct cases (slices of one case cluster together) the depth doubles, searching the
index deeper if needed, until `k_cases` cases are found or the index is exhausted.

Votes (similarity-weighted, class-balanced): the top `k_cases` cases vote for their label with
weight max(score, 0); each label's votes are divided by that label's share of the library's
cases (`class_prior`: computed from `slice_meta` unless given), so a class that fills most of the
library does not win by numbers alone; the distribution is normalised to sum 1 and the suggested
label is the heaviest one (ties: label name). `balance=False` keeps the raw similarity-weighted
votes. With `label_filter` every case has that label (the distribution is then trivially {label:
1}); ask without the filter for the suggestion.

Abstain ("no close match"): `top_similarity` is the best single (query slice, reference slice)
cosine among the ranked cases and `vote_margin` the share of the heaviest label minus that of
the runner-up (1.0 when one label has every vote). With `abstain` thresholds
{"min_top_similarity": float, "min_vote_margin": float} (calibrated on validation and stored in
the model; see `abstain_thresholds`), the result abstains when either figure is below its
threshold: `abstained` is True, `abstain_reason` says which, and `suggested_label` is None (the
votes stay, for display). A missing threshold never abstains.

`label_filter`: only hits of that label count; the index is searched deeper (over-fetch x4,
then doubling) until k_cases cases of that label are found or the index is exhausted.

Hierarchical mode (Hao et al. 2022): first predict the class -- the class centroid (mean unit
vector of the class's reference slices, renormalised) most similar to the mean query vector --
then search within that class only (the `label_filter` machinery). Centroids can be passed in
(cache them: computing them reads every vector of the index) or are computed here.

Slice ids are the index's ids (the caller's embedding ids); `slice_meta` maps them to
(case id, label). Index hits without metadata (an index ahead of its metadata) are skipped.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from retrieval.engine.index.base import VectorIndex, normalize

DEFAULT_K_SLICES = 20
AGGREGATES = ("sum", "max")


# Case scores are compared to this many decimals when ranking cases.
SCORE_DECIMALS = 5


@dataclass
class SliceHit:
    """One retrieved reference slice for one query slice."""

    slice_id: int
    case_id: int
    label: str
    score: float


@dataclass
class CaseHit:
    """One reference case in the ranking, with its best matching slice pair."""

    case_id: int
    label: str
    score: float
    best_slice_id: int
    query_slice_index: int
    n_hits: int
    best_score: float = 0.0


@dataclass
class QueryResult:
    """Ranked cases, the suggested diagnosis and its normalised vote distribution; whether
    the query abstained ("no close match") and the figures that decided it."""

    cases: list[CaseHit]
    suggested_label: str | None
    votes: dict[str, float]
    predicted_label: str | None = None  # hierarchical mode: the class searched within
    class_scores: dict[str, float] = field(default_factory=dict)  # cosine to each centroid
    slice_hits: list[list[SliceHit]] = field(default_factory=list)  # per query slice, used hits
    top_similarity: float | None = None  # best (query slice, reference slice) cosine
    vote_margin: float | None = None  # heaviest label's share minus the runner-up's
    abstained: bool = False
    abstain_reason: str = ""
    voted_label: str | None = None  # the heaviest label, also when the query abstained


ABSTAIN_KEYS = ("min_top_similarity", "min_vote_margin")
# The names `retrieval.engine.metrics.calibrate_abstain` writes (the recipe stores its output).
ABSTAIN_ALIASES = {"min_top_similarity": "min_similarity", "min_vote_margin": "min_margin"}


def abstain_thresholds(*sources: dict | None) -> dict[str, float | None]:
    """The abstain thresholds of a model: the `"abstain"` entry of the first of `sources`
    (its config, then its metrics) that has one, each key a float (`ABSTAIN_KEYS`, or the
    calibration's names `ABSTAIN_ALIASES`). Anything missing or unreadable is None, which
    never abstains."""
    found = (s.get("abstain") for s in sources if isinstance(s, dict))
    raw = next((a for a in found if isinstance(a, dict)), None)
    out: dict[str, float | None] = dict.fromkeys(ABSTAIN_KEYS)
    if isinstance(raw, dict):
        for key in ABSTAIN_KEYS:
            value = raw.get(key, raw.get(ABSTAIN_ALIASES[key]))
            if isinstance(value, int | float) and np.isfinite(value):
                out[key] = float(value)
    return out


def abstain_decide(
    *, top_similarity: float | None, vote_margin: float | None, thresholds: dict | None
) -> tuple[bool, str]:
    """(abstained, reason): below either threshold abstains; a None threshold never does."""
    th = thresholds or {}
    reasons = []
    low_sim = th.get("min_top_similarity")
    if low_sim is not None and top_similarity is not None and top_similarity < low_sim:
        reasons.append(f"best similarity {top_similarity:.3f} is below the threshold {low_sim:.3f}")
    low_margin = th.get("min_vote_margin")
    if low_margin is not None and vote_margin is not None and vote_margin < low_margin:
        reasons.append(f"vote margin {vote_margin:.3f} is below the threshold {low_margin:.3f}")
    return bool(reasons), "; ".join(reasons)


def class_prior(slice_meta: dict[int, tuple[int, str]]) -> dict[str, float]:
    """Each label's share of the distinct cases in `slice_meta` (the library's class balance)."""
    labels = {case: label for case, label in slice_meta.values()}
    counts: dict[str, int] = defaultdict(int)
    for label in labels.values():
        counts[label] += 1
    total = sum(counts.values())
    return {label: n / total for label, n in counts.items()} if total else {}


def class_centroids(
    *, index: VectorIndex, slice_meta: dict[int, tuple[int, str]]
) -> dict[str, np.ndarray]:
    """Unit mean vector of each label's slices in `index` (ids missing from meta skipped)."""
    ids = index.ids()
    known = np.array([int(i) in slice_meta for i in ids], dtype=bool)
    ids = ids[known]
    if not len(ids):
        return {}
    vectors = index.get_vectors(ids)
    labels = np.array([slice_meta[int(i)][1] for i in ids])
    out = {}
    for label in sorted(set(labels.tolist())):
        mean = vectors[labels == label].mean(axis=0)
        out[label] = normalize(mean[None, :])[0]
    return out


def predict_class(query_vectors: np.ndarray, centroids: dict[str, np.ndarray]) -> dict[str, float]:
    """Cosine of the mean query vector to each class centroid, best first."""
    q = normalize(np.atleast_2d(query_vectors)).mean(axis=0)
    q = normalize(q[None, :])[0]
    scores = {
        label: float(normalize(np.asarray(c)[None, :])[0] @ q) for label, c in centroids.items()
    }
    return dict(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))


def _eligible(
    ids: np.ndarray,
    scores: np.ndarray,
    slice_meta: dict[int, tuple[int, str]],
    target: str | None,
) -> list[list[SliceHit]]:
    out = []
    for row_ids, row_scores in zip(ids, scores, strict=True):
        hits = []
        for sid, sc in zip(row_ids.tolist(), row_scores.tolist(), strict=True):
            if sid < 0:
                continue
            meta = slice_meta.get(sid)
            if meta is None or (target is not None and meta[1] != target):
                continue
            hits.append(SliceHit(slice_id=sid, case_id=int(meta[0]), label=meta[1], score=sc))
        out.append(hits)
    return out


def _distinct_cases(used: list[list[SliceHit]]) -> int:
    return len({h.case_id for hits in used for h in hits})


def _aggregate(used: list[list[SliceHit]], aggregate: str) -> list[CaseHit]:
    n_query = max(len(used), 1)
    best_per_query: dict[int, dict[int, float]] = defaultdict(dict)  # case -> {query i: best}
    best_pair: dict[int, tuple[float, int, int, str]] = {}  # case -> (score, slice, query i, label)
    n_hits: dict[int, int] = defaultdict(int)
    for qi, hits in enumerate(used):
        for h in hits:
            n_hits[h.case_id] += 1
            per_q = best_per_query[h.case_id]
            per_q[qi] = max(per_q.get(qi, -np.inf), h.score)
            current = best_pair.get(h.case_id)
            if current is None or h.score > current[0]:
                best_pair[h.case_id] = (h.score, h.slice_id, qi, h.label)
    cases = []
    for case_id, (best, slice_id, qi, label) in best_pair.items():
        if aggregate == "sum":
            score = sum(best_per_query[case_id].values()) / n_query
        else:
            score = best
        cases.append(
            CaseHit(
                case_id=case_id,
                label=label,
                # Rounded so that the stored and shown scores descend with the rank (the
                # tie-break below orders scores equal to SCORE_DECIMALS by case id).
                score=round(float(score), SCORE_DECIMALS),
                best_slice_id=slice_id,
                query_slice_index=qi,
                n_hits=n_hits[case_id],
                best_score=float(best),
            )
        )
    # Scores equal up to float noise (embeddings recomputed on a replayed run can differ in
    # the last bits) rank by case id, so the same query gives the same order every time.
    cases.sort(
        key=lambda c: (
            -c.score,
            -round(c.best_score, SCORE_DECIMALS),
            c.case_id,
        )
    )
    return cases


def _votes(
    cases: list[CaseHit], prior: dict[str, float] | None = None
) -> tuple[str | None, dict[str, float]]:
    """Similarity-weighted votes, each label's divided by its prior share when `prior` has it."""
    mass: dict[str, float] = defaultdict(float)
    for c in cases:
        mass[c.label] += max(c.score, 0.0)
    if not cases:
        return None, {}
    if sum(mass.values()) <= 0:  # every case dissimilar: fall back to counting cases
        mass = defaultdict(float)
        for c in cases:
            mass[c.label] += 1.0
    if prior:
        mass = defaultdict(
            float, {label: m / prior[label] if prior.get(label) else m for label, m in mass.items()}
        )
    total = sum(mass.values())
    votes = {label: m / total for label, m in sorted(mass.items())}
    suggested = min(votes, key=lambda label: (-votes[label], label))
    return suggested, votes


def _margin(votes: dict[str, float]) -> float | None:
    if not votes:
        return None
    shares = sorted(votes.values(), reverse=True) + [0.0]
    return float(shares[0] - shares[1])


def rank_cases(
    *,
    query_vectors: np.ndarray,
    index: VectorIndex,
    slice_meta: dict[int, tuple[int, str]],
    k_slices: int = DEFAULT_K_SLICES,
    k_cases: int = 8,
    label_filter: str | None = None,
    hierarchical: bool = False,
    centroids: dict[str, np.ndarray] | None = None,
    aggregate: str = "sum",
    balance: bool = True,
    prior: dict[str, float] | None = None,
    abstain: dict | None = None,
) -> QueryResult:
    """Rank reference cases for a study's query slice vectors (Q, D); see the module docstring.

    `balance` divides each label's votes by its share of the library (`prior`, default
    `class_prior(slice_meta)`); `abstain` holds the thresholds (`abstain_thresholds`)."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if k_slices < 1 or k_cases < 1:
        raise ValueError(f"k_slices and k_cases must be >= 1, got {k_slices}, {k_cases}")
    queries = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
    n_index = len(index)
    target = label_filter
    predicted, class_scores = None, {}
    if hierarchical and n_index and len(queries):
        cents = (
            centroids
            if centroids is not None
            else class_centroids(index=index, slice_meta=slice_meta)
        )
        if cents:
            class_scores = predict_class(queries, cents)
            predicted = next(iter(class_scores))
            if target is None:
                target = predicted
    if not n_index or not len(queries):
        return QueryResult(
            cases=[],
            suggested_label=None,
            votes={},
            predicted_label=predicted,
            class_scores=class_scores,
        )

    depth = min(n_index, k_slices if target is None else 4 * k_slices)
    n_use = k_slices
    while True:
        ids, scores = index.search(queries, depth)
        exhausted = depth >= n_index or bool((ids < 0).any())
        eligible = _eligible(ids, scores, slice_meta, target)
        while True:
            used = [hits[:n_use] for hits in eligible]
            enough = _distinct_cases(used) >= k_cases
            if enough or all(len(hits) <= n_use for hits in eligible):
                break
            n_use *= 2
        if enough or exhausted:
            break
        depth = min(n_index, depth * 2)

    cases = _aggregate(used, aggregate)[:k_cases]
    if balance and prior is None and target is None:
        prior = class_prior(slice_meta)
    voted, votes = _votes(cases, prior if balance else None)
    top_similarity = max((c.best_score for c in cases), default=None)
    margin = _margin(votes)
    abstained, reason = abstain_decide(
        top_similarity=top_similarity, vote_margin=margin, thresholds=abstain
    )
    return QueryResult(
        cases=cases,
        suggested_label=None if abstained else voted,
        votes=votes,
        predicted_label=predicted,
        class_scores=class_scores,
        slice_hits=used,
        top_similarity=None if top_similarity is None else float(top_similarity),
        vote_margin=margin,
        abstained=abstained,
        abstain_reason=reason,
        voted_label=voted,
    )
