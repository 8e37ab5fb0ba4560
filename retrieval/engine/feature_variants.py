"""Variants of the frozen deep vector, for studying them beside the served one (Django-free).

The served vector is `Backbone(x)`: GeM of the trunk's last feature map. This module computes,
from the same frozen backbone and the same input tensor (`backbones.images_to_tensor`):

- `level_maps` / `extract_views`: the GeM vectors of the last `levels` levels of the trunk (the
  outputs of its last stages, the deepest being exactly what `Backbone(x)` pools), for the image
  and optionally its horizontal mirror, in one batched forward pass;
- `flip_mean`: horizontal-flip test-time augmentation, the mean of the L2-normalised vectors of
  an image and of its mirror (left and right lungs swap sides; the diagnosis does not);
- `concat_normalised`: blocks L2-normalised one by one, then concatenated, so each block (a
  level, a backbone) weighs the same in a cosine similarity whatever its dimension.

Levels of an EfficientNet-Lite trunk, deepest last: ..., stage 6 (192-d on Lite0), stage 7
(320-d), head (conv_head + BN + ReLU6, 1280-d: the served vector); of a ResNet-50:
layer2, layer3, layer4 (the served vector). A stage's output that ends in a linear projection
(EfficientNet's inverted residual blocks) holds negative values; GeM clamps them to its eps,
as it does for the served vector, so only the positive part of such a level is pooled.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from retrieval.engine.backbones import images_to_tensor


def _is_stage_container(module: nn.Module) -> bool:
    """timm's `blocks`: a Sequential whose children are the stages (Sequentials of blocks)."""
    children = list(module.children())
    return (
        isinstance(module, nn.Sequential)
        and bool(children)
        and all(isinstance(c, nn.Sequential) for c in children)
    )


def level_maps(features: nn.Module, x: torch.Tensor, *, levels: int = 1) -> list[torch.Tensor]:
    """Feature maps (B, C, H, W) of the last `levels` levels of the trunk `features` (a
    `Backbone.features` Sequential), shallow to deep; the last is `features(x)` itself.

    A level is the output of a stage (a Sequential child of the trunk, or a child of timm's
    container of stages) or, when layers follow the last stage (EfficientNet's head), the
    trunk's output."""
    if levels < 1:
        raise ValueError("levels must be >= 1")
    outputs: list[torch.Tensor] = []
    out_is_stage = False
    for child in features:
        if _is_stage_container(child):
            for stage in child:
                x = stage(x)
                outputs.append(x)
            out_is_stage = True
        else:
            x = child(x)
            out_is_stage = isinstance(child, nn.Sequential)
            if out_is_stage:
                outputs.append(x)
    if not out_is_stage:
        outputs.append(x)  # the head after the last stage
    if levels > len(outputs):
        raise ValueError(f"the trunk has {len(outputs)} levels, {levels} asked")
    return outputs[-levels:]


def extract_views(
    backbone: nn.Module,
    images01: Sequence[np.ndarray],
    *,
    levels: int = 1,
    flip: bool = False,
    input_size: int | None = None,
    batch_size: int = 8,
) -> dict[str, list[np.ndarray]]:
    """GeM vectors (not normalised) of windowed [0, 1] slices through a frozen `Backbone`:
    {"orig": [(N, C_l) float32 per level, shallow to deep], "flip": [...] when `flip`}.
    `orig[-1]` is what `Backbone(x)` returns (the served vector) for the same input tensor;
    `input_size` resizes as `FeatureExtractor(input_size=...)` does."""
    device = next(backbone.parameters()).device
    views = ("orig", "flip") if flip else ("orig",)
    parts: dict[str, list[list[np.ndarray]]] = {v: [[] for _ in range(levels)] for v in views}
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(images01), batch_size):
                chunk = list(images01[start : start + batch_size])
                x = images_to_tensor(chunk, size=input_size).to(device)
                if flip:  # one batch holds image and mirror: one pass, same cost per image
                    x = torch.cat([x, torch.flip(x, dims=(-1,))])
                maps = level_maps(backbone.features, x, levels=levels)
                n = len(chunk)
                for lev, fmap in enumerate(maps):
                    vec = backbone.gem(fmap).float().cpu().numpy()
                    parts["orig"][lev].append(vec[:n])
                    if flip:
                        parts["flip"][lev].append(vec[n:])
    finally:
        backbone.train(was_training)
    return {
        v: [np.vstack(p).astype(np.float32) for p in parts[v]] if images01 else [] for v in views
    }


def l2(x: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (float32; zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def flip_mean(vectors: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """Horizontal-flip TTA: mean of the L2-normalised vectors of the images and of their
    mirrors, row by row (not renormalised; cosine retrieval normalises)."""
    vectors, flipped = np.asarray(vectors), np.asarray(flipped)
    if vectors.shape != flipped.shape:
        raise ValueError(f"shapes differ: {vectors.shape} and {flipped.shape}")
    return (l2(vectors) + l2(flipped)) / 2.0


def concat_normalised(*blocks: np.ndarray) -> np.ndarray:
    """Blocks (N, C_i) each L2-normalised per row, then concatenated: (N, sum C_i)."""
    if not blocks:
        raise ValueError("no blocks")
    rows = {len(b) for b in blocks}
    if len(rows) != 1:
        raise ValueError(f"blocks differ in rows: {sorted(rows)}")
    return np.hstack([l2(b) for b in blocks])
