"""The one decoder of 2-D image files (free of Django: bytes in, arrays out).

Both the reference import (`cases.services.reference_import`) and the retrieval engine
(`retrieval.engine.preprocess.load_image_file`: training and evaluation manifests) read images
through `reference_image_decode`, so an image the library accepts is read the same way
everywhere. It lives in `cases` because `cases` imports nothing from `retrieval`, and it imports
nothing from Django so that the Django-free engine may use it.

Rules (the format is taken from the content, not from the file name):
- PNG, JPEG and BMP hold already-windowed 8-bit grey (colour is converted to grey, ITU-R
  BT.601); 16-bit and float PNGs are refused (Hounsfield units come as a TIFF);
- TIFF (one page) holds signed 16-bit Hounsfield units or 8-bit grey/colour (windowed); a 3- or
  4-channel TIFF whose colour channels repeat the same values is that one grey image, so a
  signed 16-bit one is Hounsfield units too; a signed 32-bit TIFF whose values fit in 16 bits
  is read as Hounsfield units (some exporters widen them); other TIFFs (unsigned 16-bit, 32-bit
  beyond the 16-bit range, float, 16-bit colour, several pages) are refused;
- a single DICOM file, other formats, images with a side under `MIN_SIDE` or over `MAX_SIDE`
  pixels and decompression bombs are refused.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

MAX_SIDE = 8192  # larger "slices" are refused rather than stored
MIN_SIDE = 8  # a smaller one is no slice (and leaves nothing to segment)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601, as Pillow's "L"


class ImageReadError(Exception):
    """The file cannot be used as a reference image; the message says why."""


@dataclass
class ReferenceImage:
    """A decoded reference image: `pixels` 2-D uint8 (windowed) or int16 (HU)."""

    pixels: np.ndarray
    is_windowed: bool
    format: str  # "PNG", "JPEG", "BMP" or "TIFF"


def reference_image_decode(data: bytes) -> ReferenceImage:
    """Decode one reference image file's bytes; ImageReadError with the reason otherwise."""
    if not data:
        raise ImageReadError("empty file")
    if data[128:132] == b"DICM":
        raise ImageReadError("a single DICOM file: give the folder that holds its series")
    if data[:4] in _TIFF_MAGIC:
        image = _tiff_decode(data)
    else:
        image = _pil_decode(data)
    pixels = image.pixels
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageReadError(f"expected one 2-D image, got an array of shape {pixels.shape}")
    if max(pixels.shape) > MAX_SIDE:
        raise ImageReadError(f"image of {pixels.shape[1]}x{pixels.shape[0]} is over {MAX_SIDE}")
    if min(pixels.shape) < MIN_SIDE:
        raise ImageReadError(
            f"image of {pixels.shape[1]}x{pixels.shape[0]} is under {MIN_SIDE} pixels a side"
        )
    return image


def _to_grey(rgb: np.ndarray) -> np.ndarray:
    grey = rgb[..., :3].astype(np.float32) @ _LUMA
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _tiff_decode(data: bytes) -> ReferenceImage:
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) != 1:
                raise ImageReadError(f"TIFF with {len(tif.pages)} pages: expected one image")
            array = tif.pages[0].asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile raises many types for damaged files
        raise ImageReadError(f"unreadable TIFF ({exc})") from exc
    array = np.squeeze(array)
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        colour = array[..., :3]
        if (colour == colour[..., :1]).all():
            array = array[..., 0]  # grey saved as colour: one image, at any depth
        elif array.dtype == np.uint8:
            array = _to_grey(array)
    if array.dtype == np.int32 and array.ndim == 2 and array.size:
        if -32768 <= int(array.min()) and int(array.max()) <= 32767:
            array = array.astype(np.int16)
    if array.dtype == np.int16 and array.ndim == 2:
        return ReferenceImage(pixels=array, is_windowed=False, format="TIFF")
    if array.dtype == np.uint8 and array.ndim == 2:
        return ReferenceImage(pixels=array, is_windowed=True, format="TIFF")
    raise ImageReadError(
        f"TIFF of type {array.dtype} and shape {array.shape}: expected signed 16-bit "
        "Hounsfield units or 8-bit grey/colour"
    )


def _pil_decode(data: bytes) -> ReferenceImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            if fmt not in ("PNG", "JPEG", "BMP"):
                raise ImageReadError(
                    f"unknown format {fmt or '?'} (expected PNG, JPEG, BMP, TIFF or a DICOM folder)"
                )
            image.load()
    except ImageReadError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageReadError(
            "unknown format (expected PNG, JPEG, TIFF or a DICOM series folder)"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"image too large ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"unreadable {fmt or 'image'} ({exc})") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise ImageReadError(
            f"{fmt} with {image.mode} pixels: 8-bit grey or colour expected (Hounsfield units "
            "must come as a signed 16-bit TIFF)"
        )
    if image.mode != "L":
        image = image.convert("L")
    return ReferenceImage(pixels=np.asarray(image, dtype=np.uint8), is_windowed=True, format=fmt)
