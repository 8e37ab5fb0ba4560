"""The training fixes: early stopping with the best epoch restored, hardest in-batch negatives,
feature-space augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.fusion import head_embed
from retrieval.engine.training import (
    TrainConfig,
    hardest_negatives,
    knn_val_score,
    train_head,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _split_features(seed: int = 0):
    """Train and validation rows of three classes, separable in 4 of 32 deep dimensions."""
    rng = np.random.default_rng(seed)

    def draw(n):
        labels = np.repeat([0, 1, 2], n)
        deep = rng.normal(size=(len(labels), 32)).astype(np.float32)
        for c in range(3):
            deep[labels == c, c * 4 : c * 4 + 4] += 1.2
        rad = rng.normal(size=(len(labels), 6)).astype(np.float32)
        return deep, rad, labels

    return draw(20), draw(10)


def test_early_stopping_restores_the_best_epoch():
    (deep, rad, labels), val = _split_features()
    # a learning rate far too high makes the validation score wander after the first epochs
    config = TrainConfig(
        loss="paper", fusion="deep", lr=0.3, epochs=25, batch_size=16, embed_dim=8,
        patience=4, device="cpu",
    )  # fmt: skip
    head, info = train_head(deep=deep, rad=rad, labels=labels, config=config, val=val)
    history = info["val_history"]
    assert info["epochs_run"] == len(history) <= 25
    assert info["best_epoch"] == int(np.argmax(history)) + 1
    assert info["best_val"] == pytest.approx(max(history))
    assert history[-1] < max(history)  # the last epoch is worse: restoring matters here
    # stopped `patience` epochs after the best one (or ran out of epochs)
    assert info["epochs_run"] == min(25, info["best_epoch"] + 4)
    # the returned head is the best epoch's: its validation score is the best one, not the last
    score = knn_val_score(
        head_embed(head, "deep", deep, rad),
        labels,
        head_embed(head, "deep", val[0], val[1]),
        val[2],
        k=config.val_k,
    )
    assert score == pytest.approx(max(history))


def test_hardest_negative_is_the_closest_sample_of_each_other_class():
    emb = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0], [0.6, 0.8]], dtype=torch.float32
    )
    labels = np.array([0, 1, 1, 2, 2])
    negs = hardest_negatives(emb, labels, torch.tensor([0]), np.array([0]))
    # anchor (1, 0): class 1's closest is (0.9, 0.1), class 2's closest is (0.6, 0.8)
    torch.testing.assert_close(negs[0], emb[[2, 4]])


@pytest.mark.parametrize("loss", ["paper", "supcon"])
def test_fixed_recipe_trains_and_separates_held_out_rows(loss):
    (deep, rad, labels), val = _split_features(1)
    config = TrainConfig(
        loss=loss, fusion="deep", lr=1e-2, epochs=15, batch_size=32, embed_dim=8,
        patience=5, hard_negatives=True, feature_noise=0.2, feature_dropout=0.1, device="cpu",
    )  # fmt: skip
    head, info = train_head(deep=deep, rad=rad, labels=labels, config=config, val=val)
    assert info["best_val"] >= 0.8
    assert np.isfinite(info["final_loss"])


def test_feature_augmentation_changes_training_but_not_embedding():
    (deep, rad, labels), _ = _split_features(2)
    base = TrainConfig(fusion="deep", epochs=2, batch_size=16, embed_dim=4, device="cpu")
    aug = TrainConfig(**{**base.__dict__, "feature_noise": 0.5, "feature_dropout": 0.3})
    a, _ = train_head(deep=deep, rad=rad, labels=labels, config=base)
    b, _ = train_head(deep=deep, rad=rad, labels=labels, config=aug)
    ea, eb = head_embed(a, "deep", deep, rad), head_embed(b, "deep", deep, rad)
    assert not np.allclose(ea, eb)  # the noise changed what was learned
    # eval mode: no noise at embedding time, the same input gives the same output
    np.testing.assert_array_equal(eb, head_embed(b, "deep", deep, rad))


def test_bad_fix_settings_are_rejected():
    (deep, rad, labels), _ = _split_features()
    with pytest.raises(ValueError, match="patience"):
        train_head(deep=deep, rad=rad, labels=labels, config=TrainConfig(patience=0))
    with pytest.raises(ValueError, match="feature_dropout"):
        train_head(deep=deep, rad=rad, labels=labels, config=TrainConfig(feature_dropout=1.0))
