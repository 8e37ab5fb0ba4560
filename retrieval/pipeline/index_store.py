"""The live reference index of each worker process, kept in step with `ReferenceEmbedding`.

Source of truth: the `ReferenceEmbedding` rows of a model version (row id = vector id). Each
process holds one engine `VectorIndex` per model version in memory plus a snapshot on disk under
`VAR_DIR/indexes/<version id>/`, and before every query calls `index_sync`, which is
incremental, never a full rebuild:

1. a cheap aggregate (count, max id, sum of ids) of the version's rows is compared with what
   the index holds; equal means nothing changed (the common case: one indexed query);
2. otherwise rows with an id above the highest one held are added (approvals create new rows);
3. if the aggregate still differs (rows were deleted by a retire/reject, or a transaction
   committed a lower id late), the id sets are diffed and only the difference is removed/added.

So a newly approved case is found by the next query, and a retired one disappears from it.
The snapshot lets a restarted worker start from disk and catch up with step 2/3 instead of
re-reading every vector. Backend: `settings.ILDREVIEW_INDEX_BACKEND` (default "lsh").

Tuning: the first build goes through the engine's `build_tuned_index`, which for "lsh" picks
tables, bits and probes from the library to reach `ILDREVIEW_INDEX_TARGET_RECALL` on held-out
library vectors (or falls back to exact / faiss-hnsw and says why). Parameters tuned on a small
library do not hold for a large one, so the index is re-tuned from the vectors it holds each
time the library has doubled since the last tuning. The result (`index.build_info`) is written
to `ModelVersion.index_info`, which the admin shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db.models import Count, Max, Sum
from django.utils import timezone

from retrieval.models import ModelVersion, ReferenceEmbedding
from retrieval.pipeline.runtime import vector_from_bytes

logger = logging.getLogger(__name__)

_lock = threading.RLock()
_live: dict[int, LiveIndex] = {}

Checksum = tuple[int, int, int]


@dataclass
class LiveIndex:
    """One model version's index in this process and the metadata of the vectors it holds."""

    version_id: int
    backend: str
    index: object | None = None  # engine VectorIndex, built at the first vector
    # embedding id -> (reference case id, diagnosis code, slice id)
    meta: dict[int, tuple[int, str, int]] = field(default_factory=dict)

    def checksum(self) -> Checksum:
        ids = self.meta.keys()
        return (len(ids), max(ids, default=0), sum(ids))


def index_backend() -> str:
    return settings.ILDREVIEW_INDEX_BACKEND


def index_dir(*, model_version_id: int) -> Path:
    return Path(settings.VAR_DIR) / "indexes" / str(model_version_id)


def _db_checksum(version_id: int) -> Checksum:
    agg = ReferenceEmbedding.objects.filter(model_version_id=version_id).aggregate(
        n=Count("id"), mx=Max("id"), s=Sum("id")
    )
    return (agg["n"] or 0, agg["mx"] or 0, int(agg["s"] or 0))


def _rows(qs):
    return qs.values_list(
        "id", "vector", "reference_case_id", "reference_case__diagnosis__code", "slice_id"
    ).order_by("id")


def _build(backend: str, ids: np.ndarray, vectors: np.ndarray):
    from retrieval.engine.index.tune import TuneOptions, build_tuned_index

    options = TuneOptions(target_recall=settings.ILDREVIEW_INDEX_TARGET_RECALL)
    return build_tuned_index(backend, ids, vectors, seed=0, options=options)


def _record_build(live: LiveIndex) -> None:
    info = dict(live.index.build_info) if live.index is not None else {}
    info["built_at"] = timezone.now().isoformat()
    ModelVersion.objects.filter(pk=live.version_id).update(index_info=info)


def _maybe_retune(live: LiveIndex) -> bool:
    """Rebuild (re-tune) the index once the library has doubled since it was tuned."""
    from retrieval.engine.index.tune import MIN_TUNE_N

    index = live.index
    if index is None or live.backend != "lsh":
        return False
    n, tuned_n = len(index), int(index.build_info.get("n", 0))
    if n < MIN_TUNE_N or n < 2 * tuned_n:
        return False
    ids = index.ids()
    live.index = _build(live.backend, ids, index.get_vectors(ids))
    logger.info("index v%s re-tuned at %d vectors (was %d)", live.version_id, n, tuned_n)
    return True


def _add_rows(live: LiveIndex, rows) -> int:
    ids, vectors = [], []
    for emb_id, vec, case_id, code, slice_id in rows:
        if emb_id in live.meta:
            continue
        ids.append(emb_id)
        vectors.append(vector_from_bytes(vec))
        live.meta[emb_id] = (case_id, code, slice_id)
    if not ids:
        return 0
    matrix = np.vstack(vectors).astype(np.float32)
    if live.index is None:
        live.index = _build(live.backend, np.asarray(ids, dtype=np.int64), matrix)
        _record_build(live)
    else:
        live.index.add(np.asarray(ids, dtype=np.int64), matrix)
    return len(ids)


def _remove_ids(live: LiveIndex, ids: list[int]) -> int:
    ids = [i for i in ids if i in live.meta]
    if ids and live.index is not None:
        live.index.remove(np.asarray(ids, dtype=np.int64))
    for i in ids:
        live.meta.pop(i, None)
    return len(ids)


