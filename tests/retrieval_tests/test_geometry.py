"""Field-of-view normalisation: slices of one anatomy reconstructed at different pixel
spacings become the same prepared slice, overlays map back onto the source grid."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine.geometry import Frame, background_hu, fov_frame, frame_to_source
from retrieval.engine.preprocess import prepare_slice


def chest(*, spacing_mm: float, n: int = 512, shift_mm: tuple[float, float] = (0.0, 0.0)):
    """HU slice of an elliptic body (300 x 220 mm) with two lungs, reconstructed at
    `spacing_mm` per pixel over n x n pixels; the body is moved by `shift_mm` (x, y)."""
    coords = (np.arange(n) - n / 2 + 0.5) * spacing_mm
    x, y = np.meshgrid(coords - shift_mm[0], coords - shift_mm[1])
    hu = np.full((n, n), -1000.0, dtype=np.float32)
    hu[(x / 150) ** 2 + (y / 110) ** 2 <= 1] = 40.0
    for cx in (-65.0, 65.0):
        hu[((x - cx) / 50) ** 2 + (y / 75) ** 2 <= 1] = -850.0
    return hu.astype(np.int16)


def _lung_width_px(mask: np.ndarray) -> int:
    cols = np.nonzero(mask.any(axis=0))[0]
    return int(cols.max() - cols.min() + 1)


def test_the_same_chest_at_two_pixel_spacings_prepares_to_the_same_size_with_a_fixed_fov():
    small, large = chest(spacing_mm=0.6), chest(spacing_mm=0.85)
    raw = [prepare_slice(hu, is_windowed=False, size=256) for hu in (small, large)]
    fov = [
        prepare_slice(hu, is_windowed=False, size=256, pixel_spacing=(s, s), fov_mm=360)
        for hu, s in ((small, 0.6), (large, 0.85))
    ]
    raw_w = [_lung_width_px(p.mask) for p in raw]
    fov_w = [_lung_width_px(p.mask) for p in fov]
    assert raw_w[0] > 1.3 * raw_w[1]  # whole-image resize: size follows the spacing
    assert abs(fov_w[0] - fov_w[1]) <= 0.03 * fov_w[0]
    # 230 mm of lung (-115..115) over 360 mm in 256 px
    assert fov_w[0] == pytest.approx(230 / 360 * 256, rel=0.04)
    assert all(p.frame is not None for p in fov) and all(p.frame is None for p in raw)


def test_the_frame_is_centred_on_the_body_not_on_the_image():
    hu = chest(spacing_mm=0.7, shift_mm=(20.0, -20.0))
    frame = fov_frame(hu, pixel_spacing=(0.7, 0.7), fov_mm=360)
    centre = (frame.x0 + frame.width / 2, frame.y0 + frame.height / 2)
    assert centre == pytest.approx((256 + 20 / 0.7, 256 - 20 / 0.7), abs=2.0)
    assert frame.width == pytest.approx(360 / 0.7)


def test_anisotropic_spacing_gives_a_frame_square_in_millimetres():
    frame = fov_frame(chest(spacing_mm=0.7), pixel_spacing=(0.8, 0.6), fov_mm=360)
    assert (frame.width, frame.height) == pytest.approx((600.0, 450.0))


def test_padding_outside_the_image_is_the_slice_own_air_so_no_edge_shows():
    hu = chest(spacing_mm=0.6)  # 307 mm of image in a 360 mm frame: padded all round
    assert background_hu(hu) == pytest.approx(-1000.0)
    p = prepare_slice(hu, is_windowed=False, size=256, pixel_spacing=(0.6, 0.6), fov_mm=360)
    corner, inside_air = p.image[0, 0], p.image[128, 5]
    assert corner == pytest.approx(inside_air, abs=1e-3)


def test_a_map_on_the_prepared_slice_maps_back_onto_the_source_lungs():
    hu = chest(spacing_mm=0.75, shift_mm=(25.0, 10.0))
    p = prepare_slice(hu, is_windowed=False, size=256, pixel_spacing=(0.75, 0.75), fov_mm=360)
    back = frame_to_source(p.mask.astype(np.float32), p.frame, hu.shape) >= 0.5
    truth = hu == -850
    iou = (back & truth).sum() / (back | truth).sum()
    assert back.shape == hu.shape and iou > 0.9


def test_frame_to_source_is_zero_where_the_frame_does_not_reach():
    frame = Frame(x0=100.0, y0=100.0, width=200.0, height=200.0)
    back = frame_to_source(np.ones((64, 64), np.float32), frame, (512, 512))
    assert back[200, 200] == pytest.approx(1.0) and back[10, 10] == 0.0 and back[450, 450] == 0.0


def test_eight_bit_images_are_never_resampled_even_with_a_spacing():
    img = (np.clip((chest(spacing_mm=0.7).astype(np.float32) + 1250) / 1500, 0, 1) * 255).astype(
        np.uint8
    )
    a = prepare_slice(img, is_windowed=True, size=128)
    b = prepare_slice(img, is_windowed=True, size=128, pixel_spacing=(0.7, 0.7), fov_mm=360)
    assert b.frame is None and np.array_equal(a.image, b.image)


@pytest.mark.parametrize("fov_mm", [0, 50, 5000])
def test_an_implausible_field_of_view_is_refused(fov_mm):
    with pytest.raises(ValueError, match="field of view"):
        fov_frame(chest(spacing_mm=0.7), pixel_spacing=(0.7, 0.7), fov_mm=fov_mm or 1e-3)


def test_lung_crop_fills_the_prepared_slice_with_the_lungs_and_maps_back_onto_them():
    hu = chest(spacing_mm=0.6, shift_mm=(15.0, 10.0))
    whole = prepare_slice(hu, is_windowed=False, size=128)
    crop = prepare_slice(hu, is_windowed=False, size=128, lung_crop=True)
    assert crop.lung_fraction == whole.lung_fraction  # the usable-slice filter is unchanged
    assert _lung_width_px(crop.mask) == pytest.approx(128 / 1.16, abs=3)
    assert _lung_width_px(whole.mask) < 0.92 * _lung_width_px(crop.mask)  # 96 vs 110 px
    back = frame_to_source(crop.mask.astype(np.float32), crop.frame, crop.source_shape) >= 0.5
    truth = hu == -850
    assert (back & truth).sum() / (back | truth).sum() > 0.9


def test_lung_crop_composes_with_the_field_of_view_frame():
    hu = chest(spacing_mm=0.8)
    p = prepare_slice(
        hu, is_windowed=False, size=128, pixel_spacing=(0.8, 0.8), fov_mm=400, lung_crop=True
    )
    back = frame_to_source(p.mask.astype(np.float32), p.frame, hu.shape) >= 0.5
    truth = hu == -850
    assert (back & truth).sum() / (back | truth).sum() > 0.9


def test_a_slice_without_lungs_is_not_cropped():
    hu = np.full((128, 128), -1000, np.int16)
    hu[20:108, 20:108] = 40  # body, no lung: the mask falls back
    p = prepare_slice(hu, is_windowed=False, size=64, lung_crop=True)
    assert p.mask_fallback and p.frame is None
