"""The CAM overlay a reader sees: inside the lung only, transparent below the threshold, a
perceptual colour map, an RGBA PNG that keeps its alpha; and the worker writes it so."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from retrieval.engine.cam import (
    CAM_THRESHOLD,
    lung_cam,
    lung_cam_png,
    lung_cam_rgba,
    similarity_cam,
)


def _heat_and_mask(size: int = 32):
    yy, xx = np.mgrid[0:size, 0:size]
    heat = (xx / (size - 1)).astype(np.float32)  # 0 at the left, 1 at the right edge
    mask = np.zeros((size, size), dtype=bool)
    mask[4:28, 2:20] = True  # the "lung" ends before the hottest columns
    return heat, mask


def test_lung_cam_is_zero_outside_the_mask_and_rescaled_to_the_in_lung_maximum():
    heat, mask = _heat_and_mask()
    cam = lung_cam(heat, mask)
    assert (cam[~mask] == 0).all()
    assert cam[mask].max() == pytest.approx(1.0)
    # The hottest pixel of the input lies outside the lung: it does not set the scale.
    assert heat[mask].max() < 0.7


def test_overlay_is_transparent_outside_the_lung_and_below_the_threshold():
    heat, mask = _heat_and_mask()
    rgba = lung_cam_rgba(heat, mask)
    assert rgba.shape == (32, 32, 4) and rgba.dtype == np.uint8
    assert (rgba[~mask][:, 3] == 0).all()
    cam = lung_cam(heat, mask)
    below = mask & (cam < CAM_THRESHOLD)
    above = mask & (cam >= CAM_THRESHOLD)
    assert below.any() and above.any()
    assert (rgba[below][:, 3] == 0).all()
    assert (rgba[above][:, 3] > 0).all()
    # Hotter is more opaque.
    row = rgba[10, :20, 3]
    shown = row[row > 0]
    assert (np.diff(shown.astype(int)) >= 0).all()


def test_overlay_uses_a_perceptual_colour_map_not_jet():
    heat, mask = _heat_and_mask()
    rgba = lung_cam_rgba(heat, mask)
    hottest = np.unravel_index(np.argmax(np.where(mask, heat, -1)), heat.shape)
    inferno_top = (np.array(colormaps["inferno"](1.0)[:3]) * 255).round()
    jet_top = (np.array(colormaps["jet"](1.0)[:3]) * 255).round()
    assert np.allclose(rgba[hottest][:3], inferno_top, atol=1)
    assert not np.allclose(rgba[hottest][:3], jet_top, atol=20)


def test_png_keeps_its_alpha_channel():
    heat, mask = _heat_and_mask()
    img = Image.open(io.BytesIO(lung_cam_png(heat, mask)))
    assert img.mode == "RGBA" and img.size == (32, 32)
    alpha = np.asarray(img)[..., 3]
    assert alpha.min() == 0 and alpha.max() > 0


def test_a_map_with_no_evidence_in_the_lung_is_fully_transparent():
    heat, mask = _heat_and_mask()
    heat[mask] = 0.0
    assert (lung_cam_rgba(heat, mask)[..., 3] == 0).all()


def test_bad_threshold_and_shape_mismatch_are_refused():
    heat, mask = _heat_and_mask()
    with pytest.raises(ValueError, match="threshold"):
        lung_cam_rgba(heat, mask, threshold=1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        lung_cam(heat, mask[:10])


def test_similarity_cam_of_a_phantom_is_bounded_by_its_lung_mask():
    """The whole path on a chest phantom: Grad-CAM of a real (random-head) model, then the
    overlay bounded by the slice's segmented lungs."""
    from tests.retrieval_tests.test_cam import _model, _slice

    model = _model(weights="random", size=64)
    query, other = _slice(size=64, seed=1), _slice(size=64, seed=2)
    rgba = lung_cam_rgba(similarity_cam(model, query, other), query.mask)
    assert (rgba[~query.mask][:, 3] == 0).all()