def index_sync(*, model_version: ModelVersion) -> LiveIndex:
    """Bring this process's index of `model_version` up to date with the table, incrementally
    (see module docstring); returns it. Saves a snapshot when something changed."""
    with _lock:
        live = _live.get(model_version.pk)
        if live is None:
            live = _snapshot_load(model_version.pk) or LiveIndex(model_version.pk, index_backend())
            _live[model_version.pk] = live
        target = _db_checksum(model_version.pk)
        if live.checksum() == target:
            return live
        qs = ReferenceEmbedding.objects.filter(model_version_id=model_version.pk)
        high = max(live.meta, default=0)
        added = _add_rows(live, _rows(qs.filter(id__gt=high)))
        removed = 0
        if live.checksum() != _db_checksum(model_version.pk):
            db_ids = set(qs.values_list("id", flat=True))
            removed = _remove_ids(live, [i for i in live.meta if i not in db_ids])
            missing = [i for i in db_ids if i not in live.meta]
            if missing:
                added += _add_rows(live, _rows(qs.filter(id__in=missing)))
        if _maybe_retune(live):
            _record_build(live)
        logger.info(
            "index v%s synced: +%d -%d -> %d vectors",
            model_version.pk,
            added,
            removed,
            len(live.meta),
        )
        _snapshot_save(live)
        return live


def index_forget(*, model_version_id: int | None = None) -> None:
    """Drop in-memory indexes (all, or one version); the next sync reloads the snapshot."""
    with _lock:
        if model_version_id is None:
            _live.clear()
        else:
            _live.pop(model_version_id, None)


def _snapshot_save(live: LiveIndex) -> None:
    """Write the index and its metadata to a new folder, then point CURRENT at it atomically,
    so a concurrent reader (another worker process) never sees a half-written snapshot."""
    root = index_dir(model_version_id=live.version_id)
    root.mkdir(parents=True, exist_ok=True)
    name = f"snap-{uuid.uuid4().hex[:12]}"
    tmp = root / name
    tmp.mkdir()
    try:
        ids = np.fromiter(live.meta.keys(), dtype=np.int64, count=len(live.meta))
        meta = [live.meta[int(i)] for i in ids]
        np.savez(
            tmp / "meta.npz",
            ids=ids,
            case_ids=np.asarray([m[0] for m in meta], dtype=np.int64),
            slice_ids=np.asarray([m[2] for m in meta], dtype=np.int64),
            labels=np.asarray([m[1] for m in meta], dtype=str),
        )
        if live.index is not None:
            live.index.save(tmp / "index")
        (tmp / "info.json").write_text(
            json.dumps({"backend": live.backend, "has_index": live.index is not None})
        )
        pointer = root / f".CURRENT.{name}"
        pointer.write_text(name)
        os.replace(pointer, root / "CURRENT")
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("snap-*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def _snapshot_load(version_id: int) -> LiveIndex | None:
    root = index_dir(model_version_id=version_id)
    try:
        name = (root / "CURRENT").read_text().strip()
        snap = root / name
        info = json.loads((snap / "info.json").read_text())
        if info["backend"] != index_backend():
            return None
        live = LiveIndex(version_id, info["backend"])
        with np.load(snap / "meta.npz", allow_pickle=False) as data:
            for i, c, s, lab in zip(
                data["ids"], data["case_ids"], data["slice_ids"], data["labels"], strict=True
            ):
                live.meta[int(i)] = (int(c), str(lab), int(s))
        if info["has_index"]:
            from retrieval.engine.index import load_index

            live.index = load_index(snap / "index")
        return live
    except (OSError, KeyError, ValueError) as exc:
        # No snapshot yet, or one being replaced under us: start empty and catch up from the DB.
        logger.info("index v%s: no usable snapshot (%s)", version_id, exc)
        return None


def index_query(
    *,
    model_version: ModelVersion,
    query_vectors: np.ndarray,
    k_cases: int,
    label_filter: str | None = None,
    exclude_case_ids: set[int] | None = None,
    hierarchical: bool = False,
    abstain: dict | None = None,
):
    """Sync, then rank reference cases for the query slices' vectors (engine `rank_cases`).

    Returns (QueryResult, meta) where meta maps embedding ids to (case id, code, slice id).
    Cases in `exclude_case_ids` (the query study's own reference case) are left out of the
    metadata handed to the engine, which skips hits without metadata, so they neither take a
    place among the k cases nor vote. `hierarchical`: class-first search (the class centroids
    are cached per library state); `abstain`: the model's thresholds (engine
    `abstain_thresholds`).
    """
    from retrieval.engine.query import QueryResult, class_centroids, rank_cases

    live = index_sync(model_version=model_version)
    if live.index is None or not live.meta or len(query_vectors) == 0:
        return QueryResult(cases=[], suggested_label=None, votes={}), live.meta
    exclude = exclude_case_ids or set()
    slice_meta = {i: (m[0], m[1]) for i, m in live.meta.items() if m[0] not in exclude}
    centroids = None
    if hierarchical:
        key = (live.version_id, live.checksum(), frozenset(exclude))
        centroids = _centroids.get(key)
        if centroids is None:
            centroids = class_centroids(index=live.index, slice_meta=slice_meta)
            _centroids.clear()  # one library state per process is enough
            _centroids[key] = centroids
    result = rank_cases(
        query_vectors=np.asarray(query_vectors, dtype=np.float32),
        index=live.index,
        slice_meta=slice_meta,
        k_cases=k_cases,
        label_filter=label_filter,
        hierarchical=hierarchical,
        centroids=centroids,
        abstain=abstain,
    )
    return result, dict(live.meta)


# Class centroids of the class-first search, by (version, library checksum, excluded cases).
_centroids: dict[tuple, dict] = {}
