"""Contrastive training: head-only on cached features, end-to-end step, partner sampling,
seeding and patient-level folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.fusion import ILDFFN, ProjectionHead
from retrieval.engine.training import (
    TrainConfig,
    patient_kfold,
    sample_partners,
    train_end_to_end,
    train_head,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _features(n_per_class: int = 12, seed: int = 0):
    """Two classes separated in a few deep and radiomics dimensions, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    deep = rng.random((len(labels), 32)).astype(np.float32)
    deep[labels == 1, :4] += 1.0
    rad = rng.normal(size=(len(labels), 10))
    rad[labels == 1, :3] += 1.5
    return deep, rad, labels


def _nn_accuracy(emb: np.ndarray, labels: np.ndarray) -> float:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return float((labels[sim.argmax(axis=1)] == labels).mean())


def _embed(head, fusion, deep, rad):
    with torch.no_grad():
        d, r = torch.as_tensor(deep), torch.as_tensor(rad, dtype=torch.float32)
        out = head(d, r) if fusion == "ildffn" else head(d if fusion == "deep" else r)
    return out.numpy()


def test_head_training_lowers_the_loss_and_separates_the_classes():
    deep, rad, labels = _features()
    config = TrainConfig(epochs=8, embed_dim=8, lr=3e-3, device="cpu")
    head, metrics = train_head(deep=deep, rad=rad, labels=labels, config=config)
    assert isinstance(head, ILDFFN) and not head.training
    assert len(metrics["loss_history"]) == 8
    assert metrics["loss_history"][-1] < metrics["loss_history"][0]
    assert _nn_accuracy(_embed(head, "ildffn", deep, rad), labels) >= 0.9


@pytest.mark.parametrize(
    ("fusion", "loss"), [("deep", "paper"), ("radiomics", "supcon"), ("ildffn", "supcon")]
)
def test_every_fusion_and_loss_trains(fusion, loss):
    deep, rad, labels = _features(6)
    config = TrainConfig(epochs=2, embed_dim=4, fusion=fusion, loss=loss, device="cpu")
    head, metrics = train_head(deep=deep, rad=rad, labels=labels, config=config)
    expected = ILDFFN if fusion == "ildffn" else ProjectionHead
    assert isinstance(head, expected)
    assert np.isfinite(metrics["final_loss"])
    emb = _embed(head, fusion, deep, rad)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_training_is_reproducible_under_a_seed():
    deep, rad, labels = _features(6)
    config = TrainConfig(epochs=2, embed_dim=4, device="cpu", seed=3)
    a, _ = train_head(deep=deep, rad=rad, labels=labels, config=config)
    b, _ = train_head(deep=deep, rad=rad, labels=labels, config=config)
    np.testing.assert_array_equal(_embed(a, "ildffn", deep, rad), _embed(b, "ildffn", deep, rad))


def test_partners_come_from_the_whole_training_set():
    labels = np.array([0, 0, 0, 1, 1, 2])
    rng = np.random.default_rng(0)
    anchors = np.array([0, 3, 5])
    pos, neg, ok = sample_partners(labels, anchors, rng)
    assert ok.all() and neg.shape == (3, 2)
    for a, p, negs in zip(anchors, pos, neg, strict=True):
        assert labels[p] == labels[a]
        assert p != a or (labels == labels[a]).sum() == 1
        assert sorted(labels[negs]) == sorted(set(np.unique(labels)) - {labels[a]})


def test_bad_inputs_are_rejected():
    deep, rad, labels = _features(4)
    with pytest.raises(ValueError, match="two classes"):
        train_head(deep=deep, rad=rad, labels=np.zeros(8), config=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="same"):
        train_head(deep=deep[:3], rad=rad, labels=labels, config=TrainConfig(epochs=1))
    with pytest.raises(ValueError, match="fusion"):
        train_head(deep=deep, rad=rad, labels=labels, config=TrainConfig(fusion="both"))


def test_end_to_end_fine_tunes_backbone_and_head_for_one_step():
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.preprocess import PreparedSlice

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights="random", device="cpu")
    rng = np.random.default_rng(0)
    slices = [
        PreparedSlice(rng.random((32, 32), dtype=np.float32), np.ones((32, 32), bool), 0.3)
        for _ in range(4)
    ]
    labels = np.array([0, 0, 1, 1])
    rad = rng.normal(size=(4, 6))
    before = backbone.features[0].weight.detach().clone()
    config = TrainConfig(epochs=1, batch_size=4, embed_dim=4, mode="end_to_end", device="cpu")
    head, metrics = train_end_to_end(
        backbone=backbone, slices=slices, rad=rad, labels=labels, config=config
    )
    assert isinstance(head, ILDFFN) and metrics["epochs"] == 1
    assert backbone.fine_tuned and len(backbone.fine_tuned_sha256) == 64
    assert not torch.equal(before, backbone.features[0].weight)


def test_patient_kfold_never_splits_a_patient():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"p{i}" for i in range(30)], rng.integers(1, 5, size=30))
    labels = np.array([int(p[1:]) % 2 for p in patients])
    folds = patient_kfold(patients, labels, folds=5, seed=0)
    assert len(folds) == 5
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen) == list(range(len(patients)))  # every sample tested exactly once
    for train, test in folds:
        assert not set(patients[train]) & set(patients[test])
        assert set(labels[test]) == {0, 1}
    with pytest.raises(ValueError, match="folds"):
        patient_kfold(patients[:3], labels[:3], folds=5, seed=0)
