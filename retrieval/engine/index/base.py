"""The vector index interface and the helpers every backend shares.

All backends answer cosine similarity: vectors are L2-normalised on the way in (a zero vector
stays zero and scores 0 against everything), queries are normalised the same way, and scores
are inner products of unit vectors. Ids are caller-chosen int64 values; adding an id that is
already present replaces its vector (upsert), removing an unknown id is a no-op.

`search` always returns arrays of shape (Q, min(k, len(index))). A backend that cannot fill a
row (the paper's LSH when the query's bucket holds fewer than k vectors, HNSW when the graph
walk reaches fewer) pads it with id -1 and score -inf — callers must skip ids < 0.

Persistence: `save(path)` writes a folder (created if missing) holding `index.json` (backend,
dimension, seed, parameters, `build_info`) and the arrays; `load_index(path)` reads
`index.json` and hands over to the backend named there.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

FORMAT_VERSION = 1
META_FILE = "index.json"
ARRAYS_FILE = "arrays.npz"
EMPTY = -1  # id of a padding slot in search results


def as_ids(ids: Any) -> np.ndarray:
    """1-D int64 copy of `ids`; rejects duplicates (one vector per id and call)."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=True)
    if arr.size != np.unique(arr).size:
        raise ValueError("ids contain duplicates")
    return arr


def normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero (cosine 0 with everything)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    return np.ascontiguousarray(x / norms, dtype=np.float32)


def as_vectors(vectors: Any, dim: int, *, n: int | None = None) -> np.ndarray:
    """(N, dim) float32 unit rows; clear errors for a wrong shape or NaN/inf values."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"vectors must have shape (N, {dim}), got {np.shape(vectors)}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} vectors for {n} ids")
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinite values")
    return normalize(arr)


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest scores of a 1-D array, best first.

    Ties are broken by position (lower first) so results are reproducible.
    """
    m = scores.shape[0]
    if k <= 0 or m == 0:
        return np.empty(0, dtype=np.int64)
    if k < m:
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(m)
    order = np.lexsort((part, -scores[part]))
    return part[order]


