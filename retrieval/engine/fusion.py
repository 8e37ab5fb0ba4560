"""Stage 4: ILD-FFN feature fusion (as in the paper) and single-modality projection heads.

ILD-FFN: the outer product of the deep vector X (p) and the radiomics vector Y (q) is a
1 x p x q "correlation map"; three conv blocks (3x3 conv + BN + ReLU + 2x2 max-pool) with
16/32/64 channels shrink it to ceil(p/8) x ceil(q/8); a 1x1 conv to one channel, flattened, is
the correlation feature R. The concatenation [X, Y, R] is linearly projected to the embedding
(default 128-d) and L2-normalised.

`reduce_deep` (off by default = the paper's variant) optionally projects X linearly to fewer
dimensions *before the outer product only* (X itself is still concatenated), which cuts the
conv cost roughly by p / reduce_deep for CPU training; both variants can be trained and
measured side by side.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # ceil_mode keeps odd sizes (q = 102 -> 51 -> 26 -> 13) and never reaches 0
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),
    )


class ILDFFN(nn.Module):
    """ILD feature-fusion network. forward(x (B, deep_dim), y (B, rad_dim)) -> (B, embed_dim),
    L2-normalised. `init_kwargs` records the constructor arguments (for artefacts)."""

    def __init__(
        self, deep_dim: int, rad_dim: int, embed_dim: int = 128, *, reduce_deep: int | None = None
    ):
        super().__init__()
        self.init_kwargs = {
            "deep_dim": int(deep_dim),
            "rad_dim": int(rad_dim),
            "embed_dim": int(embed_dim),
            "reduce_deep": None if reduce_deep is None else int(reduce_deep),
        }
        self.deep_dim, self.rad_dim, self.embed_dim = int(deep_dim), int(rad_dim), int(embed_dim)
        p = self.deep_dim
        self.reduce = None
        if reduce_deep:
            self.reduce = nn.Linear(self.deep_dim, int(reduce_deep))
            p = int(reduce_deep)
        self.blocks = nn.Sequential(_conv_block(1, 16), _conv_block(16, 32), _conv_block(32, 64))
        self.to_r = nn.Conv2d(64, 1, kernel_size=1)
        self.r_dim = _pooled(p) * _pooled(self.rad_dim)
        self.project = nn.Linear(self.deep_dim + self.rad_dim + self.r_dim, self.embed_dim)

    def correlation(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """R (B, r_dim): the conv-reduced outer-product map."""
        xr = self.reduce(x) if self.reduce is not None else x
        outer = xr.unsqueeze(2) * y.unsqueeze(1)  # (B, p, q)
        return self.to_r(self.blocks(outer.unsqueeze(1))).flatten(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.deep_dim or y.shape[-1] != self.rad_dim:
            raise ValueError(
                f"ILDFFN expects deep {self.deep_dim} and radiomics {self.rad_dim} features, "
                f"got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        r = self.correlation(x, y)
        z = self.project(torch.cat([x, y, r], dim=1))
        return nn.functional.normalize(z, dim=1)


def _pooled(n: int) -> int:
    """Length after three ceil-mode 2x2 poolings: ceil(n / 8)."""
    for _ in range(3):
        n = math.ceil(n / 2)
    return n


class ProjectionHead(nn.Module):
    """Single-modality head for the ablation's "+contrastive" rows: linear projection to the
    embedding (optionally through a hidden ReLU layer), L2-normalised."""

    def __init__(self, in_dim: int, embed_dim: int = 128, *, hidden: int | None = None):
        super().__init__()
        self.init_kwargs = {
            "in_dim": int(in_dim),
            "embed_dim": int(embed_dim),
            "hidden": None if hidden is None else int(hidden),
        }
        self.in_dim, self.embed_dim = int(in_dim), int(embed_dim)
        if hidden:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embed_dim)
            )
        else:
            self.net = nn.Linear(in_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects {self.in_dim} features, got {x.shape}")
        return nn.functional.normalize(self.net(x), dim=1)


class AdaptiveEmbedding(nn.Module):
    """The headline embedding: frozen vector kept, learned and radiomics parts gated.

    forward(x (B, deep_dim), y (B, rad_dim)) -> L2-normalised concat of
    - `alpha * l2(T(x))`, T the fitted transform of the frozen vector: "raw" (identity, i.e.
      deep_only), "centre" (minus the library mean) or "whiten" (centred, projected on the
      top `whiten_dim` principal axes and scaled by 1/sqrt(eigenvalue + shrinkage));
    - `(1 - alpha) * head(x)` when a learned `ProjectionHead` is present (alpha = 1: none);
    - `w_rad * l2(y)` (standardised radiomics; w_rad = 0: radiomics switched off).
    Each part is unit-norm before weighting, so the cosine of two embeddings is the weighted
    sum alpha^2 cos_T + (1-alpha)^2 cos_head + w_rad^2 cos_rad (over a constant): the frozen
    neighbourhoods are kept in proportion to alpha. alpha = 1, w_rad = 0, transform "raw" is
    exactly the frozen deep_only embedding. The weights are chosen on inner validation
    (`selection.py`); `mean` and `proj` are buffers, so artefacts save and load them.
    """

    def __init__(
        self,
        deep_dim: int,
        rad_dim: int,
        *,
        transform: str = "raw",
        whiten_dim: int = 0,
        head_dim: int = 0,
        alpha: float = 1.0,
        w_rad: float = 0.0,
    ):
        super().__init__()
        if transform not in ("raw", "centre", "whiten"):
            raise ValueError(f"transform must be raw, centre or whiten, got {transform!r}")
        self.init_kwargs = {
            "deep_dim": int(deep_dim),
            "rad_dim": int(rad_dim),
            "transform": transform,
            "whiten_dim": int(whiten_dim),
            "head_dim": int(head_dim),
            "alpha": float(alpha),
            "w_rad": float(w_rad),
        }
        self.deep_dim, self.rad_dim = int(deep_dim), int(rad_dim)
        self.transform, self.alpha, self.w_rad = transform, float(alpha), float(w_rad)
        self.register_buffer("mean", torch.zeros(self.deep_dim))
        out_dim = int(whiten_dim) if transform == "whiten" else self.deep_dim
        self.register_buffer(
            "proj", torch.zeros(self.deep_dim, out_dim) if transform == "whiten" else None
        )
        self.head = ProjectionHead(self.deep_dim, int(head_dim)) if head_dim else None

    def fit_transform_stats(self, deep: np.ndarray, *, shrinkage: float = 0.1) -> AdaptiveEmbedding:
        """Fit the mean (centre, whiten) and whitening projection on library deep features;
        shrinkage adds `shrinkage` x the mean eigenvalue to every eigenvalue (so the small,
        noisy axes are not blown up)."""
        x = np.asarray(deep, dtype=np.float64)
        mean = x.mean(axis=0)
        if self.transform != "raw":
            self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        if self.transform == "whiten":
            k = self.proj.shape[1]
            _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
            eig = s**2 / max(len(x) - 1, 1)
            k_avail = min(k, len(eig))
            scale = 1.0 / np.sqrt(eig[:k_avail] + shrinkage * eig.mean() + 1e-12)
            proj = np.zeros((self.deep_dim, k))
            proj[:, :k_avail] = vt[:k_avail].T * scale[None, :]
            self.proj.copy_(torch.as_tensor(proj, dtype=torch.float32))
        return self

    def frozen_part(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform == "raw":
            return nn.functional.normalize(x, dim=1)
        z = x - self.mean
        if self.transform == "whiten":
            z = z @ self.proj
        return nn.functional.normalize(z, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.deep_dim or y.shape[-1] != self.rad_dim:
            raise ValueError(
                f"AdaptiveEmbedding expects deep {self.deep_dim} and radiomics {self.rad_dim} "
                f"features, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        parts = [self.alpha * self.frozen_part(x)]
        if self.head is not None:
            parts.append((1.0 - self.alpha) * self.head(x))
        if self.w_rad > 0:
            parts.append(self.w_rad * nn.functional.normalize(y, dim=1))
        return nn.functional.normalize(torch.cat(parts, dim=1), dim=1)


HEADS = {"ILDFFN": ILDFFN, "ProjectionHead": ProjectionHead, "AdaptiveEmbedding": AdaptiveEmbedding}


def head_from_spec(spec: dict) -> nn.Module:
    """Rebuild a head from {"type": class name, "kwargs": init_kwargs} (artefacts)."""
    cls = HEADS[spec["type"]]
    kwargs = dict(spec["kwargs"])
    if cls is AdaptiveEmbedding:
        return AdaptiveEmbedding(kwargs.pop("deep_dim"), kwargs.pop("rad_dim"), **kwargs)
    if cls is ILDFFN:
        return ILDFFN(
            kwargs.pop("deep_dim"), kwargs.pop("rad_dim"), kwargs.pop("embed_dim"), **kwargs
        )
    return ProjectionHead(kwargs.pop("in_dim"), kwargs.pop("embed_dim"), **kwargs)


def head_spec(head: nn.Module) -> dict:
    return {"type": type(head).__name__, "kwargs": dict(head.init_kwargs)}


def head_embed(head: nn.Module, fusion: str, deep, rad) -> np.ndarray:
    """(N, E) float32 embeddings of deep (N, p) and radiomics (N, q) features through `head`
    (set to eval mode, no gradients), fed as `fusion` says: "ildffn" and "adaptive" both, "deep" or
    "radiomics" one of them."""
    # a head may hold only buffers (AdaptiveEmbedding without a learned part)
    tensor = next(iter(head.parameters()), None)
    if tensor is None:
        tensor = next(iter(head.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    head.eval()
    with torch.inference_mode():
        d = torch.as_tensor(np.asarray(deep, np.float32), device=device)
        r = torch.as_tensor(np.asarray(rad, np.float32), device=device)
        if fusion in ("ildffn", "adaptive"):
            out = head(d, r)
        elif fusion == "deep":
            out = head(d)
        else:
            out = head(r)
    return out.float().cpu().numpy()
