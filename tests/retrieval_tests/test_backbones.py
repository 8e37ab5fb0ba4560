"""Backbone registry: GeM, shapes, weight sources, and the EfficientNet-Lite0 ImageNet weights
(offline package) mapped onto timm with no missing or unexpected keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.backbones import (
    BACKBONES,
    BackboneWeightsUnavailable,
    GeM,
    build_backbone,
    efficientnet_lite0_weights_path,
    efficientnet_pytorch_to_timm,
    images_to_tensor,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gem_with_p_one_is_average_pooling_and_p_is_learnable():
    x = torch.rand(2, 5, 4, 4)
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))
    assert GeM().p.requires_grad and float(GeM().p.detach()) == 3.0
    # p = 3 lies between the mean and the max
    y = GeM()(x)
    assert bool((y >= x.mean(dim=(2, 3)) - 1e-6).all() and (y <= x.amax(dim=(2, 3)) + 1e-6).all())


def test_registry_has_both_backbones_with_their_dimensions():
    assert BACKBONES["resnet50"].out_dim == 2048
    assert BACKBONES["efficientnet_lite0"].out_dim == 1280
    with pytest.raises(KeyError, match="unknown backbone"):
        build_backbone("vgg16", weights="random")


def test_random_efficientnet_gives_gem_vectors_and_exposes_cam_layer():
    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", weights="random", device="cpu")
    out = net(images_to_tensor([np.random.default_rng(0).random((64, 64), np.float32)] * 2))
    assert out.shape == (2, 1280)
    assert net.out_dim == 1280 and net.name == "efficientnet_lite0"
    assert net.weights_source == "random" and len(net.weights_sha256) == 64
    assert isinstance(net.target_layer, torch.nn.Module)
    assert any(m is net.target_layer for m in net.features.modules())


def test_images_to_tensor_replicates_grey_and_normalises():
    x = images_to_tensor([np.zeros((8, 8), np.float32), np.ones((8, 8), np.float32)])
    assert x.shape == (2, 3, 8, 8)
    torch.testing.assert_close(
        x[0, :, 0, 0], torch.tensor([-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    )
    assert images_to_tensor(np.zeros((8, 8), np.float32), size=16).shape == (1, 3, 16, 16)


def test_efficientnet_pytorch_keys_map_onto_timm_without_missing_or_unexpected():
    import timm

    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    assert any(k.startswith("_blocks.") for k in state)  # EfficientNet-PyTorch naming
    mapped = efficientnet_pytorch_to_timm(state)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    result = net.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(mapped) == len(state) == len(net.state_dict())


@pytest.fixture(scope="module")
def pretrained_lite0():
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0", weights="imagenet", device="cpu")


def test_pretrained_lite0_recognises_a_cat_photo():
    """The mapped weights are the real ImageNet ones: skimage's photo of Chelsea the cat is
    classified as a cat (ImageNet classes 281-285)."""
    import timm
    from PIL import Image
    from skimage import data

    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(efficientnet_pytorch_to_timm(state), strict=True)
    net.eval()
    rgb = np.asarray(Image.fromarray(data.chelsea()).resize((224, 224)), np.float32) / 255
    x = (
        torch.from_numpy(rgb).permute(2, 0, 1)[None]
        - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    ) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        top = int(net(x).argmax())
    assert 281 <= top <= 285


def test_pretrained_features_differ_from_random_init_and_between_images(pretrained_lite0):
    from skimage import data

    random_net = build_backbone("efficientnet_lite0", weights="random", device="cpu")
    imgs = [data.camera()[::4, ::4] / 255.0, data.coins()[::2, ::2] / 255.0]
    imgs = [np.asarray(im[:96, :96], np.float32) for im in imgs]
    with torch.no_grad():
        pre = pretrained_lite0(images_to_tensor(imgs))
        rnd = random_net(images_to_tensor(imgs))
    assert pretrained_lite0.weights_source == "imagenet"
    cos = torch.nn.functional.cosine_similarity(pre[0], pre[1], dim=0)
    assert float(cos) < 0.99  # two different images, two different descriptors
    assert not torch.allclose(pre, rnd)
    # ImageNet features are sparse after ReLU6 (many near-zero channels); random-init ones
    # are not: the spread differs clearly
    assert abs(float(pre.std()) - float(rnd.std())) > 1e-3


def test_lite0_weights_hash_is_the_package_file_hash(pretrained_lite0):
    import hashlib

    digest = hashlib.sha256(efficientnet_lite0_weights_path().read_bytes()).hexdigest()
    assert pretrained_lite0.weights_sha256 == digest


def test_resnet50_weights_from_a_configured_file(tmp_path):
    import hashlib

    from torchvision.models import resnet50

    torch.manual_seed(0)
    path = tmp_path / "resnet50.pth"
    reference = resnet50(weights=None)
    torch.save(reference.state_dict(), path)
    net = build_backbone("resnet50", weights="imagenet", imagenet_file=path, device="cpu")
    assert net.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    torch.testing.assert_close(net.features[0].weight, reference.conv1.weight)
    assert net.target_layer is net.features[-1][-1]
    also = build_backbone("resnet50", weights=str(path), device="cpu")
    assert also.weights_sha256 == net.weights_sha256


def test_missing_weight_file_is_an_error_never_random(tmp_path):
    with pytest.raises(BackboneWeightsUnavailable, match="nope.pth"):
        build_backbone(
            "resnet50", weights="imagenet", imagenet_file=tmp_path / "nope.pth", device="cpu"
        )
    with pytest.raises(BackboneWeightsUnavailable, match="not found"):
        build_backbone("efficientnet_lite0", weights=str(tmp_path / "x.pth"), device="cpu")


def test_weights_of_the_wrong_network_are_rejected(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(BackboneWeightsUnavailable, match="do not fit"):
        build_backbone("resnet50", weights=str(path), device="cpu")
