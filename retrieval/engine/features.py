"""Deep (backbone + GeM) and radiomics features of prepared slices, with an on-disk cache.

`FeatureExtractor.extract(slices)` -> (deep (N, Cd) float32, radiomics (N, Cr) float64).

`FeatureCache(root)` stores one `.npz` per image under a key made of the image's identity
(SHA-256 of the file's bytes, or any caller-given string), the backbone name, its weights
SHA-256, the radiomics parameters' SHA-256, the slice size and the backbone input size — change
any of them and the entry is simply not found. `FeatureExtractor.extract_paths` reads image
files, prepares them and uses the cache, so evaluation runs reuse features across runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from retrieval.engine.backbones import file_sha256, images_to_tensor
from retrieval.engine.preprocess import PREPROCESS_VERSION, load_image_file, prepare_slice
from retrieval.engine.radiomics import RadiomicsExtractor

Progress = Callable[[int, int], None]  # (items done, items total)


@dataclass
class CachedFeatures:
    """One cached item: deep (Cd,), radiomics (Cr,), lung fraction, mask fallback flag."""

    deep: np.ndarray
    rad: np.ndarray
    lung_fraction: float
    mask_fallback: bool = False


class FeatureCache:
    """Directory of `.npz` feature files (see module docstring). Safe to share between runs;
    writes are atomic (temporary file + rename)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(
        *,
        source: str,
        backbone_name: str,
        weights_sha256: str,
        params_sha256: str,
        size: int,
        input_size: int | None = None,
    ) -> str:
        """Cache key (hex) of one image under one feature configuration."""
        payload = json.dumps(
            [
                source,
                backbone_name,
                weights_sha256,
                params_sha256,
                int(size),
                input_size,
                PREPROCESS_VERSION,
            ]
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> CachedFeatures | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                return CachedFeatures(
                    deep=z["deep"],
                    rad=z["rad"],
                    lung_fraction=float(z["lung_fraction"]),
                    mask_fallback=bool(z["mask_fallback"]),
                )
        except (OSError, KeyError, ValueError):
            return None  # a corrupt entry is recomputed and overwritten

    def put(self, key: str, item: CachedFeatures) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(
                    fh,
                    deep=np.asarray(item.deep, np.float32),
                    rad=np.asarray(item.rad, np.float64),
                    lung_fraction=np.float64(item.lung_fraction),
                    mask_fallback=np.bool_(item.mask_fallback),
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class FeatureExtractor:
    """Deep + radiomics features of PreparedSlice lists.

    The backbone runs in eval mode without gradients, `batch_size` slices at a time, on its
    own device; `input_size` optionally resizes slices for the backbone only (radiomics always
    use the prepared slice).
    """

    def __init__(
        self,
        backbone: nn.Module,
        radiomics: RadiomicsExtractor,
        batch_size: int = 16,
        *,
        input_size: int | None = None,
    ):
        self.backbone = backbone
        self.radiomics = radiomics
        self.batch_size = int(batch_size)
        self.input_size = input_size

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def deep(self, images01: Sequence[np.ndarray]) -> np.ndarray:
        """(N, Cd) float32 backbone + GeM vectors of windowed [0, 1] images."""
        out = []
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(images01), self.batch_size):
                    chunk = images01[start : start + self.batch_size]
                    x = images_to_tensor(list(chunk), size=self.input_size).to(self.device)
                    out.append(self.backbone(x).float().cpu().numpy())
        finally:
            self.backbone.train(was_training)
        dim = int(getattr(self.backbone, "out_dim", 0))
        return np.vstack(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)

    def extract(
        self, slices: list, progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(deep (N, Cd) float32, radiomics (N, Cr) float64) of PreparedSlices."""
        n = len(slices)
        rad = np.zeros((n, len(self.radiomics.feature_names)), np.float64)
        deep_parts = []
        for start in range(0, n, self.batch_size):
            chunk = slices[start : start + self.batch_size]
            deep_parts.append(self.deep([s.image for s in chunk]))
            for i, s in enumerate(chunk):
                rad[start + i] = self.radiomics.extract(s.image, s.mask)
            if progress:
                progress(min(start + self.batch_size, n), n)
        dim = int(getattr(self.backbone, "out_dim", 0))
        deep = np.vstack(deep_parts) if deep_parts else np.zeros((0, dim), np.float32)
        return deep, rad

    def extract_paths(
        self,
        paths: Sequence[str | Path],
        *,
        size: int = 512,
        cache: FeatureCache | None = None,
        progress: Progress | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(deep, radiomics, lung_fraction (N,)) of image files (PNG/JPEG/TIFF, see
        preprocess.load_image_file), prepared at `size`, through `cache` when given."""

        n = len(paths)
        items: list[CachedFeatures | None] = [None] * n
        keys: list[str | None] = [None] * n
        if cache is not None:
            for i, p in enumerate(paths):
                keys[i] = self.cache_key(source=file_sha256(p), size=size)
                items[i] = cache.get(keys[i])
        todo = [i for i in range(n) if items[i] is None]
        done = n - len(todo)
        if progress and done:
            progress(done, n)
        for start in range(0, len(todo), self.batch_size):
            idx = todo[start : start + self.batch_size]
            prepared = []
            for i in idx:
                pixels, windowed = load_image_file(paths[i])
                prepared.append(prepare_slice(pixels, is_windowed=windowed, size=size))
            deep, rad = self.extract(prepared)
            for j, i in enumerate(idx):
                items[i] = CachedFeatures(
                    deep=deep[j],
                    rad=rad[j],
                    lung_fraction=prepared[j].lung_fraction,
                    mask_fallback=prepared[j].mask_fallback,
                )
                if cache is not None:
                    cache.put(keys[i], items[i])
            done += len(idx)
            if progress:
                progress(done, n)
        dim = int(getattr(self.backbone, "out_dim", 0))
        deep = np.vstack([it.deep for it in items]) if n else np.zeros((0, dim), np.float32)
        rad = (
            np.vstack([it.rad for it in items])
            if n
            else np.zeros((0, len(self.radiomics.feature_names)), np.float64)
        )
        frac = np.array([it.lung_fraction for it in items], dtype=np.float64)
        return deep.astype(np.float32), rad.astype(np.float64), frac

    def cache_key(self, *, source: str, size: int) -> str:
        """Cache key of an image identity `source` under this extractor's configuration."""
        return FeatureCache.key(
            source=source,
            backbone_name=str(getattr(self.backbone, "name", type(self.backbone).__name__)),
            weights_sha256=str(
                getattr(self.backbone, "fine_tuned_sha256", "")
                or getattr(self.backbone, "weights_sha256", "")
            ),
            params_sha256=self.radiomics.params_sha256,
            size=size,
            input_size=self.input_size,
        )
