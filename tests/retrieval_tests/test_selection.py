"""The headline's adaptive embedding: inner-validation selection, the radiomics gate, the
frozen fallback, abstention, and the recipe's model that serves it."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine import metrics
from retrieval.engine.fusion import AdaptiveEmbedding, head_embed, head_from_spec, head_spec
from retrieval.engine.selection import (
    SelectionConfig,
    frozen_guard,
    macro_f1_rows,
    select_embedding,
)
from retrieval.engine.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _patients_data(*, deep_signal: float, rad_signal: float, seed: int = 0):
    """3 classes x 8 patients x 3 slices. Each class has a centre in deep space (strength
    `deep_signal`) and in radiomics space (`rad_signal`); each patient a jitter around it; the
    rest is noise."""
    rng = np.random.default_rng(seed)
    deep_c = rng.normal(size=(3, 64))
    rad_c = rng.normal(size=(3, 20))
    deep, rad, labels, patients = [], [], [], []
    for c in range(3):
        for p in range(8):
            d_p = rng.normal(size=64) * 0.5
            r_p = rng.normal(size=20) * 0.5
            for _ in range(3):
                deep.append(deep_signal * deep_c[c] + d_p + rng.normal(size=64))
                rad.append(rad_signal * rad_c[c] + r_p + rng.normal(size=20))
                labels.append(f"class{c}")
                patients.append(f"c{c}p{p}")
    deep = np.abs(np.asarray(deep, np.float32) + 5.0)  # GeM vectors are positive
    return deep, np.asarray(rad, np.float32), np.asarray(labels), np.asarray(patients)


GATE_ONLY = {"transforms": ("raw",), "alphas": (1.0,), "w_rads": (0.0, 0.3, 0.6, 1.0, 3.0)}


def test_gate_switches_radiomics_off_when_radiomics_is_noise():
    deep, rad, labels, patients = _patients_data(deep_signal=1.5, rad_signal=0.0)
    sel = select_embedding(
        deep=deep, rad=rad, labels=labels, patients=patients, config=SelectionConfig(**GATE_ONLY)
    )
    assert sel.chosen["w_rad"] == 0.0
    assert sel.model.w_rad == 0.0
    # with w 0 the embedding is exactly the frozen deep_only vector
    np.testing.assert_allclose(
        head_embed(sel.model, "adaptive", deep, rad), metrics.l2_normalise(deep), atol=1e-5
    )


def test_gate_switches_radiomics_on_when_only_radiomics_carries_the_classes():
    deep, rad, labels, patients = _patients_data(deep_signal=0.0, rad_signal=2.0)
    sel = select_embedding(
        deep=deep, rad=rad, labels=labels, patients=patients, config=SelectionConfig(**GATE_ONLY)
    )
    assert sel.chosen["w_rad"] > 0.0
    assert sel.chosen["inner_macro_f1"] > sel.chosen["inner_macro_f1_frozen"] + 0.2
    # a real gain passes the bootstrap guard against the frozen vector
    assert sel.chosen["guard"]["kept"] and sel.chosen["guard"]["lower"] > 0.1


def test_selection_falls_back_to_frozen_when_the_trained_candidate_is_worse():
    # The learned part is a 2-d head that never learns (lr 0): mixing it into the frozen
    # vector only adds noise, so every residual candidate scores at most the frozen one.
    deep, rad, labels, patients = _patients_data(deep_signal=1.0, rad_signal=0.0)
    untrained = TrainConfig(
        loss="supcon", lr=0.0, epochs=2, batch_size=32, embed_dim=2, fusion="deep",
        patience=1, device="cpu",
    )  # fmt: skip
    config = SelectionConfig(
        transforms=("raw",), alphas=(1.0, 0.6, 0.4), w_rads=(0.0,), head=untrained
    )
    sel = select_embedding(deep=deep, rad=rad, labels=labels, patients=patients, config=config)
    assert sel.scores["raw/a1/w0"] >= max(sel.scores["raw/a0.6/w0"], sel.scores["raw/a0.4/w0"])
    assert sel.chosen["candidate"] == "raw/a1/w0"
    assert sel.model.head is None  # nothing learned is served


def test_selection_keeps_frozen_when_a_class_has_a_single_patient():
    deep, rad, labels, patients = _patients_data(deep_signal=1.0, rad_signal=0.0)
    patients = np.where(labels == "class0", "only-one", patients)
    sel = select_embedding(deep=deep, rad=rad, labels=labels, patients=patients)
    assert sel.chosen["candidate"] == "raw/a1/w0"
    assert "fewer than 2 patients" in sel.chosen["reason"]


def test_adaptive_embedding_round_trips_through_its_spec_and_state():
    rng = np.random.default_rng(0)
    deep = np.abs(rng.normal(size=(40, 16))).astype(np.float32)
    rad = rng.normal(size=(40, 5)).astype(np.float32)
    model = AdaptiveEmbedding(
        16, 5, transform="whiten", whiten_dim=8, head_dim=4, alpha=0.6, w_rad=0.3
    )
    model.fit_transform_stats(deep)
    rebuilt = head_from_spec(head_spec(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    np.testing.assert_array_equal(
        head_embed(rebuilt, "adaptive", deep, rad), head_embed(model, "adaptive", deep, rad)
    )
    emb = head_embed(model, "adaptive", deep, rad)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_abstention_happens_below_the_calibrated_thresholds():
    rng = np.random.default_rng(0)
    top_sim = rng.uniform(0.5, 1.0, 400)
    margin = rng.uniform(0.0, 1.0, 400)
    correct = rng.random(400) < 0.4 + 0.6 * margin  # confident votes are right more often
    thr = metrics.calibrate_abstain(top_sim, margin, correct, target_coverage=0.8)
    assert 0.75 <= thr["coverage"] <= 0.85
    assert thr["accuracy_at_coverage"] > thr["accuracy_all"]
    lo_sim, lo_margin = thr["min_similarity"] - 1e-3, thr["min_margin"] - 1e-3
    hi_sim, hi_margin = thr["min_similarity"] + 1e-3, thr["min_margin"] + 1e-3
    assert metrics.abstains(
        [lo_sim, hi_sim, hi_sim], [hi_margin, lo_margin, hi_margin], thr
    ).tolist() == [
        True,
        True,
        False,
    ]


def test_abstention_reaches_a_target_accuracy_when_asked():
    margin = np.linspace(0, 1, 101)
    correct = margin > 0.3  # every vote above margin 0.3 is right
    thr = metrics.calibrate_abstain(
        np.ones(101), margin, correct, target_coverage=1.0, target_accuracy=1.0
    )
    assert thr["accuracy_at_coverage"] == 1.0
    assert thr["min_margin"] == pytest.approx(0.31)


def test_balanced_vote_corrects_for_a_majority_class():
    # 3 hits of the majority class (80 % of the library) against 2 of the minority
    retrieved = np.array([["a", "a", "b", "a", "b"]])
    scores = np.array([[0.9, 0.9, 0.9, 0.9, 0.9]])
    plain = metrics.balanced_knn_vote(retrieved, scores, k=5, classes=["a", "b"])
    fair = metrics.balanced_knn_vote(
        retrieved, scores, k=5, classes=["a", "b"], priors=np.array([0.8, 0.2])
    )
    assert plain["predicted"][0] == "a"
    assert fair["predicted"][0] == "b"
    assert fair["margin"][0] == pytest.approx(abs(fair["probs"][0, 1] - fair["probs"][0, 0]))


def test_case_metrics_pool_a_patients_slices():
    # patient q1 (label a): slice 1 best matches a "b" case once, but case r1 ("a") is near
    # both slices, so the case-level answer is "a"
    retrieved_patients = np.array([["r2", "r1"], ["r1", "r3"]])
    retrieved_labels = np.array([["b", "a"], ["a", "b"]])
    scores = np.array([[0.95, 0.9], [0.9, 0.5]])
    out = metrics.case_metrics(
        ["q1", "q1"], ["a", "a"], retrieved_patients, retrieved_labels, scores, labels=["a", "b"]
    )
    assert out["n_cases"] == 1
    assert out["case_accuracy"] == 1.0


def test_candidate_similarity_from_parts_equals_the_built_embeddings_cosine():
    from retrieval.engine.selection import (
        Candidate,
        _combined,
        _part_similarities,
        build_embedding,
    )
    from retrieval.engine.training import train_head

    deep, rad, labels, _ = _patients_data(deep_signal=1.0, rad_signal=1.0)
    y = np.unique(labels, return_inverse=True)[1]
    tr, va = np.arange(0, 72, 2), np.arange(1, 72, 2)
    head, _ = train_head(
        deep=deep[tr], rad=rad[tr], labels=y[tr],
        config=TrainConfig(fusion="deep", loss="supcon", epochs=1, embed_dim=8, device="cpu"),
    )  # fmt: skip
    config = SelectionConfig(whiten_dim=16)
    cand = Candidate("whiten", 0.6, 0.3)
    parts = _part_similarities([cand], deep=deep, rad=rad, tr=tr, va=va, head=head, config=config)
    model = build_embedding(cand, deep=deep[tr], rad=rad[tr], head=head, config=config)
    expected = (
        head_embed(model, "adaptive", deep[va], rad[va])
        @ head_embed(model, "adaptive", deep[tr], rad[tr]).T
    )
    np.testing.assert_allclose(_combined(parts, cand), expected, atol=1e-5)


def test_macro_f1_rows_equals_sklearn_macro_f1_and_weights_count_rows():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))  # 3 = none of them
    want = f1_score(y, pred, labels=[0, 1, 2], average="macro", zero_division=0)
    assert macro_f1_rows(y, pred, np.ones((1, 200)), 3)[0] == pytest.approx(want)
    twice = np.concatenate([y, y[:50]]), np.concatenate([pred, pred[:50]])
    weights = np.ones((1, 200))
    weights[0, :50] = 2.0
    assert macro_f1_rows(y, pred, weights, 3)[0] == pytest.approx(
        f1_score(*twice, labels=[0, 1, 2], average="macro", zero_division=0)
    )


def _guard_data(flip_share: float, seed: int = 0):
    """60 patients x 4 rows, 2 classes; the frozen predictions are right on 70 % of the rows;
    the chosen ones flip `flip_share` of the frozen mistakes to right (and as many rights to
    wrong when `flip_share` is negative)."""
    rng = np.random.default_rng(seed)
    patients = np.repeat([f"p{i}" for i in range(60)], 4)
    labels = np.repeat(np.array(["a", "b"] * 30), 4)
    frozen = np.where(rng.random(240) < 0.7, labels, np.where(labels == "a", "b", "a"))
    chosen = frozen.copy()
    wrong = np.flatnonzero(frozen != labels)
    fix = rng.choice(wrong, int(abs(flip_share) * len(wrong)), replace=False)
    chosen[fix] = labels[fix]
    if flip_share < 0:  # as many new mistakes elsewhere: no gain on average
        right = np.flatnonzero(frozen == labels)
        broke = rng.choice(right, len(fix), replace=False)
        chosen[broke] = np.where(labels[broke] == "a", "b", "a")
    return labels, chosen, frozen, patients


def test_the_guard_keeps_a_clear_gain_over_the_frozen_vector():
    labels, chosen, frozen, patients = _guard_data(0.6)
    g = frozen_guard(
        labels=labels, chosen_pred=chosen, frozen_pred=frozen, patients=patients,
        confidence=0.9, resamples=500,
    )  # fmt: skip
    assert g["kept"] and g["gain"] > 0.15 and 0 < g["lower"] < g["gain"]


def test_the_guard_refuses_a_gain_that_is_reshuffled_mistakes():
    labels, chosen, frozen, patients = _guard_data(-0.3)
    g = frozen_guard(
        labels=labels, chosen_pred=chosen, frozen_pred=frozen, patients=patients,
        confidence=0.9, resamples=500,
    )  # fmt: skip
    assert abs(g["gain"]) < 0.03 and g["lower"] <= 0 and not g["kept"]


def test_a_served_choice_other_than_the_frozen_top1_always_passed_the_guard():
    # weak deep signal and noise radiomics: whatever wins the inner scores by chance (a learned
    # part, radiomics, or a vote on the frozen vectors) is only served when the bootstrap keeps
    # its gain over the frozen vector's top-1 above 0
    for seed in range(2):
        deep, rad, labels, patients = _patients_data(deep_signal=0.4, rad_signal=0.0, seed=seed)
        sel = select_embedding(
            deep=deep, rad=rad, labels=labels, patients=patients,
            config=SelectionConfig(**GATE_ONLY),
        )  # fmt: skip
        served = (sel.chosen["candidate"], sel.chosen["k"])
        if served != ("raw/a1/w0", 1):  # anything but the frozen top-1 (deep_only) passed it
            assert sel.chosen["guard"]["kept"] and sel.chosen["guard"]["lower"] > 0
            assert sel.chosen["guard"]["reference"] == "raw/a1/w0 k 1"
        elif sel.chosen["guard"] is not None:  # the guard sent it back to deep_only
            assert not sel.chosen["guard"]["kept"] and sel.model.w_rad == 0.0
            assert sel.k == 1


def test_the_per_fold_choice_says_when_the_guard_refused_a_candidate():
    from retrieval.engine.report import chosen_per_fold_markdown

    guard = {"candidate": "raw/a0.6/w0", "gain": 0.012, "lower": -0.004, "kept": False}
    chosen = {"candidate": "raw/a1/w0", "k": 5, "inner_macro_f1": 0.7, "guard": guard}
    text = chosen_per_fold_markdown({"folds": [{"fold": 1, "chosen": chosen}]})
    assert "fold 1: raw/a1/w0 k 5" in text
    assert "guard on raw/a0.6/w0: gain +0.012, lower bound -0.004, refused: frozen served" in text