def empty_result(q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of shape (q, k) filled with padding."""
    return (
        np.full((q, k), EMPTY, dtype=np.int64),
        np.full((q, k), -np.inf, dtype=np.float32),
    )


class RowStore:
    """Growable rows of unit vectors with their ids and an alive flag (tombstones).

    Rows are positions in the arrays; backends that keep structures pointing at rows (LSH
    tables, the HNSW graph) use tombstones and compact in bulk, the exact backend deletes by
    moving the last rows into the holes.
    """

    def __init__(self, dim: int, *, dtype: str = "float32") -> None:
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.vectors = np.empty((0, dim), dtype=self.dtype)
        self.ids = np.empty(0, dtype=np.int64)
        self.alive = np.empty(0, dtype=bool)
        self.n = 0  # rows in use (alive or tombstoned)
        self.n_dead = 0

    def __len__(self) -> int:
        return self.n - self.n_dead

    def _reserve(self, extra: int) -> None:
        need = self.n + extra
        cap = self.vectors.shape[0]
        if need <= cap:
            return
        # Grow geometrically for trickle adds, exactly for one big first batch.
        new_cap = max(need, int(cap * 1.5)) if cap else need
        vectors = np.empty((new_cap, self.dim), dtype=self.dtype)
        vectors[: self.n] = self.vectors[: self.n]
        ids = np.empty(new_cap, dtype=np.int64)
        ids[: self.n] = self.ids[: self.n]
        alive = np.zeros(new_cap, dtype=bool)
        alive[: self.n] = self.alive[: self.n]
        self.vectors, self.ids, self.alive = vectors, ids, alive

    def append(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Append rows; returns their row numbers."""
        self._reserve(len(ids))
        start, end = self.n, self.n + len(ids)
        self.vectors[start:end] = vectors
        self.ids[start:end] = ids
        self.alive[start:end] = True
        self.n = end
        return np.arange(start, end, dtype=np.int64)

    def find_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of the alive vectors carrying one of `ids` (unknown ids are ignored)."""
        if not len(ids) or not self.n:
            return np.empty(0, dtype=np.int64)
        live_ids = self.ids[: self.n]
        if len(ids) <= 16:
            # A few ids (the incremental sync case): equality scans beat np.isin's sort.
            hits = [np.flatnonzero(live_ids == i) for i in ids]
            rows = np.concatenate(hits) if hits else np.empty(0, dtype=np.int64)
        else:
            rows = np.flatnonzero(np.isin(live_ids, ids))
        return rows[self.alive[rows]].astype(np.int64)

    def kill(self, rows: np.ndarray) -> None:
        """Tombstone rows."""
        rows = rows[self.alive[rows]]
        self.alive[rows] = False
        self.n_dead += len(rows)

    def swap_delete(self, rows: np.ndarray) -> None:
        """Delete rows by moving the last alive rows into the holes (no tombstones left)."""
        if self.n_dead:
            raise RuntimeError("swap_delete on a store with tombstones")
        if not len(rows):
            return
        new_n = self.n - len(rows)
        doomed = np.zeros(self.n, dtype=bool)
        doomed[rows] = True
        holes = np.flatnonzero(doomed[:new_n])
        movers = np.flatnonzero(~doomed[new_n:]) + new_n
        self.vectors[holes] = self.vectors[movers]
        self.ids[holes] = self.ids[movers]
        self.alive[new_n : self.n] = False
        self.n = new_n

    def compact(self) -> np.ndarray:
        """Drop tombstoned rows; returns old row -> new row (-1 for dropped rows)."""
        keep = self.alive[: self.n]
        remap = np.full(self.n, -1, dtype=np.int64)
        remap[keep] = np.arange(int(keep.sum()))
        new_n = int(keep.sum())
        self.vectors = np.ascontiguousarray(self.vectors[: self.n][keep])
        self.ids = self.ids[: self.n][keep].copy()
        self.alive = np.ones(new_n, dtype=bool)
        self.n = new_n
        self.n_dead = 0
        return remap

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self.alive[: self.n])

    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.ids.nbytes + self.alive.nbytes)

    def state(self) -> dict[str, np.ndarray]:
        return {
            "vectors": self.vectors[: self.n],
            "ids": self.ids[: self.n],
            "alive": self.alive[: self.n],
        }

    @classmethod
    def from_state(cls, dim: int, dtype: str, arrays: dict[str, np.ndarray]) -> RowStore:
        store = cls(dim, dtype=dtype)
        store.vectors = np.ascontiguousarray(arrays["vectors"], dtype=store.dtype)
        store.ids = np.asarray(arrays["ids"], dtype=np.int64).copy()
        store.alive = np.asarray(arrays["alive"], dtype=bool).copy()
        store.n = len(store.ids)
        store.n_dead = int(store.n - store.alive.sum())
        return store


class VectorIndex(ABC):
    """Cosine-similarity index of int64-identified vectors; see the module docstring."""

    backend: ClassVar[str] = ""

    def __init__(self, *, dim: int, seed: int = 0) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        # How this index came to be (tuned parameters, measured recall, a fallback's reason);
        # written by `tune.build_tuned_index`, saved in index.json, shown in the admin.
        self.build_info: dict[str, Any] = {}

    # -- the interface -------------------------------------------------------------------
    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (or replace) vectors under the given ids."""

    @abstractmethod
    def remove(self, ids: np.ndarray) -> None:
        """Remove the given ids; removed ids are never returned by `search` again."""

    @abstractmethod
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top k by cosine for each query row: (ids (Q, k') int64, scores (Q, k') float32),
        k' = min(k, len(self)), best first, padded with id -1 / score -inf."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of (alive) vectors."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """All alive ids (int64), in storage order."""

    @abstractmethod
    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        """Stored unit vectors (float32) of the given ids, in the given order; KeyError for an
        id that is not in the index."""

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """Backend parameters, enough to rebuild an equivalent empty index."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the index's own structures (vectors, tables, graph)."""

    @abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """Arrays to persist."""

    @abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        """Rebuild state from persisted arrays (called on a fresh instance)."""

    # -- shared behaviour ----------------------------------------------------------------
    def _queries(self, query: np.ndarray) -> np.ndarray:
        return as_vectors(query, self.dim)

    def _check_k(self, k: int) -> int:
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return min(int(k), len(self))

    def _save_extra(self, path: Path) -> None:
        """Hook for backends with files of their own (faiss)."""
        return None

    def save(self, path: Path) -> None:
        """Write the index to folder `path` (created if missing, files in it overwritten)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path}: index path exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        np.savez(path / ARRAYS_FILE, **self._arrays())
        self._save_extra(path)
        meta = {
            "format": FORMAT_VERSION,
            "backend": self.backend,
            "dim": self.dim,
            "seed": self.seed,
            "params": self.params(),
            "count": len(self),
            "build_info": self.build_info,
        }
        (path / META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: Path) -> VectorIndex:
        """Read an index written by `save`; the backend must match this class."""
        path = Path(path)
        meta = read_meta(path)
        if meta["backend"] != cls.backend:
            raise ValueError(f"{path}: holds a {meta['backend']!r} index, not {cls.backend!r}")
        index = cls(dim=meta["dim"], seed=meta["seed"], **meta["params"])
        with np.load(path / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        index._restore(arrays, path)
        index.build_info = dict(meta.get("build_info") or {})
        return index

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.backend} dim={self.dim} n={len(self)}>"


def read_meta(path: Path) -> dict[str, Any]:
    """The `index.json` of a saved index, with a clear error when it is missing or foreign."""
    meta_file = Path(path) / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{meta_file}: no saved index here") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_file}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: unsupported index format {meta.get('format')!r}")
    return meta
