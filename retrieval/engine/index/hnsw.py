"""`faiss-hnsw`: faiss-cpu `IndexHNSWFlat`, inner product on unit vectors (= cosine).

Ids: faiss numbers vectors 0, 1, 2, ... in insertion order; this class keeps its own
int64 array mapping those internal numbers to the caller's ids (instead of `IndexIDMap`,
whose `remove_ids` HNSW does not implement).

Removal: an HNSW graph cannot drop nodes, so removed vectors are tombstoned (an alive flag per
internal number) and stay in the graph as waypoints. A search asks faiss for more than k
(k + 2k, then doubling) until k alive results are found or the whole index has been asked for,
and filters the tombstones out. Once tombstones exceed `rebuild_fraction` of the vectors the
graph is rebuilt from the alive vectors (read back from the flat storage) -- O(N log N), so it is
rare by construction. Replacing a vector (adding an id again) tombstones the old one.

Determinism: faiss draws HNSW levels from its own fixed-seed generator, so for one insertion
order the graph depends only on the thread schedule. With `deterministic=True` (default) adds
run on one OpenMP thread and the graph is reproducible; `deterministic=False` uses all cores
(faster builds, graphs may differ run to run). Searches are deterministic either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import VectorIndex, as_ids, as_vectors, empty_result

FAISS_FILE = "hnsw.faiss"


def _faiss():
    import faiss

    return faiss


class HNSWIndex(VectorIndex):
    """HNSW graph (faiss) with own id mapping, tombstones, over-fetch and periodic rebuild."""

    backend = "faiss-hnsw"

    def __init__(
        self,
        *,
        dim: int,
        seed: int = 0,
        M: int = 32,  # noqa: N803 (faiss's and the HNSW paper's name)
        ef_construction: int = 200,
        ef_search: int = 128,
        rebuild_fraction: float = 0.25,
        deterministic: bool = True,
    ) -> None:
        super().__init__(dim=dim, seed=seed)
        self.M = int(M)
        self.ef_construction = int(ef_construction)
        self.ef_search = int(ef_search)
        self.rebuild_fraction = float(rebuild_fraction)
        self.deterministic = bool(deterministic)
        self._index = self._new_graph()
        self._ids = np.empty(0, dtype=np.int64)  # internal number -> caller id
        self._alive = np.empty(0, dtype=bool)
        self._n_dead = 0

    def _new_graph(self):
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, self.M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        return index

    def __len__(self) -> int:
        return len(self._ids) - self._n_dead

    def _graph_add(self, vectors: np.ndarray) -> None:
        faiss = _faiss()
        threads = faiss.omp_get_max_threads()
        if self.deterministic:
            faiss.omp_set_num_threads(1)
        try:
            self._index.add(vectors)
        finally:
            faiss.omp_set_num_threads(threads)

    def _find(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids) or not len(self._ids):
            return np.empty(0, dtype=np.int64)
        rows = np.flatnonzero(np.isin(self._ids, ids))
        return rows[self._alive[rows]]

    def _kill(self, rows: np.ndarray) -> None:
        self._alive[rows] = False
        self._n_dead += len(rows)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_vectors(vectors, self.dim, n=len(ids))
        if not len(ids):
            return
        self._kill(self._find(ids))
        self._graph_add(vectors)
        self._ids = np.concatenate([self._ids, ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
        self._maybe_rebuild()

    def remove(self, ids: np.ndarray) -> None:
        self._kill(self._find(as_ids(ids)))
        self._maybe_rebuild()

    def _stored_vectors(self) -> np.ndarray:
        """All vectors in the graph's flat storage, (ntotal, dim) float32 (a copy)."""
        faiss = _faiss()
        flat = faiss.downcast_index(self._index.storage)
        return faiss.vector_to_array(flat.codes).view(np.float32).reshape(-1, self.dim)

    def _maybe_rebuild(self) -> None:
        if self._n_dead <= max(16, self.rebuild_fraction * len(self._ids)):
            return
        self.rebuild()

    def rebuild(self) -> None:
        """Rebuild the graph from the alive vectors only (drops every tombstone)."""
        keep = self._alive
        vectors = self._stored_vectors()[keep]
        self._index = self._new_graph()
        if len(vectors):
            self._graph_add(np.ascontiguousarray(vectors))
        self._ids = self._ids[keep]
        self._alive = np.ones(len(self._ids), dtype=bool)
        self._n_dead = 0

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._queries(query)
        k = self._check_k(k)
        out_ids, out_scores = empty_result(len(queries), k)
        if k == 0:
            return out_ids, out_scores
        total = len(self._ids)
        fetch = k if not self._n_dead else min(total, 3 * k)
        todo = np.arange(len(queries))
        while len(todo):
            self._index.hnsw.efSearch = max(self.ef_search, fetch)
            scores, rows = self._index.search(queries[todo], fetch)
            unfinished = []
            for j, qi in enumerate(todo):
                ok = rows[j] >= 0
                ok[ok] = self._alive[rows[j][ok]]
                got = int(ok.sum())
                if got >= k or fetch >= total:
                    n = min(k, got)
                    out_ids[qi, :n] = self._ids[rows[j][ok][:n]]
                    out_scores[qi, :n] = scores[j][ok][:n]
                else:
                    unfinished.append(qi)
            todo = np.asarray(unfinished, dtype=np.int64)
            fetch = min(total, fetch * 2)
        self._index.hnsw.efSearch = self.ef_search
        return out_ids, out_scores

    def ids(self) -> np.ndarray:
        return self._ids[self._alive].copy()

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        alive_rows = np.flatnonzero(self._alive)
        alive_ids = self._ids[alive_rows]
        order = np.argsort(alive_ids)
        pos = np.searchsorted(alive_ids[order], ids)
        pos = np.minimum(pos, max(len(order) - 1, 0))
        if not len(order) or not np.array_equal(alive_ids[order][pos], ids):
            raise KeyError(f"ids not in the index: {ids[:10].tolist()}")
        rows = alive_rows[order[pos]]
        if not len(rows):
            return np.empty((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(rows.astype(np.int64))

    def params(self) -> dict[str, Any]:
        return {
            "M": self.M,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "rebuild_fraction": self.rebuild_fraction,
            "deterministic": self.deterministic,
        }

    def nbytes(self) -> int:
        # Flat vectors + neighbour lists (int32) + per-node offsets and levels.
        hnsw = self._index.hnsw
        graph = hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
        vectors = self._index.ntotal * self.dim * 4
        return int(vectors + graph + self._ids.nbytes + self._alive.nbytes)

    def _arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self._ids, "alive": self._alive}

    def _save_extra(self, path: Path) -> None:
        _faiss().write_index(self._index, str(path / FAISS_FILE))

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self._index = _faiss().read_index(str(path / FAISS_FILE))
        self._index.hnsw.efSearch = self.ef_search
        self._ids = arrays["ids"].astype(np.int64)
        self._alive = arrays["alive"].astype(bool)
        self._n_dead = int(len(self._alive) - self._alive.sum())
        if self._index.ntotal != len(self._ids):
            raise ValueError(
                f"{path}: graph holds {self._index.ntotal} vectors, ids {len(self._ids)}"
            )
