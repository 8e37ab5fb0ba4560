"""Frozen-vector variants (retrieval.engine.feature_variants): the deepest level is the served
vector, the levels have the trunk's stage widths, the flip view is the mirror's vector, and the
normalised combinations weigh each block equally. Random weights, small inputs: no download."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.backbones import build_backbone
from retrieval.engine.feature_variants import (
    concat_normalised,
    extract_views,
    flip_mean,
    level_maps,
)
from retrieval.engine.features import FeatureExtractor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lite0():
    torch.manual_seed(0)
    return build_backbone("efficientnet_lite0", weights="random", device="cpu")


def _images(n: int, side: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((side, side), dtype=np.float32) for _ in range(n)]


def test_deepest_level_is_the_served_vector_and_levels_have_stage_widths(lite0):
    images = _images(3)
    views = extract_views(lite0, images, levels=3, batch_size=2)
    assert [v.shape for v in views["orig"]] == [(3, 192), (3, 320), (3, 1280)]
    served = FeatureExtractor(lite0, radiomics=None, batch_size=2).deep(images)
    np.testing.assert_allclose(views["orig"][-1], served, rtol=1e-5, atol=1e-6)
    assert "flip" not in views


def test_input_size_resizes_like_the_feature_extractor(lite0):
    images = _images(2, side=80)
    views = extract_views(lite0, images, input_size=48)
    served = FeatureExtractor(lite0, radiomics=None, input_size=48).deep(images)
    np.testing.assert_allclose(views["orig"][0], served, rtol=1e-5, atol=1e-6)


def test_flip_view_is_the_vector_of_the_mirrored_image(lite0):
    images = _images(2, seed=1)
    views = extract_views(lite0, images, levels=2, flip=True)
    mirrored = extract_views(lite0, [im[:, ::-1].copy() for im in images], levels=2)
    for lev in range(2):
        np.testing.assert_allclose(views["flip"][lev], mirrored["orig"][lev], rtol=1e-4, atol=1e-5)
    # an asymmetric random image is not its own mirror
    assert not np.allclose(views["flip"][-1], views["orig"][-1], rtol=1e-3)


def test_resnet_levels_are_its_layers():
    torch.manual_seed(0)
    net = build_backbone("resnet50", weights="random", device="cpu")
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        maps = level_maps(net.features, x, levels=3)
        assert [m.shape[1] for m in maps] == [512, 1024, 2048]
        torch.testing.assert_close(maps[-1], net.features(x))
    with pytest.raises(ValueError, match="levels"):
        level_maps(net.features, x, levels=5)


def test_flip_mean_and_concat_normalised():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    m = flip_mean(a * 5.0, b)  # scale of either input does not matter
    unit = (
        a / np.linalg.norm(a, axis=1, keepdims=True),
        b / np.linalg.norm(b, axis=1, keepdims=True),
    )
    np.testing.assert_allclose(m, (unit[0] + unit[1]) / 2, rtol=1e-5)
    np.testing.assert_allclose(flip_mean(a, a), unit[0], rtol=1e-5)
    c = concat_normalised(a * 100.0, rng.normal(size=(4, 3)))
    assert c.shape == (4, 9)
    np.testing.assert_allclose(np.linalg.norm(c[:, :6], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), np.sqrt(2.0), rtol=1e-5)
    with pytest.raises(ValueError):
        flip_mean(a, b[:3])
    with pytest.raises(ValueError):
        concat_normalised(a, b[:3])
