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


HEADS = {"ILDFFN": ILDFFN, "ProjectionHead": ProjectionHead}


def head_from_spec(spec: dict) -> nn.Module:
    """Rebuild a head from {"type": class name, "kwargs": init_kwargs} (artefacts)."""
    cls = HEADS[spec["type"]]
    kwargs = dict(spec["kwargs"])
    if cls is ILDFFN:
        return ILDFFN(
            kwargs.pop("deep_dim"), kwargs.pop("rad_dim"), kwargs.pop("embed_dim"), **kwargs
        )
    return ProjectionHead(kwargs.pop("in_dim"), kwargs.pop("embed_dim"), **kwargs)


def head_spec(head: nn.Module) -> dict:
    return {"type": type(head).__name__, "kwargs": dict(head.init_kwargs)}


def head_embed(head: nn.Module, fusion: str, deep, rad) -> np.ndarray:
    """(N, E) float32 embeddings of deep (N, p) and radiomics (N, q) features through `head`
    (set to eval mode, no gradients), fed as `fusion` says: "ildffn" both, "deep" or
    "radiomics" one of them."""
    device = next(head.parameters()).device
    head.eval()
    with torch.inference_mode():
        d = torch.as_tensor(np.asarray(deep, np.float32), device=device)
        r = torch.as_tensor(np.asarray(rad, np.float32), device=device)
        if fusion == "ildffn":
            out = head(d, r)
        elif fusion == "deep":
            out = head(d)
        else:
            out = head(r)
    return out.float().cpu().numpy()
