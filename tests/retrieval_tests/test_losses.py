"""Losses on hand-checkable 2-D embeddings."""

from __future__ import annotations

import math

import pytest
import torch

from retrieval.engine.losses import PaperContrastiveLoss, SupConLoss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_loss_is_squared_positive_distance_plus_hinged_negatives():
    loss = PaperContrastiveLoss(margin=0.7)
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[0.0, 1.0]])  # distance sqrt(2) -> 2
    far = torch.tensor([[[-1.0, 0.0]]])  # distance 2 > margin -> 0
    assert math.isclose(float(loss.pair_loss(a, p, far)), 2.0, rel_tol=1e-6)
    theta = 2 * math.asin(0.25)  # chord length 0.5
    near = torch.tensor([[[math.cos(theta), math.sin(theta)]]])
    same = torch.tensor([[1.0, 0.0]])
    assert math.isclose(float(loss.pair_loss(a, same, near)), (0.7 - 0.5) ** 2, rel_tol=1e-5)


def test_paper_loss_sums_one_negative_per_other_class_and_masks_missing_ones():
    loss = PaperContrastiveLoss(margin=0.7)
    a = torch.tensor([[1.0, 0.0]])
    negs = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # two classes, both at distance 0
    assert math.isclose(float(loss.pair_loss(a, a, negs)), 2 * 0.49, rel_tol=1e-6)
    mask = torch.tensor([[True, False]])
    value = loss.pair_loss(a, a, negs, negative_mask=mask)
    assert math.isclose(float(value), 0.49, rel_tol=1e-6)


def test_paper_loss_in_batch_form():
    # anchors 0 and 1 are each other's positive (d^2 = 2); all negatives are beyond the margin;
    # anchor 2 has no positive in the batch: (2 + 2 + 0) / 3
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    value = PaperContrastiveLoss(margin=0.7)(emb, labels)
    assert math.isclose(float(value), 4.0 / 3.0, rel_tol=1e-6)


def test_supcon_matches_the_closed_form():
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    value = SupConLoss(temperature=1.0)(emb, labels)
    # anchors 0 and 1: -log(e^1 / (e^1 + e^0)); anchor 2 has no positive and is skipped
    assert math.isclose(float(value), math.log(1 + math.exp(-1)), rel_tol=1e-6)


def test_supcon_without_positives_is_zero_with_a_graph():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    value = SupConLoss()(emb, torch.tensor([0, 1]))
    assert float(value.detach()) == 0.0
    value.backward()


def test_losses_pull_same_class_together():
    torch.manual_seed(0)
    emb = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    for loss_fn in (PaperContrastiveLoss(), SupConLoss()):
        opt = torch.optim.SGD([emb], lr=0.5)
        first = float(loss_fn(emb, labels))
        for _ in range(20):
            opt.zero_grad()
            loss_fn(emb, labels).backward()
            opt.step()
        assert float(loss_fn(emb, labels)) < first
