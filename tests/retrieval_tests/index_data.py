"""Small clustered vector sets shared by the index and query tests."""

from __future__ import annotations

import numpy as np

from retrieval.engine.index import build_index
from retrieval.engine.index.synthetic import ClusteredVectors

DIM = 32


def clustered(n: int = 5000, queries: int = 100, *, spread: float = 0.5, seed: int = 0):
    """(ids, vectors, query vectors): n points in 50 clusters, ids not 0..n-1 on purpose."""
    gen = ClusteredVectors(dim=DIM, clusters=50, spread=spread, seed=seed)
    x, _ = gen.sample(n, seed=seed + 1)
    q, _ = gen.sample(queries, seed=seed + 2)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000
    return ids, x, q


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top k found, per query."""
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def exact_truth(ids, x, q, k=10):
    index = build_index("exact", dim=x.shape[1])
    index.add(ids, x)
    return index.search(q, k)
