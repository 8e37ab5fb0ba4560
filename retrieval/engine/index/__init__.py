"""Vector indexes for similar-slice search: one interface (`VectorIndex`), four backends.

    exact       brute-force cosine (matrix product), the reference
    lsh-paper   the paper's random-hyperplane LSH: 1 table, 3 bits, own bucket re-ranked
    lsh         L tables x K bits, multi-probe, cosine re-ranking, exact fallback
    faiss-hnsw  faiss-cpu HNSW graph (inner product on unit vectors)

`build_index(backend, dim=..., seed=..., **params)` makes an empty index, `load_index(path)`
reads one written by `index.save(path)`. `tune.build_tuned_index("lsh", ids, vectors)` builds the
app's default: LSH with tables, bits and probes chosen from the library to reach a target recall
on held-out library vectors, or the exact / faiss-hnsw fallback, with `index.build_info` saying
which and why. See base.py for the shared semantics (cosine scores,
upsert, -1 padding) and each backend's module for its parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import EMPTY, VectorIndex, read_meta
from .exact import ExactIndex
from .hnsw import HNSWIndex
from .lsh import LSHIndex, PaperLSHIndex

BACKENDS: dict[str, type[VectorIndex]] = {
    "exact": ExactIndex,
    "lsh-paper": PaperLSHIndex,
    "lsh": LSHIndex,
    "faiss-hnsw": HNSWIndex,
}


def build_index(backend: str, *, dim: int, seed: int = 0, **params: Any) -> VectorIndex:
    """An empty index of the named backend; `params` are that backend's constructor options."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(
            f"unknown index backend {backend!r}; choose from {sorted(BACKENDS)}"
        ) from None
    return cls(dim=dim, seed=seed, **params)


def load_index(path: Path) -> VectorIndex:
    """Read an index saved with `VectorIndex.save(path)`, whatever its backend."""
    meta = read_meta(Path(path))
    backend = meta.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"{path}: unknown index backend {backend!r}")
    return BACKENDS[backend].load(Path(path))


__all__ = [
    "BACKENDS",
    "EMPTY",
    "ExactIndex",
    "HNSWIndex",
    "LSHIndex",
    "PaperLSHIndex",
    "VectorIndex",
    "build_index",
    "load_index",
]
