"""Stage 2: radiomics features of a slice inside its lung mask (pyradiomics, 2-D).

Parameters live in `radiomics_params.yaml` next to this module (kept in the repository and
stored verbatim with every trained model). Feature classes: shape2D, first order, GLCM, GLRLM,
GLSZM, GLDM, NGTDM on the original image (102 features with pyradiomics 3.0.1).

The windowed [0, 1] slice is scaled to 0..255 (`ildreview.intensity_scale`) so that the fixed
bin width (8) gives at most 32 grey levels. Slices larger than `ildreview.max_size` are
downsampled before extraction (measured speed/fidelity trade-off, see README).

Robustness: an ROI below `ildreview.min_roi_pixels` raises `RadiomicsError`
(`prepare_slice` never produces one: it falls back to a central ellipse), and any non-finite
feature value (e.g. a texture undefined on a flat ROI) is replaced by 0, so vectors never hold
NaN or inf.
"""

from __future__ import annotations

import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

DEFAULT_PARAMS = Path(__file__).with_name("radiomics_params.yaml")
# The main features (all enabled by the default parameters), in display order: stored beside
# each slice's full vector and shown first, side by side, on the review page.
MAIN_FEATURES = (
    "original_firstorder_Mean",
    "original_firstorder_Skewness",
    "original_firstorder_Kurtosis",
    "original_firstorder_Entropy",
    "original_glcm_Contrast",
    "original_glcm_Correlation",
    "original_glrlm_RunLengthNonUniformity",
    "original_glszm_ZoneEntropy",
    "original_ngtdm_Coarseness",
    "original_shape2D_PixelSurface",
)

logging.getLogger("radiomics").setLevel(logging.ERROR)


class RadiomicsError(ValueError):
    """Radiomics cannot be computed for this image/mask (the message says why)."""


def _silence_pyradiomics() -> None:
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)


@lru_cache(maxsize=8)
def _feature_names_for(params_text: str) -> tuple[str, ...]:
    """Feature names (in extraction order) for a parameter text: one extraction on a small
    synthetic disc, cached per parameter text."""
    extractor = RadiomicsExtractor(params_text=params_text, _probe=False)
    yy, xx = np.mgrid[0:48, 0:48]
    mask = (yy - 24) ** 2 + (xx - 24) ** 2 < 18**2
    rng = np.random.default_rng(0)
    image = np.clip(0.3 + 0.2 * rng.random((48, 48)), 0, 1).astype(np.float32)
    names, _ = extractor._extract_raw(image, mask)
    return tuple(names)


class RadiomicsExtractor:
    """pyradiomics feature extraction on (windowed [0, 1] image, boolean mask) pairs.

    `params_path` or `params_text` (YAML, as in `radiomics_params.yaml`; the text wins) set
    the parameters. `feature_names` (fixed order) and `params_text` / `params_sha256` (stored
    with model artefacts) are available right after construction.
    """

    def __init__(
        self,
        params_path: Path | str = DEFAULT_PARAMS,
        *,
        params_text: str | None = None,
        _probe: bool = True,
    ):
        from radiomics.featureextractor import RadiomicsFeatureExtractor

        _silence_pyradiomics()
        if params_text is None:
            params_text = Path(params_path).read_text(encoding="utf-8")
        self.params_text: str = params_text
        self.params_sha256: str = hashlib.sha256(params_text.encode("utf-8")).hexdigest()
        params = yaml.safe_load(params_text) or {}
        own = params.pop("ildreview", {}) or {}
        self.intensity_scale = float(own.get("intensity_scale", 255.0))
        self.max_size = int(own.get("max_size", 0) or 0)
        self.min_roi_pixels = int(own.get("min_roi_pixels", 16))
        self._extractor = RadiomicsFeatureExtractor(params)
        self.feature_names: list[str] = list(_feature_names_for(params_text)) if _probe else []

    def _downsample(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape
        if not self.max_size or max(h, w) <= self.max_size:
            return image, mask
        scale = self.max_size / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = np.asarray(Image.fromarray(image, mode="F").resize(size, Image.BOX), np.float32)
        # Mask by area coverage (>= half), so thin ROIs shrink rather than vanish at random.
        cov = Image.fromarray(mask.astype(np.float32), mode="F").resize(size, Image.BOX)
        small = np.asarray(cov, np.float32) >= 0.5
        if small.sum() < self.min_roi_pixels:  # tiny ROI: keep full resolution instead
            return image, mask
        return img, small

    def _extract_raw(self, image01: np.ndarray, mask: np.ndarray) -> tuple[list[str], np.ndarray]:
        import SimpleITK as sitk

        image = np.asarray(image01, dtype=np.float32)
        roi = np.asarray(mask, dtype=bool)
        if image.ndim != 2 or roi.shape != image.shape:
            raise RadiomicsError(
                f"image {image.shape} and mask {roi.shape} must be 2-D arrays of the same shape"
            )
        n = int(roi.sum())
        if n < self.min_roi_pixels:
            raise RadiomicsError(
                f"ROI has {n} pixels; at least {self.min_roi_pixels} are needed for radiomics"
            )
        image = np.nan_to_num(image, nan=0.0, posinf=1.0, neginf=0.0)
        image, roi = self._downsample(image, roi)
        # One-slice 3-D volumes: pyradiomics' force2D path expects (z, y, x) with z = 1.
        img = sitk.GetImageFromArray((image * self.intensity_scale)[None].astype(np.float32))
        msk = sitk.GetImageFromArray(roi[None].astype(np.uint8))
        try:
            result = self._extractor.execute(img, msk, label=1)
        except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as exc:
            raise RadiomicsError(f"pyradiomics failed on a {n}-pixel ROI: {exc}") from exc
        names = [k for k in result if not k.startswith("diagnostics_")]
        values = np.array([_as_float(result[k]) for k in names], dtype=np.float64)
        return names, np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)

    def extract(self, image01: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """float64 (D,) features in `feature_names` order; never NaN/inf.

        Raises RadiomicsError for an ROI below the minimum size or a shape mismatch.
        """
        names, values = self._extract_raw(image01, mask)
        if names != self.feature_names:
            # Same parameters always give the same names; a mismatch means a pyradiomics
            # change. Align by name so vectors stay comparable; missing ones are 0.
            lookup = dict(zip(names, values, strict=True))
            values = np.array([lookup.get(k, 0.0) for k in self.feature_names], np.float64)
        return values


def _as_float(value) -> float:
    try:
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return 0.0


class Standardizer:
    """Per-feature z-scoring with statistics fitted on the reference (training) set.

    Constant features (std < 1e-12) get std 1 so they map to 0 instead of inf. Stored with
    the model version (`to_dict` / `from_dict`, JSON-friendly lists).
    """

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std = None if std is None else np.asarray(std, dtype=np.float64)

    def fit(self, X: np.ndarray) -> Standardizer:
        X = np.nan_to_num(np.asarray(X, dtype=np.float64))
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"Standardizer.fit needs a non-empty 2-D array, got {X.shape}")
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std < 1e-12, 1.0, std)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        if self.mean is None or self.std is None:
            raise ValueError("Standardizer is not fitted")
        X = np.nan_to_num(np.asarray(X, dtype=np.float64))
        if X.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"expected {self.mean.shape[0]} features, got {X.shape[-1]}")
        return (X - self.mean) / self.std

    def to_dict(self) -> dict:
        if self.mean is None or self.std is None:
            raise ValueError("Standardizer is not fitted")
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Standardizer:
        return cls(mean=np.asarray(d["mean"], np.float64), std=np.asarray(d["std"], np.float64))
