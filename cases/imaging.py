"""Display windowing of CT slices (free of Django: arrays in, PNG bytes out)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# Window presets of the slice viewer: (level, width) in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinal": (40.0, 400.0),
}
DEFAULT_PRESET = "lung"


def window_to_uint8(hu: np.ndarray, *, level: float, width: float) -> np.ndarray:
    """Map Hounsfield units to 0..255 grey: `level - width/2` and below is black, `level +
    width/2` and above is white, linear in between."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    scaled = (hu.astype(np.float32) - low) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def png_bytes(grey: np.ndarray, *, max_size: int | None = None) -> bytes:
    """Encode a 2-D uint8 array as PNG, shrunk (aspect kept) so neither side exceeds
    `max_size` when it is given."""
    if grey.ndim == 3 and grey.shape[-1] in (3, 4):
        # Colour reference images are shown in grey like every other slice.
        grey = grey[..., :3].mean(axis=-1)
    grey = np.squeeze(grey)
    if grey.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {grey.shape}")
    image = Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8))
    if max_size and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    # Fast zlib level: on a noisy 512x512 CT slice level 1 encodes ~5x faster than the default
    # 6 (about 17 vs 92 ms) for ~15 % more bytes, which keeps wheel scrolling responsive.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def hu_to_png_bytes(
    hu: np.ndarray, *, level: float, width: float, max_size: int | None = None
) -> bytes:
    """PNG of a Hounsfield-unit slice at the window (`level`, `width`)."""
    return png_bytes(window_to_uint8(hu, level=level, width=width), max_size=max_size)


def slice_png_bytes(
    pixels: np.ndarray,
    *,
    is_windowed: bool,
    level: float,
    width: float,
    max_size: int | None = None,
) -> bytes:
    """PNG of a stored slice: HU pixels are windowed; pixels already windowed to uint8 (2-D
    reference images without Hounsfield units) are shown as they are."""
    if is_windowed:
        return png_bytes(np.clip(pixels, 0, 255).astype(np.uint8), max_size=max_size)
    return hu_to_png_bytes(pixels, level=level, width=width, max_size=max_size)
