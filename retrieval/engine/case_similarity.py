"""One definition of "how similar is this reference case to the query study", independent of
how the case was found (unfiltered, with a diagnosis filter, another k or mode).

The index ranks cases from each query slice's nearest slices, so a case's ranking score
depends on which hits a query happened to use (a filter searches deeper and sees more hits of
the same case). For display the review page uses the exact value instead: for every query
slice, the best cosine similarity to any slice of the case; the case score is their mean.
"Matched on N of M slices" counts the query slices on which the case is the closest of a fixed
comparison set of cases (the study's stored top cases plus the case itself).
"""

from __future__ import annotations

import numpy as np


def per_slice_best(query: np.ndarray, case: np.ndarray) -> np.ndarray:
    """(Q,) best cosine similarity of each query slice (rows of `query`, L2-normalised) to
    any slice of the case (rows of `case`, L2-normalised); -1 everywhere for an empty case."""
    q = np.atleast_2d(np.asarray(query, dtype=np.float32))
    c = np.atleast_2d(np.asarray(case, dtype=np.float32))
    if not q.size:
        return np.zeros(0, dtype=np.float32)
    if not c.size:
        return np.full(q.shape[0], -1.0, dtype=np.float32)
    return (q @ c.T).max(axis=1).astype(np.float32)


def case_score(best: np.ndarray) -> float:
    """Mean of the per-query-slice best similarities (0 for no query slices)."""
    best = np.asarray(best, dtype=np.float32)
    return float(best.mean()) if best.size else 0.0


def matched_slices(best: np.ndarray, others: list[np.ndarray]) -> int:
    """Query slices on which the case (`best`, from `per_slice_best`) is at least as close as
    every case of `others` (their `per_slice_best` arrays, same length)."""
    best = np.asarray(best, dtype=np.float32)
    if not best.size:
        return 0
    if not others:
        return int(best.size)
    rival = np.max(np.vstack([np.asarray(o, dtype=np.float32) for o in others]), axis=0)
    return int(np.count_nonzero(best >= rival - 1e-6))
