"""Synthetic axial chest CT slices with interstitial-lung-disease patterns (free of Django).

`chest_phantom` draws one slice in Hounsfield units together with its true lung mask: air
outside the patient; a body outline (skin and chest-wall muscle at soft-tissue HU, a
subcutaneous fat layer); ribs, sternum and a vertebra at bone HU; mediastinum, heart and, at the
bases, the diaphragm domes; the trachea or the main bronchi; and two lungs near -850 HU with
vessels (branches from each hilum, twigs and cross-cut dots, thinner towards the periphery), a
posterior (dependent) density gradient, parenchymal texture and CT noise. The lungs change with
the slice position `z` (small at the apex, largest at the base, where the domes cut into them)
and with the seed (body size, lung size, shape and position, vessels, pattern).

Patterns, drawn inside the lungs only:
- ``normal``: nothing more.
- ``ground_glass``: patchy areas raised to about -600..-450 HU; vessels stay visible.
- ``reticulation``: a net of fine lines, a faint haze and clustered subpleural cysts with walls
  (honeycombing), with subpleural, basal and posterior predominance.
- ``consolidation``: dense areas about 0..50 HU that hide the vessels, with branching air
  bronchograms.

`lesion_center` (row, column as fractions of the image) centres the pattern there; with
`focal=True` the abnormality is one compact blob at that place (a random place inside a lung
when no centre is given). A lesion asked of the ``normal`` pattern is drawn as a small
consolidation, so that a lesion is always visible.

Conventions: rows run anterior (top) to posterior (bottom); the patient's right lung is on the
image's left, as radiologists view axial CT. `z` runs from -1 (lung apex) over 0 (mid chest,
near the carina) to +1 (lung bases).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

PATTERNS = ("normal", "ground_glass", "reticulation", "consolidation")

AIR_HU = -1000.0
LUNG_HU = -850.0
FAT_HU = -100.0
SOFT_HU = 40.0
BONE_HU = 700.0
MARROW_HU = 250.0
CSF_HU = 10.0
NOISE_HU = 14.0


def chest_phantom(
    *,
    size: int = 512,
    pattern: str = "normal",
    seed: int,
    z: float = 0.0,
    lesion_center: tuple[float, float] | None = None,
    focal: bool = False,
    anatomy_seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One axial chest CT slice: (int16 HU image, bool true lung mask), both (size, size).

    Deterministic for given arguments. `pattern` is one of `PATTERNS`; `z` in [-1, 1] from apex
    to base (clipped); `lesion_center` is (row, col) in fractions of the image and should lie in
    a lung; `focal` draws the abnormality as one compact blob there. `anatomy_seed` (default:
    `seed`) fixes the body and lung outline on its own, so that the slices of one patient
    share an anatomy while vessels and pattern differ from slice to slice.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if lesion_center is not None:
        r, c = lesion_center
        if not (0.0 <= r <= 1.0 and 0.0 <= c <= 1.0):
            raise ValueError(f"lesion_center must be fractions in [0, 1], got {lesion_center}")
    z = float(np.clip(z, -1.0, 1.0))
    rng = np.random.default_rng(seed)
    canvas = _Canvas(size)

    body_rng = rng if anatomy_seed is None else np.random.default_rng(anatomy_seed)
    anatomy = _anatomy(canvas=canvas, rng=body_rng, z=z)
    lung = anatomy.lung

    # Parenchyma: base density, posterior (dependent) gradient, fine texture.
    texture = _smooth_noise(rng=rng, size=size, cells=max(8, size // 5))
    dependent = np.clip((canvas.yy - anatomy.lung_top) / anatomy.lung_height, 0.0, 1.0)
    parenchyma = LUNG_HU + 45.0 * dependent + 10.0 * texture
    vessels = _vessel_map(canvas=canvas, rng=rng, anatomy=anatomy)

    drawn, weight = None, None
    if focal or (lesion_center is not None and pattern == "normal"):
        drawn = "consolidation" if pattern == "normal" else pattern
        centre = lesion_center if lesion_center is not None else _random_lung_point(rng, lung)
        blob = _wobbly(canvas, centre[0], centre[1], 0.065, 0.065, rng=rng, amp=0.12)
        weight = (blob & lung).astype(np.float32)
        focal = True
    elif pattern != "normal":
        drawn = pattern
        if lesion_center is not None:
            d2 = (canvas.yy - lesion_center[0]) ** 2 + (canvas.xx - lesion_center[1]) ** 2
            weight = np.exp(-d2 / (2 * 0.18**2)).astype(np.float32)
    if drawn is not None:
        parenchyma, vessels = _apply_pattern(
            drawn,
            canvas=canvas,
            rng=rng,
            anatomy=anatomy,
            parenchyma=parenchyma,
            vessels=vessels,
            weight=weight,
            focal=focal,
            z=z,
        )

    # Vessels are partial-volume blended into whatever parenchyma surrounds them.
    lung_hu = parenchyma + vessels * (SOFT_HU - parenchyma)
    hu = np.where(lung, lung_hu, anatomy.hu)
    # Quantum noise everywhere (CT noise is roughly uniform in HU).
    hu += rng.standard_normal((size, size), dtype=np.float32) * NOISE_HU
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return hu, lung.copy()


# ---------------------------------------------------------------- drawing primitives


class _Canvas:
    """Normalised pixel-centre coordinates (rows `yy`, columns `xx`, both 0..1)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.yy, self.xx = _grid(size)

    def box(self, cy: float, cx: float, ry: float, rx: float) -> tuple[slice, slice]:
        """Pixel bounding box (row slice, column slice) of a normalised axis-aligned box."""
        n = self.size
        y0, y1 = int(np.floor((cy - ry) * n)) - 1, int(np.ceil((cy + ry) * n)) + 2
        x0, x1 = int(np.floor((cx - rx) * n)) - 1, int(np.ceil((cx + rx) * n)) + 2
        return slice(max(y0, 0), max(min(y1, n), 0)), slice(max(x0, 0), max(min(x1, n), 0))

    def ellipse(self, cy, cx, ry, rx, *, angle: float = 0.0) -> np.ndarray:
        """Boolean inside of an ellipse (rotated by `angle` radians), computed in its box."""
        out = np.zeros((self.size, self.size), bool)
        reach = max(ry, rx) if angle else None
        sy, sx = self.box(cy, cx, reach or ry, reach or rx)
        dy, dx = self.yy[sy, sx] - cy, self.xx[sy, sx] - cx
        if angle:
            ca, sa = np.cos(angle), np.sin(angle)
            dx, dy = ca * dx + sa * dy, -sa * dx + ca * dy
        out[sy, sx] = (dy / ry) ** 2 + (dx / rx) ** 2 <= 1.0
        return out


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _wobbly(canvas: _Canvas, cy, cx, ry, rx, *, rng, amp: float = 0.06) -> np.ndarray:
    """Inside of an ellipse whose radius is modulated by a few random low harmonics."""
    out = np.zeros((canvas.size, canvas.size), bool)
    grow = 1.0 + 2.0 * amp
    sy, sx = canvas.box(cy, cx, ry * grow, rx * grow)
    dy, dx = (canvas.yy[sy, sx] - cy) / ry, (canvas.xx[sy, sx] - cx) / rx
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for k in range(2, 6):
        radius += (
            (amp / (k - 1)) * rng.standard_normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    out[sy, sx] = dy**2 + dx**2 <= radius**2
    return out


def _smooth_noise(*, rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-variance smooth random field with about `cells` blobs per side (coarse
    Gaussian noise upsampled bicubically: cheap at any image size)."""
    cells = int(max(2, min(cells, size)))
    coarse = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    field = np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    std = float(field.std()) or 1.0
    return (field - field.mean()) / std


def _segment(arr: np.ndarray, p0, p1, r0: float, r1: float) -> None:
    """Raise `arr` (0..1 coverage) along a tapered tube from p0 to p1 (pixel row, col), with a
    one-pixel anti-aliased edge; computed only in the tube's bounding box."""
    n = arr.shape[0]
    # Tubes thinner than a pixel are drawn one pixel wide but fainter (partial volume).
    strength = min(1.0, (max(r0, r1) / 0.55) ** 2)
    r0, r1 = max(r0, 0.55), max(r1, 0.55)
    reach = max(r0, r1) + 1.5
    y0 = max(int(min(p0[0], p1[0]) - reach), 0)
    y1 = min(int(max(p0[0], p1[0]) + reach) + 1, n)
    x0 = max(int(min(p0[1], p1[1]) - reach), 0)
    x1 = min(int(max(p0[1], p1[1]) + reach) + 1, n)
    if y0 >= y1 or x0 >= x1:
        return
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
    vy, vx = p1[0] - p0[0], p1[1] - p0[1]
    length2 = vy * vy + vx * vx
    if length2 > 1e-9:
        t = np.clip(((ys - p0[0]) * vy + (xs - p0[1]) * vx) / length2, 0.0, 1.0)
    else:
        t = np.zeros((ys.shape[0], xs.shape[1]), np.float32)
    dist = np.hypot(ys - (p0[0] + t * vy), xs - (p0[1] + t * vx))
    cover = np.clip(r0 + t * (r1 - r0) + 0.5 - dist, 0.0, 1.0) * strength
    window = arr[y0:y1, x0:x1]
    np.maximum(window, cover, out=window)


def _branch(arr, *, rng, start, angle, length, radius, depth, spread=0.5) -> None:
    """A branching tube (vessel or bronchus) in pixel units: a slightly bent trunk that splits
    into two thinner, shorter children `depth` times."""
    end = (start[0] + length * np.sin(angle), start[1] + length * np.cos(angle))
    _segment(arr, start, end, radius, radius * 0.85)
    if depth <= 0:
        return
    for sign in (-1.0, 1.0):
        _branch(
            arr,
            rng=rng,
            start=end,
            angle=angle + sign * spread * rng.uniform(0.4, 1.0),
            length=length * rng.uniform(0.55, 0.8),
            radius=radius * 0.7,
            depth=depth - 1,
            spread=spread,
        )


# ---------------------------------------------------------------- anatomy


class _Anatomy:
    """The drawn slice before the lungs are filled in: HU image, lung mask and landmarks."""

    def __init__(self, *, hu, lung, hila, lung_top, lung_height, lung_boxes):
        self.hu = hu
        self.lung = lung
        self.hila = hila  # (row, col) fractions of each lung's hilum
        self.lung_top = lung_top
        self.lung_height = lung_height
        self.lung_boxes = lung_boxes  # (cy, cx, ry, rx) fractions of each lung's ellipse


def _anatomy(*, canvas: _Canvas, rng: np.random.Generator, z: float) -> _Anatomy:
    size = canvas.size
    yy, xx = canvas.yy, canvas.xx
    hu = np.full((size, size), AIR_HU, np.float32)
    level = (z + 1.0) / 2.0  # 0 at the apex, 1 at the base

    # Body: an ellipse, broader than deep, flatter at the back; wider towards the base.
    by = 0.5 + rng.uniform(-0.02, 0.02)
    bx = 0.5 + rng.uniform(-0.015, 0.015)
    bry = rng.uniform(0.3, 0.34) * (0.93 + 0.07 * level)
    brx = rng.uniform(0.41, 0.45) * (0.88 + 0.12 * level)
    radial = np.sqrt(((yy - by) / bry) ** 2 + ((xx - bx) / brx) ** 2)
    radial *= 1.0 + 0.12 * np.clip(yy - by, 0.0, None) / bry  # flatter back
    fat_depth = rng.uniform(0.05, 0.1)
    wall = rng.uniform(0.05, 0.07)  # chest-wall muscle and ribs
    hu[radial <= 1.0] = SOFT_HU  # skin rim
    hu[(radial <= 0.985) & (radial > 1.0 - fat_depth)] = FAT_HU
    hu[radial <= 1.0 - fat_depth] = SOFT_HU  # muscle, mediastinum
    cavity = radial <= 1.0 - fat_depth - wall

    # Ribs: short bony arcs in the chest wall; the sternum in front.
    rib_r = 1.0 - fat_depth - wall * 0.45
    theta = np.arctan2((yy - by) / bry, (xx - bx) / brx)
    rib_count = int(rng.integers(7, 10))
    ribs = (np.abs(radial - rib_r) <= 0.012 + 12.0 / size / 10) & (
        np.cos(rib_count * theta + rng.uniform(0, 2 * np.pi)) > 0.3
    )
    ribs &= ~((yy < by) & (np.abs(xx - bx) < brx * 0.12))  # no rib over the sternum
    hu[ribs] = BONE_HU
    if z > -0.7:
        hu[canvas.ellipse(by - bry * rib_r, bx, bry * 0.03, brx * 0.075)] = BONE_HU

    # Spine: vertebral body (cortex, marrow), canal and posterior arch, in paraspinal muscle.
    vy, vx, vr = by + bry * 0.5, bx, bry * 0.13
    hu[canvas.ellipse(vy, vx, vr, vr * 1.05)] = BONE_HU
    hu[canvas.ellipse(vy, vx, vr * 0.8, vr * 0.85)] = MARROW_HU
    hu[canvas.ellipse(vy + vr * 1.35, vx, vr * 0.55, vr * 0.95)] = BONE_HU
    hu[canvas.ellipse(vy + vr * 1.35, vx, vr * 0.35, vr * 0.5)] = CSF_HU
    hu[canvas.ellipse(vy + vr * 1.95, vx, vr * 0.5, vr * 0.18)] = BONE_HU
    paraspinal = canvas.ellipse(vy + vr * 0.3, vx, vr * 2.1, vr * 1.9)

    # Lungs grow from apex to base; their centres sit either side of the mediastinum.
    grow = 0.4 + 0.6 * float(np.clip((z + 1.0) / 1.4, 0.0, 1.0)) ** 0.6
    lung = np.zeros((size, size), bool)
    hila, boxes = [], []
    for side in (-1.0, 1.0):  # image left = patient's right lung
        cx = bx + side * brx * rng.uniform(0.44, 0.48)
        cy = by + rng.uniform(0.0, 0.04)
        rx = brx * rng.uniform(0.37, 0.41) * grow * (0.95 if side > 0 else 1.0)
        ry = bry * rng.uniform(0.8, 0.86) * grow
        lung |= _wobbly(canvas, cy, cx, ry, rx, rng=rng, amp=0.05)
        hila.append((cy - 0.05 * ry, cx - side * 0.7 * rx))
        boxes.append((cy, cx, ry, rx))
    lung &= cavity & ~paraspinal

    # Mediastinum and heart cut into the medial sides; the heart lies to the patient's left
    # (image right), largest in the lower chest.
    lung &= ~((np.abs(xx - bx) <= brx * (0.13 if z > -0.5 else 0.1)) & (yy <= vy))
    if z > -0.35:
        hs = float(np.clip((z + 0.35) / 0.75, 0.35, 1.0))
        hs *= 1.0 - 0.4 * float(np.clip((z - 0.6) / 0.4, 0.0, 1.0))  # below the heart
        heart = canvas.ellipse(
            by - bry * 0.15,
            bx + brx * 0.13,
            bry * 0.5 * hs,
            brx * 0.36 * hs,
            angle=rng.uniform(0.3, 0.5),
        )
        lung &= ~heart

    # Diaphragm domes at the base: liver (patient's right) and spleen/stomach (left) take the
    # centre of the section, leaving the lungs as posterolateral crescents.
    if z > 0.4:
        dome = float((z - 0.4) / 0.6) ** 0.7
        liver = canvas.ellipse(by - bry * 0.1, bx - brx * 0.3, bry * 0.6 * dome, brx * 0.4 * dome)
        left = canvas.ellipse(by - bry * 0.15, bx + brx * 0.32, bry * 0.5 * dome, brx * 0.33 * dome)
        lung &= ~(liver | left)

    # Keep only sizeable connected lung components (the cuts can leave specks).
    labels, count = ndimage.label(lung)
    if count > 1:
        areas = ndimage.sum(lung, labels, index=np.arange(1, count + 1))
        keep = np.flatnonzero(areas >= max(8, 0.1 * areas.max())) + 1
        lung = np.isin(labels, keep)

    # Airways in the mediastinum: the trachea above the carina, the main bronchi below it.
    ty, tx, tr = by - bry * 0.3, bx + rng.uniform(-0.01, 0.01), bry * 0.07
    if z < -0.1:
        hu[canvas.ellipse(ty, tx, tr * 1.3, tr * 1.3)] = SOFT_HU
        hu[canvas.ellipse(ty, tx, tr, tr)] = AIR_HU
    elif z < 0.3:
        for side in (-1.0, 1.0):
            hu[canvas.ellipse(ty + bry * 0.12, tx + side * brx * 0.08, tr * 0.7, tr * 0.7)] = AIR_HU

    rows = np.flatnonzero(lung.any(axis=1))
    top = (rows[0] + 0.5) / size if rows.size else by - bry
    height = max((rows[-1] - rows[0] + 1) / size if rows.size else bry, 1.0 / size)
    return _Anatomy(hu=hu, lung=lung, hila=hila, lung_top=top, lung_height=height, lung_boxes=boxes)


def _vessel_map(*, canvas: _Canvas, rng: np.random.Generator, anatomy: _Anatomy) -> np.ndarray:
    """Vessel coverage 0..1 inside the lungs: branches from each hilum, short twigs running
    roughly away from it, and vessels cut across (dots); calibre falls towards the periphery."""
    size = canvas.size
    arr = np.zeros((size, size), np.float32)
    big = size * 0.0065
    for (hy, hx), (cy, cx, ry, rx) in zip(anatomy.hila, anatomy.lung_boxes, strict=True):
        lateral = 0.0 if cx > hx else np.pi
        reach = size * max(rx, ry)
        for _ in range(int(rng.integers(2, 4))):
            _branch(
                arr,
                rng=rng,
                start=(hy * size, hx * size),
                angle=lateral + rng.uniform(-1.3, 1.3),
                length=reach * rng.uniform(0.2, 0.3),
                radius=big * 0.85,
                depth=2,
                spread=0.45,
            )
        for _ in range(int(rng.integers(40, 70))):
            a, r = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0.05, 1.0))
            py, px = cy + r * ry * np.sin(a), cx + r * rx * np.cos(a)
            away = np.arctan2(py - hy, px - hx) + rng.normal(0.0, 0.4)
            d = float(np.hypot(py - hy, px - hx) / max(rx, ry))
            radius = big * float(np.clip(1.0 - 0.8 * d, 0.2, 0.9))
            if rng.uniform() < 0.45:  # cut across: a dot
                _segment(arr, (py * size, px * size), (py * size, px * size), radius, radius)
                continue
            length = size * rng.uniform(0.012, 0.035) * (1.2 - 0.5 * d)
            end = (py * size + length * np.sin(away), px * size + length * np.cos(away))
            _segment(arr, (py * size, px * size), end, radius, radius * 0.7)
    arr *= anatomy.lung
    return arr


