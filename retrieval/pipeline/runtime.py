"""Per-process access to the engine: the loaded `RetrievalModel` of a model version, the image
size it works at, and slice pixels as arrays.

Loading a model (backbone weights, radiomics extractor) takes seconds, so each worker process
keeps the models it has loaded, keyed by model version id.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
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


def model_warm_up() -> bool:
    """Load the active model version into this process (a worker process calls it in a thread
    when it starts), so that the first study after a start does not wait for torch, the
    backbone weights and the radiomics extractor (several seconds). A task that needs the
    model meanwhile waits for this load instead of starting its own. True when a model was
    loaded; failures are logged, never raised (the task would report them)."""
    import logging

    from retrieval.selectors import model_version_active

    try:
        version = model_version_active()
        if version is None:
            return False
        model_load(model_version=version)
        return True
    except Exception:
        logging.getLogger(__name__).exception("model warm-up failed")
        return False


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


def model_fov_mm(model) -> float | None:
    """Physical field of view (mm) the model's DICOM slices are resampled to before
    preparation (config `fov_mm`, recorded at training from `ILDREVIEW_FOV_MM`); None for
    models trained without it, whose slices are resized whole (`engine.geometry`)."""
    config = getattr(model, "config", None) or {}
    value = config.get("fov_mm")
    return float(value) if value else None


def _series_spacing(slice_obj: Slice) -> tuple[float, float] | None:
    series = slice_obj.series
    if series.pixel_spacing_row and series.pixel_spacing_col:
        return (float(series.pixel_spacing_row), float(series.pixel_spacing_col))
    return None


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


# Prepared slices of this process, most recently used last. The prepare stage segments every
# slice; the embed stage (when it has embeddings left to compute) and the CAM jobs of the same
# study need the same slices again, and loading + k-means segmentation is about 35 ms a slice.
_prepared_lock = threading.Lock()
_prepared: OrderedDict[tuple, object] = OrderedDict()
_prepared_stats = {"hits": 0, "misses": 0}


def _prepared_key(slice_obj: Slice, size: int, fov_mm: float | None = None) -> tuple:
    # A slice's pixels are written once, at upload. The file's path, size and modification
    # time still go into the key, so that a row id and file name used again (another media
    # folder, a database restored or rolled back) never gets another slice's pixels.
    name = slice_obj.pixels.name
    try:
        path = slice_obj.pixels.storage.path(name)
        stat = os.stat(path)
        where: tuple = (path, stat.st_size, stat.st_mtime_ns)
    except (NotImplementedError, OSError):
        where = (name,)  # not a local file (object storage): the name is all we have
    return (slice_obj.pk, *where, bool(slice_obj.is_windowed), int(size), fov_mm or None)


def slice_prepare(*, slice_obj: Slice, size: int, fov_mm: float | None = None):
    """Engine `PreparedSlice` (windowed image, lung mask, lung fraction) of a stored slice,
    from this process's cache when it prepared the slice recently (arrays are read-only).
    With `fov_mm` (the model's, `model_fov_mm`) a slice whose series has a pixel spacing is
    resampled to that physical field of view first."""
    from retrieval.engine.preprocess import prepare_slice

    limit = int(settings.ILDREVIEW_PREPARED_CACHE_SLICES)
    key = _prepared_key(slice_obj, size, fov_mm)
    with _prepared_lock:
        cached = _prepared.get(key)
        if cached is not None:
            _prepared.move_to_end(key)
            _prepared_stats["hits"] += 1
            return cached
        _prepared_stats["misses"] += 1
    px = slice_pixels_load(slice_obj=slice_obj)
    spacing = _series_spacing(slice_obj) if fov_mm and not px.is_windowed else None
    prepared = prepare_slice(
        px.pixels, is_windowed=px.is_windowed, size=size, pixel_spacing=spacing, fov_mm=fov_mm
    )
    if limit > 0:
        # Shared between callers: nobody may change it in place.
        prepared.image.setflags(write=False)
        prepared.mask.setflags(write=False)
        with _prepared_lock:
            _prepared[key] = prepared
            while len(_prepared) > limit:
                _prepared.popitem(last=False)
    return prepared


def prepared_cache_stats() -> dict[str, int]:
    """Hits, misses and size of this process's prepared-slice cache (tests, benchmarks)."""
    with _prepared_lock:
        return {**_prepared_stats, "size": len(_prepared)}


def prepared_cache_clear() -> None:
    with _prepared_lock:
        _prepared.clear()
        _prepared_stats.update(hits=0, misses=0)


def worker_serves_queue(queue: str) -> bool:
    """Whether this process consumes `queue`: always in eager mode (every task runs here);
    in a worker, whether `queue` is among those it was started with (`-Q`)."""
    if settings.CELERY_TASK_ALWAYS_EAGER:
        return True
    from celery import current_app

    return queue in (current_app.amqp.queues.consume_from or {})


def vector_to_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def vector_from_bytes(data: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(bytes(data), dtype=np.float32)
