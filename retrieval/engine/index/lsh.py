"""Random-hyperplane LSH for cosine similarity: the paper's variant and a multi-probe one.

Hashing (Charikar 2002): each table t has K unit normal vectors w; a vector x gets the K-bit
code whose bit b is [w_b . x > 0]. Two unit vectors at angle theta agree on a bit with
probability 1 - theta/pi, so near neighbours tend to share buckets.

`lsh-paper` (`PaperLSHIndex`) is the paper's index as published: 1 table, 3 bits (8 buckets),
the query's own bucket only; its members are re-ranked by exact cosine. When that bucket holds
fewer than k vectors the query gets fewer than k results (padded with id -1): that is the
paper's behaviour and is kept so it can be measured.

`lsh` (`LSHIndex`) is the improved one: L tables x K bits, query-directed multi-probe (Lv et
al. 2007, restricted to Hamming distance 1): besides the L home buckets it probes the
`probes` buckets obtained by flipping the single bits whose projections |w_b . q| are
smallest over all tables -- the bits most likely to differ for a near neighbour. The union of
the candidates is re-ranked by exact cosine (one gather + matrix-vector product). When the
union holds fewer than k alive vectors it falls back to the exact scan, so it always returns
min(k, len) results.

Storage (per table, CSR-like): the codes of the indexed rows sorted (`uint32` for K <= 32,
else `uint64`) and the row numbers in that order; a bucket is the `np.searchsorted` range of
its code. New vectors go to a pending buffer (their codes kept, matched by comparison at query
time) that is merged into the sorted arrays by insertion once it exceeds `merge_threshold`
(O(L*N) per merge, so O(L*N/merge_threshold) amortised per vector). Removal tombstones the row
(search skips it); once tombstones exceed `compact_fraction` of the rows everything is
compacted without re-hashing. Vectors may be stored as float16 (`dtype="float16"`) to halve
their memory; re-ranking then casts the gathered candidates to float32.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from .base import EMPTY, RowStore, VectorIndex, as_ids, as_vectors, empty_result, topk_rows
from .exact import _vectors_by_id, exact_topk

# Parameters of an LSH built without tuning (`build_index("lsh")`). They gave recall@10 0.977 on
# clustered synthetic data (spread 0.5) at N = 1,000,000, dim 128, but 0.60 on a less clustered
# mixture (spread 0.75) at 200k: the app builds through `tune.build_tuned_index`, which picks
# tables, bits and probes from the library for a target recall (docs/performance.md).
DEFAULT_TABLES = 24
DEFAULT_BITS = 18
DEFAULT_PROBES = 256

_HASH_CHUNK = 1 << 16  # rows hashed at a time (bounds the (chunk, L*K) temporary)


class LSHIndex(VectorIndex):
    """L tables x K bits random-hyperplane LSH with multi-probe and cosine re-ranking."""

    backend = "lsh"

    def __init__(
        self,
        *,
        dim: int,
        seed: int = 0,
        tables: int = DEFAULT_TABLES,
        bits: int = DEFAULT_BITS,
        probes: int = DEFAULT_PROBES,
        fallback: bool = True,
        dtype: str = "float32",
        merge_threshold: int = 4096,
        compact_fraction: float = 0.25,
    ) -> None:
        super().__init__(dim=dim, seed=seed)
        if not 1 <= int(bits) <= 64:
            raise ValueError(f"bits must be in 1..64, got {bits}")
        if int(tables) < 1 or int(probes) < 0:
            raise ValueError(f"need tables >= 1 and probes >= 0, got {tables}, {probes}")
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        self.tables = int(tables)
        self.bits = int(bits)
        self.probes = int(probes)
        self.fallback = bool(fallback)
        self.dtype = dtype
        self.merge_threshold = int(merge_threshold)
        self.compact_fraction = float(compact_fraction)
        # Stored keys are table << bits | code: sorted within each table, so the (L, M) key
        # array is sorted when flattened and one searchsorted serves every table.
        key_bits = self.bits + max(int(self.tables - 1).bit_length(), 0)
        if key_bits > 64:
            raise ValueError(f"tables x 2**bits must fit 64 bits, got {tables} x 2**{bits}")
        self._code_dtype = np.dtype(np.uint32 if key_bits <= 32 else np.uint64)
        self._offsets = (np.arange(self.tables, dtype=np.uint64) << np.uint64(self.bits)).astype(
            self._code_dtype
        )
        rng = np.random.default_rng(self.seed)
        planes = rng.standard_normal((self.tables * self.bits, self.dim))
        planes /= np.linalg.norm(planes, axis=1, keepdims=True)
        # (dim, L*K): x @ planes gives every table's projections at once.
        self._planes = np.ascontiguousarray(planes.T, dtype=np.float32)
        self._pow2 = (np.uint64(1) << np.arange(self.bits, dtype=np.uint64)).astype(
            self._code_dtype
        )
        self._store = RowStore(self.dim, dtype=dtype)
        self._keys = np.empty((self.tables, 0), dtype=self._code_dtype)
        self._rows = np.empty((self.tables, 0), dtype=np.int32)
        self._pending_rows = np.empty(0, dtype=np.int64)
        self._pending_codes = np.empty((self.tables, 0), dtype=self._code_dtype)

    # -- hashing -------------------------------------------------------------------------
    def _codes_from_projections(self, proj: np.ndarray) -> np.ndarray:
        """(N, L) keys: table << bits | code of each row's bucket in each table."""
        bits = (proj > 0).reshape(len(proj), self.tables, self.bits)
        return (bits * self._pow2).sum(axis=2, dtype=self._code_dtype) + self._offsets

    def hash(self, vectors: np.ndarray) -> np.ndarray:
        """(N, L) bucket keys (table << bits | code) of unit vectors."""
        out = np.empty((len(vectors), self.tables), dtype=self._code_dtype)
        for start in range(0, len(vectors), _HASH_CHUNK):
            block = np.asarray(vectors[start : start + _HASH_CHUNK], dtype=np.float32)
            out[start : start + len(block)] = self._codes_from_projections(block @ self._planes)
        return out

    # -- mutation ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._store)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_vectors(vectors, self.dim, n=len(ids))
        if not len(ids):
            return
        self._store.kill(self._store.find_rows(ids))  # upsert: the old vector is tombstoned
        rows = self._store.append(ids, vectors)
        self._pending_rows = np.concatenate([self._pending_rows, rows])
        self._pending_codes = np.concatenate([self._pending_codes, self.hash(vectors).T], axis=1)
        if len(self._pending_rows) >= self.merge_threshold:
            self._merge_pending()
        self._maybe_compact()

    def remove(self, ids: np.ndarray) -> None:
        self._store.kill(self._store.find_rows(as_ids(ids)))
        self._maybe_compact()

    def flush(self) -> None:
        """Merge the pending buffer into the sorted tables now (otherwise done lazily)."""
        self._merge_pending()

    def _merge_pending(self) -> None:
        if not len(self._pending_rows):
            return
        new_rows = self._pending_rows.astype(np.int32)
        codes = self._pending_codes
        m = self._keys.shape[1]
        keys = np.empty((self.tables, m + len(new_rows)), dtype=self._code_dtype)
        rows = np.empty((self.tables, m + len(new_rows)), dtype=np.int32)
        for t in range(self.tables):
            if len(new_rows) * 4 >= m:
                # Big batch (or first build): one stable sort of everything.
                all_keys = np.concatenate([self._keys[t], codes[t]])
                order = np.argsort(all_keys, kind="stable")
                keys[t] = all_keys[order]
                rows[t] = np.concatenate([self._rows[t], new_rows])[order]
            else:
                # Trickle: insert the sorted newcomers into the sorted arrays, O(N).
                order = np.argsort(codes[t], kind="stable")
                new_keys = codes[t, order]
                at = np.searchsorted(self._keys[t], new_keys, side="right")
                keys[t] = np.insert(self._keys[t], at, new_keys)
                rows[t] = np.insert(self._rows[t], at, new_rows[order])
        self._keys, self._rows = keys, rows
        self._pending_rows = np.empty(0, dtype=np.int64)
        self._pending_codes = np.empty((self.tables, 0), dtype=self._code_dtype)

    def _maybe_compact(self) -> None:
        store = self._store
        if store.n_dead <= max(64, self.compact_fraction * store.n):
            return
        remap = store.compact()
        if self._keys.shape[1]:
            flat = remap[self._rows.ravel()].reshape(self._rows.shape)
            keep = flat[0] >= 0
            # Every row sits once in every table, so each table keeps the same count; the
            # per-table order (sorted by code) is preserved by boolean selection.
            keys = np.empty((self.tables, int(keep.sum())), dtype=self._code_dtype)
            rows = np.empty_like(keys, dtype=np.int32)
            for t in range(self.tables):
                keep_t = flat[t] >= 0
                keys[t] = self._keys[t][keep_t]
                rows[t] = flat[t][keep_t]
            self._keys, self._rows = keys, rows
        pending = remap[self._pending_rows]
        keep = pending >= 0
        self._pending_rows = pending[keep]
        self._pending_codes = self._pending_codes[:, keep]

    # -- search --------------------------------------------------------------------------
    def _probe_codes(self, proj: np.ndarray, home: np.ndarray) -> np.ndarray:
        """Keys of every bucket probed for one query: the L home buckets, then the `probes`
        single-bit flips with the smallest |projection| over all tables."""
        if not self.probes:
            return home
        margins = np.abs(proj)
        n_flip = min(self.probes, margins.size)
        pick = np.argpartition(margins, n_flip - 1)[:n_flip] if n_flip < margins.size else None
        if pick is None:
            pick = np.arange(margins.size)
        t, b = np.divmod(pick, self.bits)
        flipped = home[t] ^ self._pow2[b]
        return np.concatenate([home, flipped])

    def _candidates(self, proj: np.ndarray, home: np.ndarray) -> np.ndarray:
        """Sorted unique alive rows in the probed buckets (sorted tables + pending buffer)."""
        probe = self._probe_codes(proj, home)
        parts = []
        if self._keys.shape[1]:
            flat = self._keys.ravel()
            lo = np.searchsorted(flat, probe, side="left")
            hi = np.searchsorted(flat, probe, side="right")
            lens = hi - lo
            total = int(lens.sum())
            if total:
                # Concatenate the ranges [lo, hi) without a Python loop.
                offsets = np.repeat(lo - (np.cumsum(lens) - lens), lens)
                parts.append(self._rows.ravel()[offsets + np.arange(total)])
        if len(self._pending_rows):
            # Membership by binary search in the few probed keys (np.isin would build a
            # lookup table over the whole key range on every call).
            probed = np.sort(probe)
            col = self._pending_codes.ravel()
            pos = np.minimum(np.searchsorted(probed, col), len(probed) - 1)
            hit = (probed[pos] == col).reshape(self._pending_codes.shape).any(axis=0)
            parts.append(self._pending_rows[hit])
        if not parts:
            return np.empty(0, dtype=np.int64)
        rows = np.unique(np.concatenate(parts))
        return rows[self._store.alive[rows]]

    def _exact(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        store = self._store
        if store.n_dead:
            live = store.live_rows()
            vectors = store.vectors[live]
        else:
            live = None
            vectors = store.vectors[: store.n]
        rows, scores = exact_topk(vectors.astype(np.float32, copy=False), query[None, :], k)
        rows = rows[0] if live is None else live[rows[0]]
        return store.ids[rows], scores[0]

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = self._queries(query)
        k = self._check_k(k)
        out_ids, out_scores = empty_result(len(queries), k)
        if k == 0:
            return out_ids, out_scores
        projections = queries @ self._planes
        homes = self._codes_from_projections(projections)
        for i, q in enumerate(queries):
            rows = self._candidates(projections[i], homes[i])
            if len(rows) < k and self.fallback:
                out_ids[i], out_scores[i] = self._exact(q, k)
                continue
            cand = self._store.vectors[rows]
            if cand.dtype != np.float32:
                cand = cand.astype(np.float32)
            scores = cand @ q
            top = topk_rows(scores, k)
            out_ids[i, : len(top)] = self._store.ids[rows[top]]
            out_scores[i, : len(top)] = scores[top]
        return out_ids, out_scores

    def with_tables(self, tables: int, probes: int) -> LSHIndex:
        """A read-only view that searches only the first `tables` tables with `probes` probes.

        It shares the vectors and sorted arrays, and answers exactly like an index built with
        (tables, this bits, probes) and this seed: table t's hyperplanes are rows t*K..t*K+K-1
        of one seeded draw, whatever the table count. The tuner uses it to try several table
        counts from one build.
        """
        if not 1 <= int(tables) <= self.tables:
            raise ValueError(f"tables must be in 1..{self.tables}, got {tables}")
        self.flush()
        view = copy.copy(self)
        view.tables = int(tables)
        view.probes = int(probes)
        view._keys = self._keys[:tables]
        view._rows = self._rows[:tables]
        view._planes = np.ascontiguousarray(self._planes[:, : tables * self.bits])
        view._offsets = self._offsets[:tables]
        view._pending_codes = self._pending_codes[:tables]
        return view

    def candidate_count(self, query: np.ndarray) -> np.ndarray:
        """Alive candidates each query would re-rank (before any exact fallback)."""
        queries = self._queries(query)
        projections = queries @ self._planes
        homes = self._codes_from_projections(projections)
        return np.array(
            [len(self._candidates(p, h)) for p, h in zip(projections, homes, strict=True)]
        )

    # -- introspection and persistence ---------------------------------------------------
    def ids(self) -> np.ndarray:
        return self._store.ids[self._store.live_rows()]

    def get_vectors(self, ids: np.ndarray) -> np.ndarray:
        return _vectors_by_id(self._store, as_ids(ids))

    def params(self) -> dict[str, Any]:
        return {
            "tables": self.tables,
            "bits": self.bits,
            "probes": self.probes,
            "fallback": self.fallback,
            "dtype": self.dtype,
            "merge_threshold": self.merge_threshold,
            "compact_fraction": self.compact_fraction,
        }

    def nbytes(self) -> int:
        return int(
            self._store.nbytes()
            + self._keys.nbytes
            + self._rows.nbytes
            + self._planes.nbytes
            + self._pending_rows.nbytes
            + self._pending_codes.nbytes
        )

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            **self._store.state(),
            "planes": self._planes,
            "keys": self._keys,
            "rows": self._rows,
            "pending_rows": self._pending_rows,
            "pending_codes": self._pending_codes,
        }

    def _restore(self, arrays: dict[str, np.ndarray], path: Path) -> None:
        self._store = RowStore.from_state(self.dim, self.dtype, arrays)
        self._planes = np.ascontiguousarray(arrays["planes"], dtype=np.float32)
        self._keys = arrays["keys"].astype(self._code_dtype)
        self._rows = arrays["rows"].astype(np.int32)
        self._pending_rows = arrays["pending_rows"].astype(np.int64)
        self._pending_codes = arrays["pending_codes"].astype(self._code_dtype)


class PaperLSHIndex(LSHIndex):
    """The paper's LSH: 1 table, 3 bits, the query's own bucket re-ranked by cosine, no
    multi-probe, no fallback (fewer than k results when the bucket is small)."""

    backend = "lsh-paper"

    def __init__(
        self,
        *,
        dim: int,
        seed: int = 0,
        tables: int = 1,
        bits: int = 3,
        probes: int = 0,
        fallback: bool = False,
        dtype: str = "float32",
        merge_threshold: int = 4096,
        compact_fraction: float = 0.25,
    ) -> None:
        super().__init__(
            dim=dim,
            seed=seed,
            tables=tables,
            bits=bits,
            probes=probes,
            fallback=fallback,
            dtype=dtype,
            merge_threshold=merge_threshold,
            compact_fraction=compact_fraction,
        )

    def bucket_of(self, vectors: np.ndarray) -> np.ndarray:
        """Bucket code (0..2**bits-1) of each vector in the first table."""
        return self.hash(as_vectors(vectors, self.dim))[:, 0].astype(np.int64)


__all__ = ["EMPTY", "LSHIndex", "PaperLSHIndex"]
