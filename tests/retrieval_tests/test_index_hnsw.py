"""faiss HNSW backend: tombstoned removal with over-fetch, and the periodic rebuild."""

from __future__ import annotations

import numpy as np

from retrieval.engine.index import HNSWIndex, build_index
from tests.retrieval_tests.index_data import DIM, clustered, exact_truth, recall_at_k


def test_removed_neighbours_are_skipped_by_over_fetching_and_k_alive_results_remain():
    ids, x, q = clustered(n=1500, queries=20)
    index = build_index("faiss-hnsw", dim=DIM, rebuild_fraction=0.9)
    index.add(ids, x)
    first, _ = index.search(q, 10)
    doomed = np.unique(first)
    index.remove(doomed)
    assert index._n_dead == len(doomed)  # tombstoned, graph untouched

    found, scores = index.search(q, 10)

    assert (found >= 0).all()
    assert not np.isin(found, doomed).any()
    keep = ~np.isin(ids, doomed)
    truth, _ = exact_truth(ids[keep], x[keep], q)
    assert recall_at_k(found, truth) >= 0.9


def test_graph_is_rebuilt_from_alive_vectors_once_tombstones_pass_the_fraction():
    ids, x, q = clustered(n=800, queries=20)
    index = HNSWIndex(dim=DIM, rebuild_fraction=0.25)
    index.add(ids, x)
    index.remove(ids[:100])
    assert index._n_dead == 100 and index._index.ntotal == 800
    index.remove(ids[100:300])  # 300 dead > 25 %: rebuild

    assert index._n_dead == 0 and index._index.ntotal == 500
    truth, _ = exact_truth(ids[300:], x[300:], q)
    found, _ = index.search(q, 10)
    assert recall_at_k(found, truth) >= 0.95
    np.testing.assert_allclose(index.get_vectors(ids[300:305]), x[300:305], atol=1e-6)
