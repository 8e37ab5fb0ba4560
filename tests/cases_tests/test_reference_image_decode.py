"""The one 2-D image decoder: BMP as windowed grey, signed 32-bit TIFFs whose values fit in 16
bits as HU, grey saved as colour read as that grey image (16-bit stays HU), other colour
converted to grey with a warning the caller can show."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from cases.reference_images import ImageReadError, reference_image_decode


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, photometric="rgb" if array.ndim == 3 else None)
    return buf.getvalue()


def test_bmp_is_read_as_windowed_grey():
    grey = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(48, 64)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="BMP")
    image = reference_image_decode(buf.getvalue())
    assert image.format == "BMP" and image.is_windowed
    assert np.array_equal(image.pixels, grey)


def test_int32_tiff_within_int16_range_is_hounsfield_units():
    hu = (np.arange(64 * 64) - 1024).astype(np.int32).reshape(64, 64)
    image = reference_image_decode(_tiff(hu))
    assert image.pixels.dtype == np.int16 and not image.is_windowed
    assert np.array_equal(image.pixels, hu)


def test_int32_tiff_beyond_int16_range_is_refused():
    with pytest.raises(ImageReadError, match="int32"):
        reference_image_decode(_tiff(np.full((64, 64), 100_000, np.int32)))


def test_int16_tiff_with_three_repeated_channels_is_one_hu_image():
    hu = (np.arange(32 * 32) - 900).astype(np.int16).reshape(32, 32)
    image = reference_image_decode(_tiff(np.stack([hu, hu, hu], axis=-1)))
    assert image.pixels.shape == (32, 32) and not image.is_windowed
    assert np.array_equal(image.pixels, hu)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_int16_tiff_with_repeated_channels_and_alpha_stays_hounsfield_units_without_warning():
    hu = (np.arange(48 * 40) % 2000 - 1000).astype(np.int16).reshape(40, 48)
    alpha = np.full_like(hu, 32767)
    image = reference_image_decode(_tiff(np.stack([hu, hu, hu, alpha], axis=-1)))
    assert image.pixels.dtype == np.int16 and not image.is_windowed
    assert np.array_equal(image.pixels, hu) and image.warnings == []


def test_planar_int16_tiff_with_repeated_channels_is_one_hu_image():
    hu = (np.arange(40 * 40) - 1100).astype(np.int16).reshape(40, 40)
    buf = io.BytesIO()
    tifffile.imwrite(buf, np.stack([hu, hu, hu]), photometric="rgb", planarconfig="separate")
    image = reference_image_decode(buf.getvalue())
    assert image.pixels.shape == (40, 40) and np.array_equal(image.pixels, hu)


def test_int16_tiff_whose_colour_channels_differ_is_refused_not_blended():
    hu = (np.arange(32 * 32) - 900).astype(np.int16).reshape(32, 32)
    data = _tiff(np.stack([hu, hu, hu + 5], axis=-1))
    with pytest.raises(ImageReadError, match="differing colour channels"):
        reference_image_decode(data)


def test_png_whose_channels_repeat_one_grey_image_is_read_exactly_without_warning():
    grey = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(30, 40)
    image = reference_image_decode(_png(np.stack([grey] * 3, axis=-1)))
    assert image.is_windowed and np.array_equal(image.pixels, grey)
    assert image.warnings == []


def test_colour_png_is_converted_to_luma_grey_with_a_warning():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = 200  # a red annotation layer over black
    image = reference_image_decode(_png(rgb))
    assert image.pixels.shape == (30, 40) and image.pixels.dtype == np.uint8
    assert int(image.pixels[0, 0]) == round(0.299 * 200)
    assert len(image.warnings) == 1 and "RGB" in image.warnings[0]
    assert "converted to grey" in image.warnings[0]


def test_colour_8_bit_tiff_is_converted_with_a_warning_and_rgba_png_too():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 100
    tiff = reference_image_decode(_tiff(rgb))
    assert tiff.is_windowed and int(tiff.pixels[5, 5]) == round(0.587 * 100)
    assert tiff.warnings and "RGB image" in tiff.warnings[0]
    rgba = np.concatenate([rgb, np.full((32, 32, 1), 255, np.uint8)], axis=-1)
    png = reference_image_decode(_png(rgba))
    assert png.warnings and "RGBA image" in png.warnings[0]
    assert np.array_equal(png.pixels, tiff.pixels)


def test_grey_png_has_no_warning():
    grey = np.full((20, 20), 77, np.uint8)
    image = reference_image_decode(_png(grey))
    assert image.warnings == [] and np.array_equal(image.pixels, grey)
