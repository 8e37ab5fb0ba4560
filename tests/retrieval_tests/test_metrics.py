"""Retrieval metrics on hand-checkable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrieval.engine import metrics


def test_top1_classification_metrics_match_hand_count():
    # true: a a a b b ; predicted: a a b b a  -> a: tp 2, fp 1, fn 1 ; b: tp 1, fp 1, fn 1
    out = metrics.classification_metrics(list("aaabb"), list("aabba"))
    assert out["per_class"]["a"]["precision"] == pytest.approx(2 / 3)
    assert out["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert out["per_class"]["b"]["precision"] == pytest.approx(1 / 2)
    assert out["per_class"]["b"]["recall"] == pytest.approx(1 / 2)
    assert out["macro_f1"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion_matrix"] == [[2, 1], [1, 1]]


def test_never_predicted_class_has_zero_precision_not_nan():
    out = metrics.classification_metrics(["a", "b"], ["a", "a"], labels=["a", "b"])
    assert out["per_class"]["b"]["precision"] == 0.0
    assert not math.isnan(out["macro_f1"])


def test_precision_map_and_recall_at_k_on_a_ranking():
    # one query of label "a"; ranking a, b, a, b  -> rel 1 0 1 0
    retrieved = np.array([["a", "b", "a", "b"]])
    assert metrics.precision_at_k(["a"], retrieved, k=4) == pytest.approx(0.5)
    # AP@4 = (1/1 + 2/3) / 2
    assert metrics.map_at_k(["a"], retrieved, k=4) == pytest.approx((1 + 2 / 3) / 2)
    rec = metrics.recall_at_k(["b"], retrieved, ks=(1, 2, 4))
    assert rec == {"1": 0.0, "2": 1.0, "4": 1.0}


def test_map_is_zero_for_a_query_without_relevant_hits():
    retrieved = np.array([["b", "b", "b"], ["a", "a", "a"]])
    assert metrics.map_at_k(["a", "a"], retrieved, k=3) == pytest.approx(0.5)


def test_ranking_metrics_refuse_short_rankings():
    with pytest.raises(ValueError, match="at least 10"):
        metrics.precision_at_k(["a"], np.array([["a"] * 3]), k=10)


def test_knn_vote_majority_and_tie_goes_to_better_rank():
    retrieved = np.array([["b", "a", "a"], ["b", "a", "c"]])
    assert metrics.knn_vote(retrieved, k=3) == ["a", "b"]


def test_intra_and_inter_class_distances_on_orthogonal_points():
    # class a: e1 twice (distance 0); class b: e2 and -e2 ... normalised, distance 2
    x = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    labels = ["a", "a", "b", "b"]
    assert metrics.intra_class_distance(x, labels) == pytest.approx((0.0 + 2.0) / 2)
    # centres: a = e1, b = 0 -> distance 1
    assert metrics.inter_class_distance(x, labels) == pytest.approx(1.0)
    # cross pairs: e1 vs +-e2 -> sqrt(2) each
    assert metrics.inter_class_sample_distance(x, labels) == pytest.approx(math.sqrt(2))


def test_silhouette_is_high_for_separated_clusters_and_zero_when_undefined():
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0.0]) + 0.01 * rng.standard_normal((10, 2))
    b = np.array([0.0, 1.0]) + 0.01 * rng.standard_normal((10, 2))
    x = np.vstack([a, b])
    labels = ["a"] * 10 + ["b"] * 10
    assert metrics.silhouette(x, labels) > 0.9
    assert metrics.silhouette(x, ["a"] * 20) == 0.0


def test_retrieval_metrics_has_every_report_key():
    retrieved = np.array([["a"] * 10, ["b"] * 10])
    out = metrics.retrieval_metrics(["a", "b"], retrieved)
    for key in ("per_class", "macro_f1", "accuracy", "map_at_10", "precision_at_10"):
        assert key in out
    assert out["macro_f1"] == 1.0
    assert out["recall_at_k"] == {"1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
