"""rank_cases: slice hits -> case ranking -> suggested diagnosis; label filter; hierarchical."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine.index import BACKENDS, build_index
from retrieval.engine.query import class_centroids, rank_cases

DIM = 16


def _unit(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for axis, value in pairs:
        v[axis] = value
    return v / np.linalg.norm(v)


def _index(slices: list[tuple[int, int, str, np.ndarray]], backend: str = "exact"):
    """(slice id, case id, label, vector) -> (index, slice_meta)."""
    index = build_index(backend, dim=DIM)
    index.add(np.array([s[0] for s in slices]), np.vstack([s[3] for s in slices]))
    return index, {s[0]: (s[1], s[2]) for s in slices}


@pytest.fixture
def two_query_slices():
    """Case 1 matches query slice 0 perfectly and nothing else; case 2 matches both at 0.9."""
    c = float(np.sqrt(1 - 0.81))
    slices = [
        (10, 1, "UIP", _unit((0, 1.0))),
        (20, 2, "NSIP", _unit((0, 0.9), (2, c))),
        (21, 2, "NSIP", _unit((1, 0.9), (3, c))),
        (30, 3, "HP", _unit((5, 1.0))),
    ]
    queries = np.vstack([_unit((0, 1.0)), _unit((1, 1.0))])
    return _index(slices), queries


def test_sum_aggregation_ranks_the_case_similar_to_every_query_slice_first(two_query_slices):
    (index, meta), queries = two_query_slices
    result = rank_cases(query_vectors=queries, index=index, slice_meta=meta, k_cases=2)

    assert [c.case_id for c in result.cases] == [2, 1]
    top = result.cases[0]
    assert top.score == pytest.approx(0.9, abs=1e-5)  # mean of best matches 0.9 and 0.9
    assert result.cases[1].score == pytest.approx(0.5, abs=1e-5)  # (1.0 + 0) / 2
    assert top.n_hits == 4  # both slices hit by both query slices (cosines 0.9 and 0)


def test_max_aggregation_ranks_the_single_best_pair_first_and_keeps_that_pair(two_query_slices):
    (index, meta), queries = two_query_slices
    result = rank_cases(
        query_vectors=queries, index=index, slice_meta=meta, k_cases=2, aggregate="max"
    )

    best = result.cases[0]
    assert (best.case_id, best.best_slice_id, best.query_slice_index) == (1, 10, 0)
    assert best.score == pytest.approx(1.0, abs=1e-5)
    second = result.cases[1]
    assert second.best_slice_id in (20, 21) and second.best_score == pytest.approx(0.9, abs=1e-5)


def test_votes_are_normalised_and_the_suggestion_is_the_heaviest_label(two_query_slices):
    (index, meta), queries = two_query_slices
    result = rank_cases(query_vectors=queries, index=index, slice_meta=meta, k_cases=3)

    assert sum(result.votes.values()) == pytest.approx(1.0)
    assert result.suggested_label == "NSIP"
    assert result.votes["NSIP"] == pytest.approx(0.9 / 1.4, abs=1e-4)  # HP scores 0, no mass
    assert result.votes["UIP"] == pytest.approx(0.5 / 1.4, abs=1e-4)


@pytest.mark.parametrize("backend", sorted(set(BACKENDS) - {"lsh-paper"}))
def test_search_goes_deeper_until_k_cases_are_found_when_one_case_owns_the_top_slices(backend):
    rng = np.random.default_rng(0)
    q = _unit((0, 1.0))
    slices = []
    # Case 1: 40 slices almost identical to the query; cases 2..6: one slice each, further.
    for i in range(40):
        slices.append((i, 1, "A", q + 0.01 * rng.standard_normal(DIM).astype(np.float32)))
    for case in range(2, 7):
        slices.append((100 + case, case, "B", _unit((0, 1.0), (case, 0.6 + 0.05 * case))))
    index, meta = _index(slices, backend)

    result = rank_cases(query_vectors=q, index=index, slice_meta=meta, k_slices=5, k_cases=4)

    assert len(result.cases) == 4
    assert result.cases[0].case_id == 1
    assert len({c.case_id for c in result.cases}) == 4


def _two_labels(n_common: int = 300, n_rare_cases: int = 4):
    """Many 'common' slices near the query axis, a few 'rare' cases far from it."""
    rng = np.random.default_rng(1)
    slices = []
    for i in range(n_common):
        v = _unit((0, 1.0)) + 0.3 * rng.standard_normal(DIM).astype(np.float32)
        slices.append((i, 1000 + i // 3, "common", v))
    for j in range(n_rare_cases):
        for s in range(2):
            v = _unit((7, 1.0)) + 0.2 * rng.standard_normal(DIM).astype(np.float32)
            slices.append((5000 + 10 * j + s, 9000 + j, "rare", v))
    return slices


@pytest.mark.parametrize("backend", ["exact", "lsh", "faiss-hnsw"])
def test_label_filter_still_returns_k_cases_of_that_label_when_enough_exist(backend):
    index, meta = _index(_two_labels(), backend)
    q = _unit((0, 1.0))

    result = rank_cases(
        query_vectors=q, index=index, slice_meta=meta, k_cases=3, label_filter="rare"
    )

    assert len(result.cases) == 3
    assert {c.label for c in result.cases} == {"rare"}
    assert result.suggested_label == "rare"


def test_label_filter_returns_what_exists_when_the_index_is_exhausted():
    index, meta = _index(_two_labels(n_rare_cases=2))
    result = rank_cases(
        query_vectors=_unit((0, 1.0)),
        index=index,
        slice_meta=meta,
        k_cases=5,
        label_filter="rare",
    )
    assert sorted(c.case_id for c in result.cases) == [9000, 9001]


def _hierarchical_library():
    """Class 'B' around axis 1 (200 slices), class 'A' around axis 4, plus 3 'A' outliers
    sitting right next to the query, which sits on the B side."""
    rng = np.random.default_rng(2)
    slices = []
    for i in range(200):
        slices.append((i, i // 4, "B", _unit((1, 1.0)) + 0.25 * rng.standard_normal(DIM)))
    for i in range(200):
        slices.append(
            (1000 + i, 500 + i // 4, "A", _unit((4, 1.0)) + 0.25 * rng.standard_normal(DIM))
        )
    query = _unit((1, 0.55), (4, 0.45), (9, 0.3))
    for i in range(3):
        slices.append((2000 + i, 900 + i, "A", query + 0.01 * rng.standard_normal(DIM)))
    return [(a, b, c, np.asarray(v, dtype=np.float32)) for a, b, c, v in slices], query


def test_hierarchical_mode_predicts_the_class_then_searches_only_within_it():
    slices, query = _hierarchical_library()
    index, meta = _index(slices)

    flat = rank_cases(query_vectors=query, index=index, slice_meta=meta, k_cases=3)
    assert flat.cases[0].label == "A"  # the outliers win a flat search

    result = rank_cases(
        query_vectors=query, index=index, slice_meta=meta, k_cases=3, hierarchical=True
    )
    assert result.predicted_label == "B"
    assert list(result.class_scores) == ["B", "A"]
    assert len(result.cases) == 3 and {c.label for c in result.cases} == {"B"}


def test_hierarchical_mode_with_given_centroids_matches_computed_ones():
    slices, query = _hierarchical_library()
    index, meta = _index(slices)
    centroids = class_centroids(index=index, slice_meta=meta)
    assert set(centroids) == {"A", "B"}
    assert centroids["B"][1] > 0.8 and centroids["A"][4] > 0.8

    given = rank_cases(
        query_vectors=query,
        index=index,
        slice_meta=meta,
        k_cases=3,
        hierarchical=True,
        centroids=centroids,
    )
    computed = rank_cases(
        query_vectors=query, index=index, slice_meta=meta, k_cases=3, hierarchical=True
    )
    assert [c.case_id for c in given.cases] == [c.case_id for c in computed.cases]


def test_hits_without_metadata_are_skipped_and_an_empty_index_gives_no_cases(two_query_slices):
    (index, meta), queries = two_query_slices
    partial = {k: v for k, v in meta.items() if k != 10}
    result = rank_cases(query_vectors=queries, index=index, slice_meta=partial, k_cases=3)
    assert 1 not in [c.case_id for c in result.cases]

    empty = build_index("exact", dim=DIM)
    none = rank_cases(query_vectors=queries, index=empty, slice_meta={}, k_cases=3)
    assert none.cases == [] and none.suggested_label is None and none.votes == {}


def test_cases_whose_scores_differ_only_in_float_noise_rank_by_case_id_with_descending_scores():
    # Two cases at cosines 0.9987141 and 0.9987106 to the query: equal to SCORE_DECIMALS, so
    # the tie-break by case id decides, and the scores shown must still descend with the rank.
    def at(cos: float, axis: int) -> np.ndarray:
        return _unit((0, cos), (axis, float(np.sqrt(1 - cos * cos))))

    index, meta = _index([(10, 7, "UIP", at(0.9987106, 1)), (20, 9, "UIP", at(0.9987141, 2))])
    result = rank_cases(query_vectors=_unit((0, 1.0))[None, :], index=index, slice_meta=meta)

    assert [c.case_id for c in result.cases] == [7, 9]
    scores = [c.score for c in result.cases]
    assert scores == sorted(scores, reverse=True)