def _random_lung_point(rng: np.random.Generator, lung: np.ndarray) -> tuple[float, float]:
    """A random (row, col) fraction well inside the lungs."""
    size = lung.shape[0]
    step = max(1, size // 64)
    depth = ndimage.distance_transform_edt(lung[::step, ::step])
    if depth.max() <= 0:
        return (0.5, 0.3)
    candidates = np.argwhere(depth >= depth.max() * 0.5)
    r, c = candidates[rng.integers(len(candidates))]
    return ((r * step + step / 2) / size, (c * step + step / 2) / size)


# ---------------------------------------------------------------- patterns


def _apply_pattern(
    pattern: str,
    *,
    canvas: _Canvas,
    rng: np.random.Generator,
    anatomy: _Anatomy,
    parenchyma: np.ndarray,
    vessels: np.ndarray,
    weight: np.ndarray | None,
    focal: bool,
    z: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `pattern` into the lung parenchyma where `weight` (0..1, None: everywhere) allows;
    returns the new parenchyma HU and vessel coverage (consolidation hides vessels)."""
    size = canvas.size
    lung = anatomy.lung
    ones = weight if weight is not None else np.ones((size, size), np.float32)
    soft_edge = max(size * 0.005, 0.6)

    if pattern == "ground_glass":
        if focal:
            region = ndimage.gaussian_filter(ones, sigma=soft_edge * 1.5)
        else:
            field = _smooth_noise(rng=rng, size=size, cells=int(rng.integers(4, 8)))
            cover = rng.uniform(0.25, 0.45)  # fraction of the lungs involved
            thr = np.quantile(field[lung], 1.0 - cover) if lung.any() else 0.0
            region = np.clip((field - thr) / 0.4, 0.0, 1.0) * ones
        level = rng.uniform(-600.0, -470.0)
        patch = level + 20.0 * _smooth_noise(rng=rng, size=size, cells=max(8, size // 10))
        return parenchyma + region * (patch - parenchyma), vessels

    if pattern == "consolidation":
        if focal:
            region = ndimage.gaussian_filter(ones, sigma=soft_edge)
        else:
            field = _smooth_noise(rng=rng, size=size, cells=int(rng.integers(3, 6)))
            # Dependent (posterior) and basal areas consolidate first.
            field = field + 1.5 * (canvas.yy - 0.5) / 0.3 + 0.3 * z
            cover = rng.uniform(0.15, 0.3)
            thr = np.quantile(field[lung], 1.0 - cover) if lung.any() else 0.0
            region = np.clip((field - thr) / 0.12, 0.0, 1.0) * ones
        region = region * lung
        dense = rng.uniform(5.0, 45.0) + 6.0 * _smooth_noise(rng=rng, size=size, cells=12)
        parenchyma = parenchyma + region * (dense - parenchyma)
        # Air bronchograms: branching air-filled tubes, visible only inside the dense area.
        bronchi = np.zeros((size, size), np.float32)
        core = np.argwhere(region > 0.9)
        for _ in range(int(rng.integers(2, 5)) if len(core) else 0):
            py, px = core[rng.integers(len(core))]
            hy, hx = anatomy.hila[0] if px < size / 2 else anatomy.hila[1]
            away = np.arctan2(py / size - hy, px / size - hx) + rng.normal(0.0, 0.3)
            _branch(
                bronchi,
                rng=rng,
                start=(py - np.sin(away) * size * 0.03, px - np.cos(away) * size * 0.03),
                angle=away,
                length=size * rng.uniform(0.04, 0.07),
                radius=max(size * 0.0045, 0.6),
                depth=2,
                spread=0.4,
            )
        air = bronchi * np.clip(region * 2.0 - 1.0, 0.0, 1.0)
        parenchyma = parenchyma + air * (-920.0 - parenchyma)
        return parenchyma, vessels * (1.0 - region)

    if pattern == "reticulation":
        if focal:
            extent = ndimage.gaussian_filter(ones, sigma=soft_edge)
        else:
            # Subpleural (near the lung border), basal and posterior predominance.
            step = max(1, size // 128)
            small = lung[::step, ::step]
            depth = ndimage.distance_transform_edt(small) * (step / size)
            depth = np.asarray(
                Image.fromarray(depth.astype(np.float32), mode="F").resize(
                    (size, size), Image.Resampling.BILINEAR
                )
            )
            subpleural = np.exp(-depth / 0.03)
            # Usual interstitial pneumonia spares the apices: severity rises steeply to the base.
            basal = max(0.05, ((z + 1.0) / 2.0) ** 1.2)
            posterior = 0.55 + 0.45 * np.clip(
                (canvas.yy - anatomy.lung_top) / anatomy.lung_height, 0.0, 1.0
            )
            extent = np.clip(subpleural * posterior * 1.5, 0.0, 1.0) * basal * ones
        extent = extent * lung
        # A net of fine lines: the zero crossings of a smooth random field.
        net = _smooth_noise(rng=rng, size=size, cells=max(6, size // 12))
        width = 0.16 if size >= 128 else 0.3
        lines = np.clip(1.0 - np.abs(net) / width, 0.0, 1.0)
        line_hu = rng.uniform(-150.0, -30.0)
        parenchyma = parenchyma + 0.6 * extent * (-700.0 - parenchyma)
        parenchyma = parenchyma + lines * np.clip(extent * 1.3, 0, 1) * (line_hu - parenchyma)
        # Honeycombing: clustered cysts with walls where the fibrosis is worst.
        cysts = np.zeros((size, size), np.float32)
        walls = np.zeros((size, size), np.float32)
        prob = (extent**3).ravel()
        total = float(prob.sum())
        if total > 0:
            count = int(rng.integers(6, 11))
            if not focal:
                count = int(round(rng.integers(18, 40) * float(extent.max())))
            for idx in rng.choice(prob.size, size=count, p=prob / total):
                py, px = divmod(int(idx), size)
                r = size * rng.uniform(0.006, 0.014)
                centre = (py + 0.5, px + 0.5)
                rw = r + max(size * 0.003, 0.7)
                _segment(walls, centre, centre, rw, rw)
                _segment(cysts, centre, centre, r, r)
        walls = np.clip(walls - cysts, 0.0, 1.0) * lung
        cysts *= lung
        parenchyma = parenchyma + walls * (line_hu - parenchyma)
        parenchyma = parenchyma + cysts * (-960.0 - parenchyma)
        return parenchyma, vessels * (1.0 - cysts)

    return parenchyma, vessels  # normal
