"""Explanation maps: where in the query slice does its similarity to a retrieved slice come from?

Grad-CAM (the `grad-cam` library, pytorch_grad_cam) with a custom target: the cosine similarity
of the query's embedding to the fixed embedding of the other slice. The network explained is the
whole embedding path, backbone -> GeM -> fusion head, with the query slice's own (standardised)
radiomics vector held fixed, so the map shows which image regions of the query drive the deep
part of the similarity. The target layer is the backbone's last convolutional block
(`backbone.target_layer`).

What a reader sees (`lung_cam_png`): the map restricted to the lung mask (zero outside, so no
colour on the chest wall, mediastinum or air), rescaled to its in-lung maximum, transparent
below `CAM_THRESHOLD` of that maximum, in a perceptually uniform colour map (`CAM_COLORMAP`),
as an RGBA PNG that keeps its alpha so it lies over the slice as shown in any window.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from torch import nn


class SimilarityToEmbeddingTarget:
    """CAM target: cosine similarity of the model output to a fixed reference embedding."""

    def __init__(self, reference: torch.Tensor):
        self.reference = nn.functional.normalize(reference.detach().flatten(), dim=0)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        out = nn.functional.normalize(output.flatten(), dim=0)
        return (out * self.reference.to(out.device)).sum()


class _EmbeddingWithFixedRadiomics(nn.Module):
    """image batch -> embedding, with the radiomics input of the fusion head held constant:
    `rad` is one row for every image, or one row per image of the batch."""

    def __init__(self, backbone: nn.Module, head: nn.Module, rad: torch.Tensor | None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.register_buffer("rad", rad if rad is not None else torch.zeros(0))
        self.uses_rad = rad is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deep = self.backbone(x)
        if self.uses_rad:
            rad = self.rad if self.rad.shape[0] == deep.shape[0] else self.rad[:1]
            return self.head(deep, rad.expand(deep.shape[0], -1))
        return self.head(deep)


def _head_uses_radiomics(model) -> bool:
    # Heads fed (deep, radiomics), as `fusion.head_embed` feeds them.
    return getattr(model, "fusion", "ildffn") in ("ildffn", "adaptive")


def _standardised_radiomics(model, prepared, raw: np.ndarray | None = None) -> torch.Tensor:
    """(1, Cr) standardised radiomics of `prepared`; `raw` gives its raw vector when it was
    computed already (the stored `SliceFeatures.radiomics`)."""
    if raw is None:
        raw = model.radiomics.extract(prepared.image, prepared.mask)
    rad = np.asarray(raw, dtype=np.float64).reshape(1, -1)
    if model.standardizer is not None:
        rad = model.standardizer.transform(rad)
    return torch.as_tensor(np.asarray(rad, dtype=np.float32))


def _detach_as_leaf(_module, _inputs, output):
    # The backward pass of Grad-CAM only needs the gradient at the target layer: making its
    # output a leaf that requires grad builds the graph from there on (GeM + head) instead of
    # through the whole backbone down to the input, which cost most of a CAM's time.
    return output.detach().requires_grad_(True)


def similarity_cams(
    model,
    queries: list,
    others: list,
    *,
    other_embeddings: list[np.ndarray | None] | None = None,
    query_radiomics: list[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """Heat maps (S, S) float32 in [0, 1], one per pair: over `queries[i]` (a PreparedSlice)
    of its embedding's similarity to the embedding of `others[i]`, for a RetrievalModel
    `model`, all pairs in one forward and backward pass. `other_embeddings[i]`, when given, is
    that embedding (computed already: the stored one) and `query_radiomics[i]` the query's raw
    radiomics vector; missing ones are computed here.

    Grad-CAM's own min-max scaling maps each map to [0, 1]; a map with no positive evidence is
    all zeros.
    """
    from retrieval.engine.backbones import images_to_tensor

    n = len(queries)
    if len(others) != n:
        raise ValueError(f"{n} queries but {len(others)} other slices")
    if n == 0:
        return []
    embs = list(other_embeddings or [None] * n)
    raws = list(query_radiomics or [None] * n)
    missing = [i for i in range(n) if embs[i] is None]
    if missing:
        computed = model.embed([others[i] for i in missing])
        for i, vec in zip(missing, computed, strict=True):
            embs[i] = vec
    backbone = model.backbone
    head = model.head
    device = next(backbone.parameters()).device
    rad = None
    if _head_uses_radiomics(model):
        rad = torch.cat(
            [_standardised_radiomics(model, q, r) for q, r in zip(queries, raws, strict=True)]
        )
        rad = rad.to(device)
    wrapper = _EmbeddingWithFixedRadiomics(backbone, head, rad).to(device)
    # Remember the modes of the modules themselves: a fresh wrapper reports training=True, and
    # restoring that would leave the cached model in train mode (BatchNorm on batch statistics,
    # running statistics updated), changing every embedding computed after the first CAM.
    # No parameter needs a gradient (see `_detach_as_leaf`); their flags are put back after.
    modes = [(m, m.training) for m in (backbone, head)]
    requires = [p.requires_grad for p in wrapper.parameters()]
    x = images_to_tensor([q.image for q in queries], size=model.config.get("input_size"))
    x = x.to(device)
    targets = [
        SimilarityToEmbeddingTarget(torch.tensor(np.asarray(e, dtype=np.float32))) for e in embs
    ]
    hook = backbone.target_layer.register_forward_hook(_detach_as_leaf)
    try:
        for p in wrapper.parameters():
            p.requires_grad_(False)
        with (
            torch.enable_grad(),
            GradCAM(model=wrapper, target_layers=[backbone.target_layer]) as cam,
        ):
            heats = cam(input_tensor=x, targets=targets)
    finally:
        hook.remove()
        for module, mode in modes:
            module.train(mode)
        for p, r in zip(wrapper.parameters(), requires, strict=True):
            p.requires_grad_(r)
    out = []
    for query, heat in zip(queries, heats, strict=True):
        heat = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0)
        size = query.image.shape
        if heat.shape != size:
            heat = np.asarray(
                Image.fromarray(heat).resize((size[1], size[0]), Image.BILINEAR),
                dtype=np.float32,
            )
        out.append(np.clip(heat, 0.0, 1.0))
    return out


def similarity_cam(model, query, other) -> np.ndarray:
    """Heat map (S, S) float32 in [0, 1] over `query` (a PreparedSlice) of its embedding's
    similarity to `other`'s embedding (`similarity_cams` of the one pair)."""
    return similarity_cams(model, [query], [other])[0]


