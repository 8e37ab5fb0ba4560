"""Radiomics: fixed-length finite vectors, clear errors for unusable ROIs, standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from cases.phantom import chest_phantom
from retrieval.engine.preprocess import prepare_slice
from retrieval.engine.radiomics import (
    DEFAULT_PARAMS,
    RadiomicsError,
    RadiomicsExtractor,
    Standardizer,
)


@pytest.fixture(scope="module")
def extractor() -> RadiomicsExtractor:
    return RadiomicsExtractor()


def test_feature_vector_has_all_2d_classes_and_is_finite(extractor):
    hu, _ = chest_phantom(size=96, pattern="reticulation", seed=1)
    p = prepare_slice(hu, is_windowed=False, size=96)
    vec = extractor.extract(p.image, p.mask)
    assert vec.dtype == np.float64
    assert vec.shape == (len(extractor.feature_names),)
    assert len(extractor.feature_names) >= 90
    for cls in ("shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"):
        assert any(f"_{cls}_" in name for name in extractor.feature_names), cls
    assert np.isfinite(vec).all()


def test_patterns_give_different_radiomics(extractor):
    vecs = []
    for pattern in ("normal", "consolidation"):
        hu, _ = chest_phantom(size=96, pattern=pattern, seed=2)
        p = prepare_slice(hu, is_windowed=False, size=96)
        vecs.append(extractor.extract(p.image, p.mask))
    assert not np.allclose(vecs[0], vecs[1])


def test_flat_roi_gives_zeros_not_nan(extractor):
    image = np.full((48, 48), 0.3, dtype=np.float32)
    mask = np.zeros((48, 48), bool)
    mask[10:30, 10:30] = True
    vec = extractor.extract(image, mask)
    assert np.isfinite(vec).all()


def test_tiny_or_empty_roi_raises_a_clear_error(extractor):
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    with pytest.raises(RadiomicsError, match="ROI has 0 pixels"):
        extractor.extract(image, np.zeros((32, 32), bool))
    mask = np.zeros((32, 32), bool)
    mask[5, 5:8] = True
    with pytest.raises(RadiomicsError, match="at least"):
        extractor.extract(image, mask)


def test_image_and_mask_shapes_must_match(extractor):
    with pytest.raises(RadiomicsError, match="same shape"):
        extractor.extract(np.zeros((32, 32), np.float32), np.ones((16, 16), bool))


def test_parameters_come_from_the_repository_yaml(extractor):
    text = DEFAULT_PARAMS.read_text()
    assert extractor.params_text == text
    assert "binWidth" in text and len(extractor.params_sha256) == 64
    again = RadiomicsExtractor(params_text=text)
    assert again.feature_names == extractor.feature_names


def test_large_slices_are_downsampled_to_max_size():
    text = DEFAULT_PARAMS.read_text()
    assert "max_size: 512" in text
    extractor = RadiomicsExtractor(params_text=text.replace("max_size: 512", "max_size: 128"))
    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    mask = np.zeros((512, 512), bool)
    mask[100:400, 100:300] = True
    small_image, small_mask = extractor._downsample(image, mask)
    assert small_image.shape == (128, 128)
    assert small_mask.shape == small_image.shape
    assert abs(small_mask.mean() - mask.mean()) < 0.01


def test_standardizer_round_trip_and_constant_features():
    rng = np.random.default_rng(0)
    X = rng.normal(5.0, 2.0, size=(50, 4))
    X[:, 3] = 7.0  # constant feature
    std = Standardizer().fit(X)
    Z = std.transform(X)
    np.testing.assert_allclose(Z[:, :3].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(Z[:, :3].std(axis=0), 1.0, atol=1e-12)
    assert np.all(Z[:, 3] == 0.0)
    again = Standardizer.from_dict(std.to_dict())
    np.testing.assert_array_equal(again.transform(X), Z)
    with pytest.raises(ValueError, match="expected 4 features"):
        std.transform(X[:, :2])
