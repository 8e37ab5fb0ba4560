"""The two LSH backends: the paper's 3-bit bucket, multi-probe, fallback, pending, tombstones."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine.index import LSHIndex, PaperLSHIndex, build_index, load_index
from tests.retrieval_tests.index_data import DIM, clustered, exact_truth, recall_at_k


@pytest.fixture(scope="module")
def data():
    return clustered(n=3000, queries=60)


def test_paper_lsh_has_one_table_of_8_buckets_and_answers_from_the_query_bucket_only(data):
    ids, x, q = data
    index = build_index("lsh-paper", dim=DIM, seed=1)
    assert isinstance(index, PaperLSHIndex)
    assert (index.tables, index.bits, index.probes, index.fallback) == (1, 3, 0, False)
    index.add(ids, x)
    buckets = index.bucket_of(x)
    assert set(buckets.tolist()) <= set(range(8))
    by_id = dict(zip(ids.tolist(), buckets.tolist(), strict=True))

    found, scores = index.search(q, 10)
    for row, qb in zip(found, index.bucket_of(q), strict=True):
        hits = row[row >= 0]
        assert {by_id[i] for i in hits.tolist()} == {qb}
        # Within the bucket the ranking is exact cosine.
        members = ids[buckets == qb]
        assert len(hits) == min(10, len(members))


def test_paper_lsh_returns_fewer_than_k_padded_when_the_bucket_is_small():
    index = build_index("lsh-paper", dim=DIM, seed=0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, DIM)).astype(np.float32)
    index.add(np.arange(12), x)
    q = x[0]
    bucket_size = int((index.bucket_of(x) == index.bucket_of(q)[0]).sum())
    assert bucket_size < 10  # 12 random vectors over 8 buckets

    found, scores = index.search(q, 10)

    assert (found[0] >= 0).sum() == bucket_size
    assert np.all(found[0, bucket_size:] == -1)
    assert np.all(np.isneginf(scores[0, bucket_size:]))
    assert found[0, 0] == 0


def test_lsh_falls_back_to_exact_search_when_the_buckets_hold_fewer_than_k(data):
    ids, x, q = data
    # 30 bits and 1 table: nearly every bucket is empty or a single vector.
    sparse = dict(tables=1, bits=30, probes=0)
    assert build_index("lsh", dim=DIM, **sparse, fallback=False).search(q, 0)[0].shape == (60, 0)
    no_fallback = build_index("lsh", dim=DIM, **sparse, fallback=False)
    no_fallback.add(ids, x)
    assert np.all(no_fallback.candidate_count(q) < 10)
    assert (no_fallback.search(q, 10)[0] < 0).any()

    index = build_index("lsh", dim=DIM, **sparse)
    index.add(ids, x)
    found, scores = index.search(q, 10)
    truth, truth_scores = exact_truth(ids, x, q)
    np.testing.assert_array_equal(found, truth)
    np.testing.assert_allclose(scores, truth_scores, atol=1e-6)


def test_multi_probe_raises_recall_over_home_buckets_only(data):
    ids, x, q = data
    truth, _ = exact_truth(ids, x, q)
    recalls = {}
    for probes in (0, 64):
        index = build_index("lsh", dim=DIM, tables=4, bits=12, probes=probes, fallback=False)
        index.add(ids, x)
        recalls[probes] = recall_at_k(index.search(q, 10)[0], truth)
    assert recalls[64] > recalls[0] + 0.1


def test_pending_vectors_are_searched_and_merging_does_not_change_results(data):
    ids, x, q = data
    lazy = build_index("lsh", dim=DIM, merge_threshold=10**9)
    eager = build_index("lsh", dim=DIM, merge_threshold=1)
    for start in range(0, len(ids), 500):  # trickle in like an incremental sync
        lazy.add(ids[start : start + 500], x[start : start + 500])
        eager.add(ids[start : start + 500], x[start : start + 500])
    assert len(lazy._pending_rows) == len(ids) and len(eager._pending_rows) == 0

    a, b = lazy.search(q, 10), eager.search(q, 10)
    np.testing.assert_array_equal(a[0], b[0])
    lazy.flush()
    np.testing.assert_array_equal(lazy.search(q, 10)[0], a[0])


def test_many_removals_compact_the_tables_and_results_match_a_fresh_index(data, tmp_path):
    ids, x, q = data
    index = build_index("lsh", dim=DIM, seed=4, merge_threshold=1000)
    index.add(ids, x)
    assert index._rows.shape[1] == len(ids)  # merged into the sorted tables
    doomed = ids[::2]
    index.remove(doomed)
    assert index._store.n_dead == 0  # half removed: compaction ran
    assert index._rows.shape[1] == len(ids) - len(doomed)

    fresh = build_index("lsh", dim=DIM, seed=4)
    fresh.add(ids[1::2], x[1::2])
    np.testing.assert_array_equal(index.search(q, 10)[0], fresh.search(q, 10)[0])

    index.save(tmp_path / "ix")
    np.testing.assert_array_equal(
        load_index(tmp_path / "ix").search(q, 10)[0], fresh.search(q, 10)[0]
    )


def test_float16_storage_halves_vector_memory_and_keeps_recall(data):
    ids, x, q = data
    truth, _ = exact_truth(ids, x, q)
    f32 = build_index("lsh", dim=DIM)
    f16 = build_index("lsh", dim=DIM, dtype="float16")
    f32.add(ids, x)
    f16.add(ids, x)
    assert f16._store.vectors.nbytes * 2 == f32._store.vectors.nbytes
    assert (
        recall_at_k(f16.search(q, 10)[0], truth) >= recall_at_k(f32.search(q, 10)[0], truth) - 0.02
    )


def test_different_seeds_draw_different_hyperplanes():
    a = LSHIndex(dim=DIM, seed=0)
    b = LSHIndex(dim=DIM, seed=1)
    assert not np.allclose(a._planes, b._planes)
    np.testing.assert_array_equal(a._planes, LSHIndex(dim=DIM, seed=0)._planes)
