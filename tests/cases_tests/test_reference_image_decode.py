"""The one 2-D image decoder keeps accepting what the engine's loader accepted before it was
merged: BMP as windowed grey, and signed 32-bit TIFFs whose values fit in 16 bits as HU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from cases.reference_images import ImageReadError, reference_image_decode


def _tiff(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
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
