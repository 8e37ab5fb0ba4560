"""`evaluate_retrieval --mode finetune`: per fold, the backbone's last blocks fine-tuned on the
train fold (finetune.py), and the fold's deep features replaced by the tuned backbone's.

Prepared slices are cached once per image (`PreparedCache`: uint8 at the fine-tuning input
side, keyed by the file's SHA-256, the slice size, the input side and the preprocessing
version), so the 746 COVID-CT images are windowed, masked and resized once for every run.

Per outer fold `tuned_features` deep-copies the frozen backbone, fine-tunes the copy on the
train rows (its own patient-level inner split picks the best epoch and keeps the frozen
weights when no epoch beats them) and embeds train and held-out rows with it. The frozen
rows of the report keep the frozen features; `finetuned` (top-1) and the headline (the
adaptive selection run on the tuned features) use the tuned ones. Caveat, in the report:
the selection's inner validation rows were seen by the fine-tuning, so its scores for the
learned candidates on top of tuned features are optimistic; the frozen-versus-tuned choice
itself is made by the fine-tuning's own held-out patients.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


class PreparedCache:
    """Folder of `.npy` uint8 prepared slices (one per image and setting)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, *, source: str, size: int, input_size: int) -> Path:
        from retrieval.engine.preprocess import PREPROCESS_VERSION

        key = hashlib.sha256(
            json.dumps([source, int(size), int(input_size), PREPROCESS_VERSION]).encode()
        ).hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def images(
        self, paths: list[Path], *, size: int, input_size: int, progress=None
    ) -> list[np.ndarray]:
        """float32 [0, 1] (input_size, input_size) prepared slices of `paths`."""
        from PIL import Image

        from retrieval.engine.backbones import file_sha256
        from retrieval.engine.preprocess import load_image_file, prepare_slice

        out = []
        for i, path in enumerate(paths):
            target = self._path(source=file_sha256(path), size=size, input_size=input_size)
            if target.exists():
                arr = np.load(target)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # listed by check_images
                    pixels, windowed = load_image_file(path)
                img = prepare_slice(pixels, is_windowed=windowed, size=size).image
                small = Image.fromarray(img, mode="F").resize(
                    (input_size, input_size), Image.BILINEAR
                )
                arr = np.clip(np.rint(np.asarray(small) * 255), 0, 255).astype(np.uint8)
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
                with os.fdopen(fd, "wb") as fh:
                    np.save(fh, arr)
                os.replace(tmp, target)
            out.append(arr.astype(np.float32) / 255.0)
            if progress:
                progress("prepare", i + 1, len(paths))
        return out


def tuned_features(
    frozen_backbone,
    images: list[np.ndarray],
    labels: np.ndarray,
    patients: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    config,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(deep train, deep test, fine-tuning info) of one fold; `config` a FinetuneConfig."""
    from retrieval.engine.finetune import embed_images, finetune_backbone

    backbone = copy.deepcopy(frozen_backbone)
    info = finetune_backbone(
        backbone,
        [images[i] for i in train_idx],
        np.asarray(labels)[train_idx],
        patients=np.asarray(patients)[train_idx],
        config=config,
    )
    tr = embed_images(backbone, [images[i] for i in train_idx], input_size=config.input_size)
    te = embed_images(backbone, [images[i] for i in test_idx], input_size=config.input_size)
    keep = ("epochs_run", "best_epoch", "seconds", "cpu_seconds", "trainable_count")
    return tr, te, {k: info.get(k) for k in keep}
