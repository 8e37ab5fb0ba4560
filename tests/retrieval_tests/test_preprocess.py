"""Preprocessing: lung window, square resize, image loading, 8-bit path and the ROI fallback."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from retrieval.engine.preprocess import (
    FALLBACK_FRACTION,
    LUNG_WINDOW,
    ImageLoadError,
    fill_holes,
    load_image_file,
    prepare_slice,
    resize_to,
    two_means_threshold,
    window_hu,
)


def test_lung_window_maps_its_edges_to_zero_and_one():
    level, width = LUNG_WINDOW
    hu = np.array([-2000, level - width / 2, level, level + width / 2, 3000], dtype=np.float32)
    out = window_hu(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


def test_window_rejects_non_positive_width():
    with pytest.raises(ValueError, match="width"):
        window_hu(np.zeros(3), width=0)


def test_resize_letterboxes_non_square_images_keeping_the_aspect_ratio():
    img = np.ones((50, 100), dtype=np.float32)
    out = resize_to(img, size=64)
    assert out.shape == (64, 64) and out.dtype == np.float32
    # a 2:1 image fills the middle half of the rows; padding is 0 (air)
    assert out[32, :].min() > 0.99
    assert out[:10, :].max() == 0.0 and out[-10:, :].max() == 0.0


def test_two_means_threshold_lies_between_the_two_intensity_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.02, 5000), rng.normal(0.8, 0.02, 2000)])
    t = two_means_threshold(np.clip(values, 0, 1))
    assert 0.45 < t < 0.55


def test_fill_holes_matches_scipy():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    mask = rng.random((80, 80)) < 0.55
    np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_eight_bit_image_is_scaled_to_unit_range_and_gets_a_lung_mask():
    hu = _two_lung_hu(96)
    eight_bit = (window_hu(hu) * 255).round().astype(np.uint8)
    p = prepare_slice(eight_bit, is_windowed=True, size=64)
    assert p.image.shape == (64, 64) and p.image.dtype == np.float32
    assert 0.0 <= p.image.min() and p.image.max() <= 1.0
    assert 0.1 < p.lung_fraction < 0.5
    assert not p.mask_fallback


def test_slice_without_lungs_gets_a_fallback_roi_but_reports_zero_fraction():
    soft_tissue = np.full((64, 64), 40, dtype=np.int16)
    p = prepare_slice(soft_tissue, is_windowed=False, size=64)
    assert p.lung_fraction < FALLBACK_FRACTION
    assert p.mask_fallback
    assert p.mask.sum() > 100  # radiomics always gets a non-empty ROI


def test_load_png_is_windowed_grey(tmp_path):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    path = tmp_path / "slice.png"
    Image.fromarray(rgb).save(path)
    arr, windowed = load_image_file(path)
    assert windowed is True
    assert arr.shape == (40, 60) and arr.dtype == np.uint8
    assert 50 < int(arr[0, 0]) < 70  # 0.299 * 200 luminance


def test_load_signed_16_bit_tiff_is_hounsfield_units(tmp_path):
    hu = _two_lung_hu(64)
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, hu)
    arr, windowed = load_image_file(path)
    assert windowed is False
    np.testing.assert_array_equal(arr, hu)


def test_load_grey_saved_as_three_channels_is_one_grey_image_at_16_bits_too(tmp_path):
    hu = _two_lung_hu(64)
    path = tmp_path / "grey-as-rgb.tif"
    tifffile.imwrite(path, np.repeat(hu[..., None], 3, axis=-1), photometric="rgb")
    arr, windowed = load_image_file(path)
    assert windowed is False
    np.testing.assert_array_equal(arr, hu)
    colour = np.stack([hu, hu, hu + 1], axis=-1)
    tifffile.imwrite(tmp_path / "colour16.tif", colour, photometric="rgb")
    with pytest.raises(ImageLoadError, match="colour16.tif"):
        load_image_file(tmp_path / "colour16.tif")


def test_load_rejects_a_corrupt_file_naming_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageLoadError, match="broken.png"):
        load_image_file(path)


def _two_lung_hu(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    hu = np.full((size, size), -1000, np.int16)
    hu[((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.38) ** 2 <= 1] = 40
    for cx in (0.32, 0.68):
        hu[((xx - cx) / 0.13) ** 2 + ((yy - 0.5) / 0.27) ** 2 <= 1] = -850
    return hu


def test_hounsfield_slice_without_lungs_keeps_table_hollow_and_outside_air_out():
    # abdomen-like slice: soft-tissue body, air around it and a hollow table shell below,
    # whose enclosed air touches no border; none of it is lung
    size = 128
    yy, xx = np.mgrid[0:size, 0:size] / size
    hu = np.full((size, size), -1000, np.int16)
    hu[((xx - 0.5) / 0.42) ** 2 + ((yy - 0.45) / 0.3) ** 2 <= 1] = 40
    shell = (np.abs(yy - 0.86) < 0.07) & (np.abs(xx - 0.5) < 0.42)
    hollow = (np.abs(yy - 0.86) < 0.04) & (np.abs(xx - 0.5) < 0.38)
    hu[shell & ~hollow] = 300
    p = prepare_slice(hu, is_windowed=False, size=size)
    assert p.lung_fraction < 0.05


def test_hounsfield_slice_never_takes_the_edge_tolerant_second_pass():
    # outside air inside the scan circle is about -1000 HU, not pure black once windowed: a
    # permissive pass would call it lung
    soft_tissue = np.full((96, 96), -1000, dtype=np.int16)
    soft_tissue[20:76, 20:76] = 40
    p = prepare_slice(soft_tissue, is_windowed=False, size=96)
    assert p.lung_fraction < FALLBACK_FRACTION


def test_cropped_eight_bit_figure_keeps_lungs_touching_the_edge():
    hu = _two_lung_hu(128)[:, 14:114]  # crop so both lungs touch the left and right edges
    hu = hu[30:98]
    eight_bit = (window_hu(hu) * 255).round().astype(np.uint8)
    p = prepare_slice(eight_bit, is_windowed=True, size=64)
    assert 0.1 < p.lung_fraction < 0.7
    assert not p.mask_fallback
