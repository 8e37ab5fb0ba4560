"""`exact`: brute-force cosine search, the reference every other backend is measured against.

Unit vectors in one growable float32 matrix; a query block is one matrix product followed by
`argpartition` for the top k. Removal moves the last rows into the holes, so the matrix never
holds dead rows and search never pays for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import RowStore, VectorIndex, as_ids, as_vectors, empty_result, topk_rows

# Scores of one query block are (block, N) float32; cap that at 64 MB.
_BLOCK_FLOATS = 1 << 24


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows (Q, k) and scores (Q, k) of the k best rows of `vectors` for each unit query."""
    n = vectors.shape[0]
    q = queries.shape[0]
    k = min(k, n)
    rows = np.empty((q, k), dtype=np.int64)
    scores = np.empty((q, k), dtype=np.float32)
    block = max(1, _BLOCK_FLOATS // max(n, 1))
    for start in range(0, q, block):
        sims = queries[start : start + block] @ vectors.T
        for j, row in enumerate(sims):
            top = topk_rows(row, k)
            rows[start + j] = top
            scores[start + j] = row[top]
    return rows, scores


class ExactIndex(VectorIndex):
    """Cosine by matrix product over all stored vectors."""

    backend = "exact"

    def __init__(self, *, dim: int, seed: int = 0) -> None:
        super().__init__(dim=dim, seed=seed)
        self._store = RowStore(self.dim)

    def __len__(self) -> int:
        return len(self._store)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_vectors(vectors, self.dim, n=len(ids))
        self._store.swap_delete(self._store.find_rows(ids))  # upsert
        self._store.append(ids, vectors)

    def remove(self, ids: np.ndarray) -> None:
        self._store.swap_delete(self._store.find_rows(as_ids(ids)))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._queries(query)
        k = self._check_k(k)
        if k == 0:
            return empty_result(len(queries), 0)
        n = self._store.n
        rows, scores = exact_topk(self._store.vectors[:n], queries, k)
        return self._store.ids[rows], scores

    def ids(self) -> np.ndarray:
        return self._store.ids[: self._store.n].copy()

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return _vectors_by_id(self._store, as_ids(ids))

    def params(self) -> dict[str, Any]:
        return {}

    def nbytes(self) -> int:
        return self._store.nbytes()

    def _arrays(self) -> dict[str, np.ndarray]:
        return self._store.state()

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self._store = RowStore.from_state(self.dim, "float32", arrays)


def _vectors_by_id(store: RowStore, ids: np.ndarray) -> np.ndarray:
    """Rows of `store` for `ids` in that order, as float32; KeyError for a missing id."""
    live = store.live_rows()
    live_ids = store.ids[live]
    order = np.argsort(live_ids, kind="stable")
    pos = np.searchsorted(live_ids[order], ids)
    pos = np.minimum(pos, max(len(order) - 1, 0))
    found = len(order) > 0
    if not found or not np.array_equal(live_ids[order][pos], ids):
        missing = ids if not found else ids[live_ids[order][pos] != ids]
        raise KeyError(f"ids not in the index: {missing[:10].tolist()}")
    return store.vectors[live[order[pos]]].astype(np.float32)
