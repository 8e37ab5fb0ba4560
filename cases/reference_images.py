"""The one decoder of 2-D image files (free of Django: bytes in, arrays out).

Both the reference import (`cases.services.reference_import`) and the retrieval engine
(`retrieval.engine.preprocess.load_image_file`: training and evaluation manifests) read images
through `reference_image_decode`, so an image the library accepts is read the same way
everywhere. It lives in `cases` because `cases` imports nothing from `retrieval`, and it imports
nothing from Django so that the Django-free engine may use it.

Rules (the format is taken from the content, not from the file name):
- PNG, JPEG and BMP hold already-windowed 8-bit grey; 16-bit and float PNGs are refused
  (Hounsfield units come as a TIFF);
- TIFF (one page) holds signed 16-bit Hounsfield units or 8-bit grey (windowed); a signed
  32-bit TIFF whose values fit in 16 bits is read as Hounsfield units (some exporters widen
  them); other TIFFs (unsigned 16-bit, 32-bit beyond the 16-bit range, float, several pages)
  are refused;
- colour (3 or 4 channels, interleaved or planar; alpha ignored): an image whose colour
  channels all repeat the same values is that one grey image, read without loss at its depth
  (a signed 16-bit one stays Hounsfield units); any other 8-bit colour image is converted to
  grey (ITU-R BT.601 luma, as Pillow's "L") and the conversion is named in
  `ReferenceImage.warnings`, for the caller to show; deeper colour whose channels differ is
  refused (a blend of HU channels is no HU);
- a single DICOM file, other formats, images with a side under `MIN_SIDE` or over `MAX_SIDE`
  pixels and decompression bombs are refused.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

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
    # Lossy conversions made while reading (a colour image turned grey), for the caller to show.
    warnings: list[str] = field(default_factory=list)


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


def _repeated_channel(array: np.ndarray) -> np.ndarray | None:
    """The one image of a (H, W, 3|4) array whose colour channels repeat it (alpha ignored),
    at its own depth; None when the channels differ."""
    colour = array[..., :3]
    if (colour == colour[..., :1]).all():
        return np.ascontiguousarray(colour[..., 0])
    return None


def _colour_to_grey(array: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One 8-bit grey image of a (H, W, 3|4) uint8 colour array, and the warnings of the
    conversion: none when the colour channels repeat one image (taken as it is), else the luma
    and a warning."""
    grey = _repeated_channel(array)
    if grey is not None:
        return grey, []
    grey = np.clip(np.rint(array[..., :3].astype(np.float32) @ _LUMA), 0, 255).astype(np.uint8)
    channels = "RGBA" if array.shape[-1] == 4 else "RGB"
    return grey, [
        f"{channels} image with differing colour channels converted to grey (luma, "
        "ITU-R BT.601): colour marks are blended into the image"
    ]


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
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)  # planar colour (PlanarConfiguration 2)
    notes: list[str] = []
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        grey = _repeated_channel(array)
        if grey is not None:
            array = grey  # grey saved as colour: one image, at any depth
        elif array.dtype == np.uint8:
            array, notes = _colour_to_grey(array)
        else:
            # Blending differing channels of Hounsfield units would make values that are no
            # HU at all: refused rather than guessed.
            raise ImageReadError(
                f"{array.dtype} TIFF with {array.shape[-1]} differing colour channels: "
                "Hounsfield units must be one grey image (or channels that repeat it)"
            )
    if array.dtype == np.int32 and array.ndim == 2 and array.size:
        if -32768 <= int(array.min()) and int(array.max()) <= 32767:
            array = array.astype(np.int16)
    if array.dtype == np.int16 and array.ndim == 2:
        return ReferenceImage(pixels=array, is_windowed=False, format="TIFF", warnings=notes)
    if array.dtype == np.uint8 and array.ndim == 2:
        return ReferenceImage(pixels=array, is_windowed=True, format="TIFF", warnings=notes)
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
    notes: list[str] = []
    if image.mode in ("RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"), dtype=np.uint8)
        pixels, notes = _colour_to_grey(rgb)
    else:  # "L", "LA" (alpha dropped), "1"
        pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    return ReferenceImage(pixels=pixels, is_windowed=True, format=fmt, warnings=notes)
