"""Partial fine-tuning (retrieval.engine.finetune) on small synthetic texture slices with the
real EfficientNet-Lite0 ImageNet weights: only the last blocks and the head conv/BN change,
frozen BatchNorm statistics stay, early stopping keeps the best validation state, embeddings
are deterministic, augmentation keeps shape and range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.backbones import build_backbone, state_sha256
from retrieval.engine.finetune import (
    FinetuneConfig,
    augment_batch,
    embed_images,
    finetune_backbone,
    inner_patient_split,
    retrieval_score,
)

SIZE = 64  # small inputs keep each run to seconds on a shared 2-core machine
# timm Lite0 trunk as `Backbone.features`: 0 conv_stem, 1 bn1, 2 blocks (stages 0-6),
# 3 conv_head, 4 bn2 (also registered as `target_layer`, for CAM). The last two blocks are
# stage 5's last and stage 6's only one.
TAIL_PREFIXES = (
    "features.2.5.3.",
    "features.2.6.0.",
    "features.3.",
    "features.4.",
    "target_layer.",
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def textures(*, patients: int = 10, per_patient: int = 4, seed: int = 0):
    """Two classes of noisy gratings: smooth sine (class 0) vs hard-edged square (class 1),
    random frequency, phase and orientation per slice; one class per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    images, labels, pats = [], [], []
    for p in range(patients):
        cls = p % 2
        for _ in range(per_patient):
            freq, phase, angle = rng.uniform(3, 7), rng.uniform(0, 2 * np.pi), rng.uniform(0, np.pi)
            wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
            base = 0.5 + 0.25 * (np.sign(wave) if cls else wave)
            noisy = base + rng.normal(0, 0.1, base.shape)
            images.append(np.clip(noisy, 0, 1).astype(np.float32))
            labels.append(cls)
            pats.append(f"patient-{p}")
    return images, np.asarray(labels), pats


@pytest.fixture(scope="module")
def data():
    return textures()


def _lite0():
    return build_backbone("efficientnet_lite0", weights="imagenet", device="cpu")


def test_finetune_changes_only_the_last_blocks_and_the_head_conv(data):
    images, labels, patients = data
    backbone = _lite0()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    sha_before = state_sha256(before)
    config = FinetuneConfig(input_size=SIZE, blocks=2, epochs=2, batch_size=8, val_fraction=0.0)
    info = finetune_backbone(backbone, images, labels, patients=patients, config=config)
    after = backbone.state_dict()

    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "fine-tuning changed nothing"
    assert all(k.startswith(TAIL_PREFIXES) for k in changed), sorted(changed)[:5]
    # every trainable tensor of the tail moved (weights and BatchNorm affine parameters)
    assert {k for k in info["trainable_parameters"]} <= changed
    assert all(k.startswith(TAIL_PREFIXES) for k in info["trainable_parameters"])
    assert "features.3.weight" in changed and "features.2.6.0.conv_pwl.weight" in changed
    assert info["trainable_count"] == sum(after[k].numel() for k in info["trainable_parameters"])
    assert torch.equal(after["gem.p"], before["gem.p"])
    # provenance: marked fine-tuned, new hash, original flags, eval mode, tuned side recorded
    assert backbone.fine_tuned and backbone.fine_tuned_sha256 == state_sha256(after)
    assert backbone.fine_tuned_sha256 != sha_before
    assert all(p.requires_grad for p in backbone.parameters())
    assert not backbone.training and backbone.input_size == SIZE
    assert info["epochs_run"] == 2 and info["best_epoch"] == 2  # no validation: last epoch


def test_frozen_batchnorm_statistics_are_unchanged(data):
    images, labels, patients = data
    backbone = _lite0()
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running_" in k}
    config = FinetuneConfig(input_size=SIZE, blocks=1, epochs=1, batch_size=8, val_fraction=0.0)
    finetune_backbone(backbone, images, labels, patients=patients, config=config)
    after = backbone.state_dict()
    tail = ("features.2.6.0.", "features.3.", "features.4.", "target_layer.")  # stage 6 + head
    frozen = [k for k in before if not k.startswith(tail)]
    assert "features.1.running_mean" in frozen and "features.2.5.3.bn3.running_var" in frozen
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    # the tail's BatchNorm trained in train mode: its statistics adapted to the slices
    assert not torch.equal(before["features.4.running_mean"], after["features.4.running_mean"])


