"""Physical field-of-view normalisation and lung-box cropping of CT slices (Django-free).

Scanners reconstruct chest CT at different fields of view (about 300 to 500 mm over 512
pixels), so a slice resized to 512 px shows the body at a size that depends on the scanner
setting, and a frozen image embedding ranks patients by that size before anything else (seen
on COVID-CT-MD: the nearest patients by slice vector were those with the same pixel spacing,
whatever their diagnosis). When a slice's pixel spacing is known (DICOM), `fov_frame` picks
the square of `fov_mm` x `fov_mm` millimetres centred on the patient's body, and `fov_sample`
resamples the slice into it, so every prepared slice shows `fov_mm / size` millimetres per
pixel. The part of the square outside the reconstructed image is air.

`frame_to_source` maps a map computed on the prepared square (a CAM, a lung mask) back onto
the source slice's pixel grid, so overlays stay aligned with the slice a viewer shows.
Images without a spacing (8-bit figures, PNG exports) are not touched by any of this.

`lung_box` is the other normalisation: the square around the segmented lungs (with a margin),
so that the prepared slice shows the lungs at the same size whatever the body around them;
`prepare_slice(lung_crop=True)` resamples the windowed slice into it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

AIR_HU = -1000.0
AIR_BELOW_HU = -950.0
# Tissue threshold for the body whose bounding box centres the square.
BODY_HU = -400.0
# Fields of view outside this range are refused (a typo in a setting, not a chest).
FOV_MM_RANGE = (100.0, 1000.0)


@dataclass(frozen=True)
class Frame:
    """The square a prepared slice shows, in source pixel coordinates (x = column, y = row;
    a pixel's centre at +0.5): left/top edge and width/height in source pixels. It may reach
    beyond the source image (air there)."""

    x0: float
    y0: float
    width: float
    height: float


def _check(fov_mm: float, pixel_spacing) -> tuple[float, float]:
    lo, hi = FOV_MM_RANGE
    if not lo <= float(fov_mm) <= hi:
        raise ValueError(f"field of view must be between {lo:g} and {hi:g} mm, got {fov_mm}")
    row_mm, col_mm = (float(v) for v in pixel_spacing)
    if not (row_mm > 0 and col_mm > 0):
        raise ValueError(f"pixel spacing must be positive, got {pixel_spacing}")
    return row_mm, col_mm


def fov_frame(hu: np.ndarray, *, pixel_spacing, fov_mm: float) -> Frame:
    """The `fov_mm` square (in source pixels) centred on the bounding box of the largest
    tissue component (HU > `BODY_HU`): the patient, even off the scanner's centre; the image
    centre when no tissue is visible. `pixel_spacing` is DICOM's (row spacing, column
    spacing) in mm."""
    row_mm, col_mm = _check(fov_mm, pixel_spacing)
    arr = np.asarray(hu, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"expected a 2-D slice, got shape {arr.shape}")
    h, w = arr.shape
    cy, cx = h / 2.0, w / 2.0
    labels, n = ndi.label(arr > BODY_HU)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        areas[0] = 0
        rows, cols = np.nonzero(labels == int(np.argmax(areas)))
        cy = (rows.min() + rows.max() + 1) / 2.0
        cx = (cols.min() + cols.max() + 1) / 2.0
    width, height = float(fov_mm) / col_mm, float(fov_mm) / row_mm
    return Frame(
        x0=float(cx - width / 2.0), y0=float(cy - height / 2.0), width=width, height=height
    )


def background_hu(hu: np.ndarray) -> float:
    """The air around the patient: the median of the pixels below `AIR_BELOW_HU` (outside air
    dominates them; lung parenchyma is denser), `AIR_HU` when there are hardly any. Filling
    with it instead of a fixed value leaves no visible edge where the frame reaches beyond the
    image: such an edge would tell the embedding the original field of view again. (The
    image border is no estimate: arms and the table often touch it.)"""
    arr = np.asarray(hu, dtype=np.float32)
    air = arr[arr < AIR_BELOW_HU]
    if air.size < 0.01 * arr.size:
        return AIR_HU
    return float(np.median(air))


def fov_sample(hu: np.ndarray, frame: Frame, *, fill: float | None = None) -> np.ndarray:
    """float32 square of the source slice inside `frame`, at the source's resolution (the
    larger of the frame's sides in pixels), bilinear; `fill` (default `background_hu`)
    outside the source image."""
    arr = np.asarray(hu, dtype=np.float32)
    fill = background_hu(arr) if fill is None else fill
    side = max(1, int(round(max(frame.width, frame.height))))
    return square_sample(arr, frame, side=side, fill=fill)


def frame_to_source(values: np.ndarray, frame: Frame, shape: tuple[int, int]) -> np.ndarray:
    """float32 `shape` (the source slice's rows, columns) of a square map (S, S) computed on
    the prepared slice of `frame`: each source pixel takes the map's value where the frame
    put it (bilinear); 0 where the frame did not reach."""
    m = np.asarray(values, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square 2-D map, got shape {m.shape}")
    s = float(m.shape[0])
    h, w = (int(v) for v in shape)
    sx, sy = s / frame.width, s / frame.height
    box = (-frame.x0 * sx, -frame.y0 * sy, (w - frame.x0) * sx, (h - frame.y0) * sy)
    out = Image.fromarray(m, mode="F").transform(
        (w, h), Image.EXTENT, box, resample=Image.BILINEAR, fillcolor=0.0
    )
    return np.asarray(out, dtype=np.float32)


# Margin around the lungs' bounding box, as a share of its larger side on each side.
LUNG_BOX_MARGIN = 0.08
# A lung box smaller than this share of the prepared side is not trusted (a false mask).
LUNG_BOX_MIN_SIDE = 0.25


def lung_box(mask: np.ndarray, *, margin: float = LUNG_BOX_MARGIN) -> Frame | None:
    """The square (in the mask's pixel coordinates) around the mask's bounding box, widened
    by `margin` of its larger side on each side; None when the mask is empty or its box is
    smaller than `LUNG_BOX_MIN_SIDE` of the mask's side."""
    m = np.asarray(mask, dtype=bool)
    rows, cols = np.nonzero(m)
    if rows.size == 0:
        return None
    h = rows.max() - rows.min() + 1
    w = cols.max() - cols.min() + 1
    if max(h, w) < LUNG_BOX_MIN_SIDE * max(m.shape):
        return None
    side = float(max(h, w)) * (1.0 + 2.0 * margin)
    cy = (rows.min() + rows.max() + 1) / 2.0
    cx = (cols.min() + cols.max() + 1) / 2.0
    return Frame(x0=float(cx - side / 2.0), y0=float(cy - side / 2.0), width=side, height=side)


def frame_within(outer: Frame | None, inner: Frame, grid: tuple[int, int]) -> Frame:
    """`inner` (coordinates of an array of shape `grid` sampled from `outer`) in the
    coordinates of `outer`'s source; `inner` itself when there is no outer frame."""
    if outer is None:
        return inner
    sy, sx = outer.height / grid[0], outer.width / grid[1]
    return Frame(
        x0=outer.x0 + inner.x0 * sx,
        y0=outer.y0 + inner.y0 * sy,
        width=inner.width * sx,
        height=inner.height * sy,
    )


def square_sample(values: np.ndarray, frame: Frame, *, side: int, fill: float) -> np.ndarray:
    """float32 (side, side) of `values` inside `frame` (bilinear), `fill` outside."""
    box = (frame.x0, frame.y0, frame.x0 + frame.width, frame.y0 + frame.height)
    out = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F").transform(
        (side, side), Image.EXTENT, box, resample=Image.BILINEAR, fillcolor=float(fill)
    )
    return np.asarray(out, dtype=np.float32)