CAM_THRESHOLD = 0.3
CAM_COLORMAP = "inferno"
# Opacity of the weakest shown value; it rises to 1 at the maximum (the page's opacity slider
# scales both), so the hottest regions read first.
CAM_MIN_ALPHA = 0.45


def lung_cam(heat01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The heat map restricted to `mask` (0 outside) and rescaled to its in-lung maximum
    (all zeros when the lung holds no positive evidence)."""
    heat = np.clip(np.nan_to_num(np.asarray(heat01, dtype=np.float32)), 0.0, 1.0)
    roi = np.asarray(mask, dtype=bool)
    if roi.shape != heat.shape:
        raise ValueError(f"mask {roi.shape} and heat map {heat.shape} differ in shape")
    inside = np.where(roi, heat, 0.0).astype(np.float32)
    top = float(inside.max()) if inside.size else 0.0
    return inside / top if top > 0 else inside


def lung_cam_rgba(
    heat01: np.ndarray,
    mask: np.ndarray,
    *,
    threshold: float = CAM_THRESHOLD,
    colormap: str = CAM_COLORMAP,
) -> np.ndarray:
    """uint8 (H, W, 4): the lung-bounded map (`lung_cam`) in `colormap`, alpha 0 below
    `threshold` (of the in-lung maximum) and outside the lung."""
    from matplotlib import colormaps

    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    heat = lung_cam(heat01, mask)
    shown = heat >= max(threshold, 1e-6)
    rgba = colormaps[colormap](heat).astype(np.float32)
    ramp = (heat - threshold) / max(1.0 - threshold, 1e-6)
    rgba[..., 3] = np.where(shown, CAM_MIN_ALPHA + (1.0 - CAM_MIN_ALPHA) * np.clip(ramp, 0, 1), 0)
    return (np.clip(rgba, 0.0, 1.0) * 255).round().astype(np.uint8)


def lung_cam_png(heat01: np.ndarray, mask: np.ndarray, **kwargs) -> bytes:
    """PNG bytes (RGBA, alpha kept) of `lung_cam_rgba`."""
    buf = io.BytesIO()
    # Fastest zlib level: a third of the default level's encoding time for a few percent more
    # bytes (the overlay is mostly transparent runs either way).
    Image.fromarray(lung_cam_rgba(heat01, mask, **kwargs), mode="RGBA").save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()


def overlay_png(image01: np.ndarray, heat01: np.ndarray, *, alpha: float = 0.4) -> bytes:
    """PNG bytes of the grey slice with the heat map blended on top in the 'jet' colour map
    (the engine's evaluation report; the review page shows `lung_cam_png`)."""
    from matplotlib import colormaps

    image = np.clip(np.asarray(image01, dtype=np.float32), 0.0, 1.0)
    heat = np.clip(np.asarray(heat01, dtype=np.float32), 0.0, 1.0)
    if heat.shape != image.shape:
        raise ValueError(f"heat map {heat.shape} and image {image.shape} differ in shape")
    rgb = np.repeat(image[..., None], 3, axis=2)
    colour = colormaps["jet"](heat)[..., :3].astype(np.float32)
    blended = (1.0 - alpha) * rgb + alpha * colour
    out = Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8), mode="RGB")
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()
