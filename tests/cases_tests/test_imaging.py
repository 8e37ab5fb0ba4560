"""HU -> PNG display windowing (cases.imaging, free of Django)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cases.imaging import WINDOW_PRESETS, hu_to_png_bytes, slice_png_bytes, window_to_uint8


def decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image)


def test_window_maps_bottom_to_black_top_to_white_and_level_to_mid_grey():
    level, width = WINDOW_PRESETS["mediastinal"]
    hu = np.array([[-1000, level - width / 2, level, level + width / 2, 3000]])
    assert window_to_uint8(hu, level=level, width=width).tolist() == [[0, 0, 128, 255, 255]]


def test_lung_and_mediastinal_presets_render_the_same_hu_differently():
    hu = np.array([[-850, 40]], dtype=np.int16)
    lung = window_to_uint8(hu, level=-600, width=1500)
    mediastinal = window_to_uint8(hu, level=40, width=400)
    assert lung[0, 0] == 85  # lung parenchyma is visible in the lung window ...
    assert mediastinal[0, 0] == 0  # ... and black in the mediastinal window
    assert mediastinal[0, 1] == 128


def test_window_rejects_non_positive_width():
    with pytest.raises(ValueError, match="width"):
        window_to_uint8(np.zeros((2, 2)), level=0, width=0)


def test_hu_to_png_bytes_round_trips_shape_and_values():
    hu = np.full((40, 30), -1000, dtype=np.int16)
    hu[:, 15:] = 40
    pixels = decode(hu_to_png_bytes(hu, level=40, width=400))
    assert pixels.shape == (40, 30) and pixels.dtype == np.uint8
    assert pixels[0, 0] == 0 and pixels[0, 29] == 128


def test_max_size_shrinks_keeping_aspect():
    pixels = decode(hu_to_png_bytes(np.zeros((200, 100)), level=0, width=400, max_size=50))
    assert pixels.shape == (50, 25)


def test_windowed_uint8_slices_are_shown_unchanged():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    pixels = decode(slice_png_bytes(grey, is_windowed=True, level=-600, width=1500))
    assert np.array_equal(pixels, grey)
