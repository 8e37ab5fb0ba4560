"""Build-time tuning of the LSH index (retrieval/engine/index/tune.py): the recall it promises
holds against exact search on fresh queries, its choice survives save/load, and when LSH cannot
keep the promise the build falls back and says why. Django-free."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine.index import LSHIndex, build_index, load_index
from retrieval.engine.index import tune as tune_module
from retrieval.engine.index.tune import TuneOptions, build_tuned_index, default_backend
from tests.retrieval_tests.index_data import clustered, exact_truth, recall_at_k

TARGET = 0.95
# Small libraries: exact search is faster than any LSH there, so the speed condition is off
# here; it is measured by benchmarks/index_bench.py at 200k.
ANY_SPEED = TuneOptions(target_recall=TARGET, max_query_fraction=None)


@pytest.fixture(scope="module", params=[0.5, 0.75], ids=["default-mixture", "hard-mixture"])
def tuned(request):
    ids, x, q = clustered(4000, 300, spread=request.param)
    return ids, x, q, build_tuned_index("lsh", ids, x, options=ANY_SPEED)


def test_the_tuned_lsh_reaches_the_target_recall_against_exact_search_on_fresh_queries(tuned):
    ids, x, q, index = tuned
    truth, _ = exact_truth(ids, x, q, k=10)
    found, _ = index.search(q, 10)

    assert isinstance(index, LSHIndex)
    assert recall_at_k(found, truth) >= TARGET
    info = index.build_info
    assert info["backend"] == "lsh"
    assert info["recall_lower"] >= TARGET and info["recall"] >= TARGET
    assert (index.tables, index.bits, index.probes) == (
        info["tables"],
        info["bits"],
        info["probes"],
    )
    assert info["trials"] and info["n"] == len(ids)


def test_the_chosen_parameters_and_measured_recall_survive_save_and_load(tuned, tmp_path):
    ids, x, q, index = tuned
    index.save(tmp_path / "idx")

    loaded = load_index(tmp_path / "idx")

    assert loaded.params() == index.params()
    assert loaded.build_info == index.build_info
    np.testing.assert_array_equal(loaded.search(q[:20], 10)[0], index.search(q[:20], 10)[0])


def test_a_view_with_fewer_tables_answers_like_an_index_built_with_them():
    ids, x, q = clustered(2000, 20)
    full = LSHIndex(dim=x.shape[1], seed=4, tables=16, bits=8, probes=0)
    full.add(ids, x)
    built = LSHIndex(dim=x.shape[1], seed=4, tables=8, bits=8, probes=16)
    built.add(ids, x)
    built.flush()

    view = full.with_tables(8, 16)

    np.testing.assert_array_equal(view.search(q, 10)[0], built.search(q, 10)[0])
    assert full.tables == 16 and full.probes == 0  # the view leaves the index alone


def test_when_no_lsh_setting_reaches_the_target_a_small_library_falls_back_to_exact():
    ids, x, q = clustered(3000, 50, spread=0.75)
    hopeless = TuneOptions(
        target_recall=0.99, bits=(20,), tables=(1,), probes=(0,), max_query_fraction=None
    )

    index = build_tuned_index("lsh", ids, x, options=hopeless)

    assert index.backend == "exact"
    assert "no LSH setting tried reached recall@10 0.99" in index.build_info["reason"]
    assert "fell back to exact" in index.build_info["reason"]
    assert index.build_info["requested"] == "lsh" and len(index) == len(ids)


def test_a_large_library_falls_back_to_hnsw_with_ef_search_tuned_to_the_target(monkeypatch):
    monkeypatch.setattr(tune_module, "EXACT_MAX_N", 1000)  # "large" = above 1000 here
    ids, x, q = clustered(3000, 100, spread=0.75)
    hopeless = TuneOptions(bits=(20,), tables=(1,), probes=(0,), max_query_fraction=None)

    index = build_tuned_index("lsh", ids, x, options=hopeless)

    assert index.backend == "faiss-hnsw" and len(index) == len(ids)
    assert index.build_info["recall_lower"] >= TARGET
    assert index.params()["ef_search"] == index.build_info["ef_search"]
    truth, _ = exact_truth(ids, x, q, k=10)
    assert recall_at_k(index.search(q, 10)[0], truth) >= TARGET


def test_an_lsh_slower_than_the_allowed_fraction_of_exact_is_not_chosen():
    ids, x, q = clustered(3000, 10)
    # A zero fraction: no LSH can be fast enough, whatever its recall.
    index = build_tuned_index(
        "lsh", ids, x, options=TuneOptions(max_query_fraction=0.0, tables=(8,), probes=(256,))
    )

    assert index.backend == "exact"
    assert "only at" in index.build_info["reason"]


def test_tiny_libraries_are_searched_exactly_and_other_backends_are_built_as_named():
    ids, x, _ = clustered(500, 1)

    tiny = build_tuned_index("lsh", ids, x)
    paper = build_tuned_index("lsh-paper", ids, x)

    assert tiny.backend == "exact" and "nothing to tune" in tiny.build_info["reason"]
    assert paper.backend == "lsh-paper" and (paper.tables, paper.bits) == (1, 3)
    assert default_backend(5_000) == "exact" and default_backend(1_000_000) == "faiss-hnsw"
    assert build_index("lsh", dim=8).build_info == {}


def test_above_the_size_limit_an_lsh_much_slower_than_hnsw_is_not_served():
    ids, x, q = clustered(3000, 300)
    # LSH reaches the recall (any speed), but must answer within a vanishing ratio of HNSW's
    # time on the same held-out sample: the HNSW index built for the comparison is served.
    strict = TuneOptions(
        target_recall=TARGET, max_query_fraction=None, compare_hnsw_above=1000, max_hnsw_ratio=1e-9
    )

    index = build_tuned_index("lsh", ids, x, options=strict)

    info = index.build_info
    assert index.backend == "faiss-hnsw" and len(index) == len(ids)
    assert info["backend"] == "faiss-hnsw" and "over 1e-09 x faiss-hnsw" in info["reason"]
    assert info["lsh_best"]["recall_lower"] >= TARGET
    assert info["recall_lower"] >= TARGET
    truth, _ = exact_truth(ids, x, q, k=10)
    assert recall_at_k(index.search(q, 10)[0], truth) >= TARGET


def test_above_the_size_limit_an_lsh_within_the_ratio_of_hnsw_is_served_and_the_comparison_kept():
    ids, x, _ = clustered(3000, 300)
    lenient = TuneOptions(
        target_recall=TARGET, max_query_fraction=None, compare_hnsw_above=1000, max_hnsw_ratio=1e9
    )

    index = build_tuned_index("lsh", ids, x, options=lenient)

    info = index.build_info
    assert isinstance(index, LSHIndex) and info["backend"] == "lsh"
    assert info["hnsw_compared"]["recall_lower"] >= TARGET
    assert info["hnsw_compared"]["query_ms"] > 0


def test_below_the_size_limit_no_hnsw_is_built_for_comparison():
    ids, x, _ = clustered(3000, 300)

    index = build_tuned_index("lsh", ids, x, options=ANY_SPEED)

    assert index.build_info["backend"] == "lsh" and "hnsw_compared" not in index.build_info