def test_early_stopping_restores_the_best_validation_epoch(data):
    images, labels, patients = data
    backbone = _lite0()
    # a large learning rate makes later epochs worse than the best one, so the restored
    # state is not simply the last
    config = FinetuneConfig(
        input_size=SIZE, blocks=2, epochs=6, batch_size=8, lr=3e-2, patience=1, val_fraction=0.25
    )
    info = finetune_backbone(backbone, images, labels, patients=patients, config=config)
    scores = [row["score"] for row in info["val_history"]]
    assert [row["epoch"] for row in info["val_history"]] == list(range(info["epochs_run"] + 1))
    assert info["best_epoch"] == int(np.argmax(scores))
    assert info["best_epoch"] < info["epochs_run"] < config.epochs  # stopped early
    after_best = scores[info["best_epoch"] + 1 :]
    assert len(after_best) == config.patience and max(after_best) <= max(scores)
    # the backbone now scores what the best epoch scored, on the same inner split
    train_idx, val_idx = inner_patient_split(labels, patients, val_fraction=0.25, seed=0)
    emb = embed_images(backbone, images, input_size=SIZE)
    score = retrieval_score(emb[val_idx], labels[val_idx], emb[train_idx], labels[train_idx])
    assert score["score"] == pytest.approx(scores[info["best_epoch"]], abs=1e-6)


def test_embed_images_is_deterministic_and_matches_the_feature_extractor(data):
    from retrieval.engine.features import FeatureExtractor
    from retrieval.engine.radiomics import RadiomicsExtractor

    images = data[0][:6]
    backbone = _lite0()
    backbone.train()
    first = embed_images(backbone, images, input_size=48, batch_size=4)
    assert first.shape == (6, 1280) and first.dtype == np.float32
    assert backbone.training  # flag restored
    np.testing.assert_array_equal(embed_images(backbone, images, input_size=48), first)
    extractor = FeatureExtractor(backbone, RadiomicsExtractor(), input_size=48)
    np.testing.assert_allclose(extractor.deep(images), first, rtol=1e-5, atol=1e-6)


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    x = torch.rand(5, 1, 40, 40)
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    torch.testing.assert_close(augment_batch(x, torch.Generator().manual_seed(1)), out)
    # a centred bright disc stays mostly where it was: small rotations and scales only
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), indexing="ij")
    disc = (((yy - 19.5) ** 2 + (xx - 19.5) ** 2) < 100).float().expand(5, 1, 40, 40)
    moved = augment_batch(disc, torch.Generator().manual_seed(2))
    overlap = (moved > 0.5).float().mul(disc).sum() / disc.sum()
    assert float(overlap) > 0.8


def test_inner_split_keeps_each_patient_on_one_side(data):
    _, labels, patients = data
    train_idx, val_idx = inner_patient_split(labels, patients, val_fraction=0.2, seed=3)
    pats = np.asarray(patients)
    assert not set(pats[train_idx]) & set(pats[val_idx])
    assert len(train_idx) + len(val_idx) == len(labels) and len(val_idx) > 0
    with pytest.raises(ValueError, match="patients"):
        inner_patient_split(labels[:4], patients[:4], val_fraction=0.2, seed=0)


def test_bad_requests_fail_before_training(data):
    images, labels, patients = data
    backbone = _lite0()
    sha = state_sha256(backbone.state_dict())
    with pytest.raises(ValueError, match="cannot unfreeze"):
        finetune_backbone(
            backbone, images, labels, patients=patients, config=FinetuneConfig(blocks=17)
        )
    with pytest.raises(ValueError, match="two classes"):
        finetune_backbone(
            backbone, images, np.zeros_like(labels), patients=patients, config=FinetuneConfig()
        )
    with pytest.raises(ValueError, match="loss"):
        finetune_backbone(
            backbone, images, labels, patients=patients, config=FinetuneConfig(loss="triplet")
        )
    assert state_sha256(backbone.state_dict()) == sha and not backbone.fine_tuned
