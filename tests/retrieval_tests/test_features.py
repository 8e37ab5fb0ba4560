"""Feature extraction and the on-disk feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cases.phantom import chest_phantom
from retrieval.engine.backbones import build_backbone
from retrieval.engine.features import FeatureCache, FeatureExtractor
from retrieval.engine.preprocess import prepare_slice, window_hu
from retrieval.engine.radiomics import RadiomicsExtractor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights="random", device="cpu")
    return FeatureExtractor(backbone, RadiomicsExtractor(), batch_size=2)


def test_extract_gives_one_row_per_slice(extractor):
    slices = [
        prepare_slice(chest_phantom(size=64, seed=s)[0], is_windowed=False, size=64)
        for s in range(3)
    ]
    deep, rad = extractor.extract(slices)
    assert deep.shape == (3, 1280) and deep.dtype == np.float32
    assert rad.shape == (3, len(extractor.radiomics.feature_names)) and rad.dtype == np.float64
    assert np.isfinite(deep).all() and np.isfinite(rad).all()


def test_cache_reuses_features_and_keys_on_configuration(tmp_path, extractor):
    paths = []
    for s in range(2):
        hu, _ = chest_phantom(size=64, seed=s)
        path = tmp_path / f"s{s}.png"
        Image.fromarray((window_hu(hu) * 255).astype(np.uint8)).save(path)
        paths.append(path)
    cache = FeatureCache(tmp_path / "cache")
    deep1, rad1, frac1 = extractor.extract_paths(paths, size=64, cache=cache)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2
    # a poisoned radiomics extractor proves the second call reads the cache
    real = extractor.radiomics.extract
    extractor.radiomics.extract = lambda *a: (_ for _ in ()).throw(AssertionError("recomputed"))
    try:
        deep2, rad2, frac2 = extractor.extract_paths(paths, size=64, cache=cache)
    finally:
        extractor.radiomics.extract = real
    np.testing.assert_array_equal(deep1, deep2)
    np.testing.assert_array_equal(rad1, rad2)
    np.testing.assert_array_equal(frac1, frac2)
    assert (frac1 > 0.05).all()
    # another slice size is another key: recomputed, two more entries
    extractor.extract_paths(paths, size=48, cache=cache)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 4


def test_cache_key_changes_with_every_component():
    base = dict(source="abc", backbone_name="b", weights_sha256="w", params_sha256="p", size=512)
    key = FeatureCache.key(**base)
    for field, value in [
        ("source", "x"),
        ("backbone_name", "x"),
        ("weights_sha256", "x"),
        ("params_sha256", "x"),
        ("size", 256),
    ]:
        assert FeatureCache.key(**{**base, field: value}) != key
    assert FeatureCache.key(**base, input_size=256) != key
