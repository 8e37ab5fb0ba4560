"""Per-process access to the engine: the loaded `RetrievalModel` of a model version, the image
size it works at, and slice pixels as arrays.

Loading a model (backbone weights, radiomics extractor) takes seconds, so each worker process
keeps the models it has loaded, keyed by model version id.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from cases.models import Slice
from retrieval.models import ModelVersion

_lock = threading.Lock()
_models: dict[tuple[int, str], object] = {}


class PipelineDataError(ValueError):
    """The study or slice cannot be processed (bad or missing data); not worth retrying."""


def model_artefact_dir(model_version: ModelVersion) -> Path:
    """The artefact folder of a version; relative paths are under ILDREVIEW_MODEL_DIR."""
    path = Path(model_version.artefact_dir)
    if not path.is_absolute():
        path = Path(settings.ILDREVIEW_MODEL_DIR) / path
    return path


def torch_threads_configure() -> None:
    """Apply ILDREVIEW_TORCH_THREADS (once per process; 0 leaves torch's default)."""
    global _threads_set
    if _threads_set:
        return
    threads = settings.ILDREVIEW_TORCH_THREADS
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    _threads_set = True


_threads_set = False


def model_load(*, model_version: ModelVersion):
    """The engine `RetrievalModel` of `model_version`, loaded once per process (CUDA when the
    worker has it)."""
    torch_threads_configure()
    with _lock:
        key = (model_version.pk, model_version.artefact_dir)
        model = _models.get(key)
        if model is None:
            from retrieval.engine.artefact import RetrievalModel

            path = model_artefact_dir(model_version)
            if not path.exists():
                raise PipelineDataError(
                    f"model version {model_version.name!r}: artefact folder {path} is missing"
                )
            model = RetrievalModel.load(
                path, device=_device(), imagenet_file=settings.ILDREVIEW_RESNET50_WEIGHTS
            )
            _models[key] = model
        return model


def model_cache_clear() -> None:
    """Forget loaded models (tests; after an artefact folder was rewritten)."""
    with _lock:
        _models.clear()


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_image_size(model) -> int:
    """Side length (pixels) the model's slices are prepared at (config `size`, default 512)."""
    config = getattr(model, "config", None) or {}
    return int(config.get("size") or config.get("image_size") or 512)


@dataclass
class SlicePixels:
    """The stored pixels of one slice and whether they are already windowed (8-bit)."""

    pixels: np.ndarray
    is_windowed: bool


def slice_pixels_load(*, slice_obj: Slice) -> SlicePixels:
    """Read a slice's `.npy` pixels from media storage; a clear error naming the file."""
    name = slice_obj.pixels.name
    try:
        with slice_obj.pixels.open("rb") as fh:
            array = np.load(fh, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PipelineDataError(f"slice {slice_obj.pk}: cannot read pixels {name}: {exc}") from exc
    if array.ndim != 2 or array.size == 0:
        raise PipelineDataError(
            f"slice {slice_obj.pk}: pixels {name} have shape {array.shape}, expected 2-D"
        )
    return SlicePixels(pixels=array, is_windowed=bool(slice_obj.is_windowed))


def slice_prepare(*, slice_obj: Slice, size: int):
    """Engine `PreparedSlice` (windowed image, lung mask, lung fraction) of a stored slice."""
    from retrieval.engine.preprocess import prepare_slice

    px = slice_pixels_load(slice_obj=slice_obj)
    return prepare_slice(px.pixels, is_windowed=px.is_windowed, size=size)


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def vector_from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float32)
