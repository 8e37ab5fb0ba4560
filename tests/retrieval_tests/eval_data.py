"""Generated manifests of small 8-bit chest-like PNGs for evaluation and training tests.

Each class fills two dark 'lungs' inside a brighter 'body' with its own texture (plain, brighter
ground glass, reticular lines, nodules); every patient has its own jitter of shapes and noise.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "ground_glass", "reticular", "nodular")


def chest_png(*, label: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One uint8 (size, size) image of the given class."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.38) ** 2 < 1
    img = np.where(body, 0.55, 0.0)
    lungs = np.zeros_like(body)
    for cx in (0.3, 0.7):
        cx += rng.uniform(-0.02, 0.02)
        lungs |= ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.27) ** 2 < 1
    lung_value = 0.12
    texture = np.zeros_like(img)
    if label == "ground_glass":
        lung_value = 0.32
    elif label == "reticular":
        period = rng.uniform(0.05, 0.07)
        texture = 0.35 * (np.sin(2 * np.pi * (xx + yy) / period) > 0.6)
    elif label == "nodular":
        for _ in range(12):
            y0, x0 = rng.uniform(0.25, 0.75), rng.uniform(0.18, 0.82)
            texture += 0.5 * (((xx - x0) ** 2 + (yy - y0) ** 2) < 0.0009)
    img = np.where(lungs, lung_value + texture, img)
    img = img + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_manifest(
    folder: Path,
    *,
    classes: tuple[str, ...] = CLASSES,
    patients_per_class: int = 6,
    slices_per_patient: int = 2,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """PNG files plus manifest.csv (path,label,patient_id,split); returns the manifest path."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for label in classes:
        for p in range(patients_per_class):
            patient = f"{label}-p{p}"
            split = "test" if p >= patients_per_class - max(1, patients_per_class // 3) else "train"
            for s in range(slices_per_patient):
                name = f"{patient}-s{s}.png"
                Image.fromarray(chest_png(label=label, size=size, rng=rng)).save(folder / name)
                rows.append({"path": name, "label": label, "patient_id": patient, "split": split})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
