"""Stage 5: contrastive training of the fusion head (or single-modality heads) and
patient-level splits.

Two modes:
- head-only (default): frozen-backbone deep features and standardised radiomics are computed
  once (and cached, see features.py); only the head is trained — minutes on 2 CPU cores;
- end-to-end: backbone + head fine-tuned together on the prepared slices (GPU workers).

Batches: `batch_size` anchors (default 8, the paper's). Each anchor gets partners drawn from the
*whole training set* — one positive of its class and one negative of each other class — and the
batch that goes through the head is anchors + partners, so every anchor has both (see
losses.py). The same enlarged batch feeds SupCon. Adam (lr 1e-4, weight decay 1e-6). Seeded:
the same inputs and config give the same head.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from retrieval.engine.fusion import ILDFFN, ProjectionHead
from retrieval.engine.losses import PaperContrastiveLoss, SupConLoss

FUSIONS = ("ildffn", "deep", "radiomics")
LOSSES = ("paper", "supcon")
MODES = ("head", "end_to_end")

Progress = Callable[[int, int], None]  # (epochs done, epochs total)


@dataclass
class TrainConfig:
    """Training hyper-parameters (defaults: the paper's)."""

    loss: str = "paper"  # "paper" | "supcon"
    margin: float = 0.7
    temperature: float = 0.1
    lr: float = 1e-4
    weight_decay: float = 1e-6
    batch_size: int = 8
    epochs: int = 20
    embed_dim: int = 128
    mode: str = "head"  # "head" | "end_to_end"
    seed: int = 0
    fusion: str = "ildffn"  # "ildffn" | "deep" | "radiomics"
    reduce_deep: int | None = None  # ILD-FFN: linear reduction of X before the outer product
    device: str | None = None  # None: CUDA when available
    input_size: int | None = None  # end-to-end: backbone input side (None: slice size)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")


def make_head(config: TrainConfig, *, deep_dim: int, rad_dim: int) -> nn.Module:
    """The head selected by `config.fusion`."""
    if config.fusion == "ildffn":
        return ILDFFN(deep_dim, rad_dim, config.embed_dim, reduce_deep=config.reduce_deep)
    if config.fusion == "deep":
        return ProjectionHead(deep_dim, config.embed_dim)
    return ProjectionHead(rad_dim, config.embed_dim)


def _loss(config: TrainConfig) -> nn.Module:
    if config.loss == "paper":
        return PaperContrastiveLoss(margin=config.margin, seed=config.seed)
    return SupConLoss(temperature=config.temperature)


def _device(config: TrainConfig) -> torch.device:
    return torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def sample_partners(
    labels: np.ndarray, anchors: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each anchor index: one positive (same class, another sample when the class has
    one; else itself) and one negative per other class, from all of `labels`.

    Returns (positives (B,), negatives (B, C-1), negative_ok (B, C-1)); negatives of classes
    that do not exist for an anchor are masked (never, with fixed classes; kept for safety).
    """
    classes = np.unique(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    b = len(anchors)
    pos = np.empty(b, dtype=np.int64)
    neg = np.zeros((b, len(classes) - 1), dtype=np.int64)
    ok = np.zeros_like(neg, dtype=bool)
    for i, a in enumerate(anchors):
        own = by_class[labels[a]]
        pool = own[own != a]
        pos[i] = rng.choice(pool) if len(pool) else a
        for j, c in enumerate(c for c in classes if c != labels[a]):
            neg[i, j] = rng.choice(by_class[c])
            ok[i, j] = True
    return pos, neg, ok


def _batch_loss(
    emb_of: Callable[[np.ndarray], torch.Tensor],
    *,
    loss_fn: nn.Module,
    labels: np.ndarray,
    anchors: np.ndarray,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Embed anchors + their sampled partners in one forward pass and compute the loss."""
    pos, neg, ok = sample_partners(labels, anchors, rng)
    union, inverse = np.unique(np.concatenate([anchors, pos, neg.ravel()]), return_inverse=True)
    emb = emb_of(union)
    b = len(anchors)
    ia = torch.as_tensor(inverse[:b], device=emb.device)
    ip = torch.as_tensor(inverse[b : 2 * b], device=emb.device)
    ineg = torch.as_tensor(inverse[2 * b :].reshape(neg.shape), device=emb.device)
    if isinstance(loss_fn, PaperContrastiveLoss):
        return loss_fn.pair_loss(
            emb[ia], emb[ip], emb[ineg], negative_mask=torch.as_tensor(ok, device=emb.device)
        )
    y = torch.as_tensor(labels[union], device=emb.device)
    return loss_fn(emb, y)


def _check_inputs(deep, rad, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    deep = np.asarray(deep, dtype=np.float32)
    rad = np.asarray(rad, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    if deep.ndim != 2 or rad.ndim != 2 or deep.shape[0] != n or rad.shape[0] != n:
        raise ValueError(
            f"deep {deep.shape}, radiomics {rad.shape} and labels ({n},) must have the same "
            "number of rows"
        )
    if len(np.unique(labels)) < 2:
        raise ValueError("contrastive training needs at least two classes")
    if not (np.isfinite(deep).all() and np.isfinite(rad).all()):
        raise ValueError("features contain NaN or inf")
    return deep, rad, labels


def train_head(
    *,
    deep: np.ndarray,
    rad: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> tuple[nn.Module, dict]:
    """Train the head selected by `config.fusion` on cached features (radiomics already
    standardised). Returns (head in eval mode, metrics) — metrics: loss per epoch, seconds,
    sizes."""
    config.validate()
    deep, rad, labels = _check_inputs(deep, rad, labels)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = _device(config)
    head = make_head(config, deep_dim=deep.shape[1], rad_dim=rad.shape[1]).to(device)
    d_all = torch.as_tensor(deep, device=device)
    r_all = torch.as_tensor(rad, device=device)

    def emb_of(idx: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(idx, device=device)
        if config.fusion == "ildffn":
            return head(d_all[t], r_all[t])
        return head(d_all[t] if config.fusion == "deep" else r_all[t])

    history = _run_epochs(
        [head], emb_of=emb_of, labels=labels, config=config, rng=rng, progress=progress
    )
    return head.eval(), history


def _run_epochs(
    modules: list[nn.Module],
    *,
    emb_of: Callable[[np.ndarray], torch.Tensor],
    labels: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: Progress | None,
) -> dict:
    """Train all parameters of `modules` (Adam, the config's loss) for `config.epochs` epochs
    of anchor batches; returns the metrics (loss per epoch, seconds, sizes)."""
    loss_fn = _loss(config)
    opt = torch.optim.Adam(
        [p for m in modules for p in m.parameters()],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    n = len(labels)
    t0 = time.perf_counter()
    losses: list[float] = []
    for epoch in range(config.epochs):
        for m in modules:
            m.train()
        order = rng.permutation(n)
        total, batches = 0.0, 0
        for start in range(0, n, config.batch_size):
            anchors = order[start : start + config.batch_size]
            loss = _batch_loss(emb_of, loss_fn=loss_fn, labels=labels, anchors=anchors, rng=rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
        if progress:
            progress(epoch + 1, config.epochs)
    return {
        "loss_history": losses,
        "final_loss": losses[-1] if losses else None,
        "epochs": config.epochs,
        "n_train": int(n),
        "n_classes": int(len(np.unique(labels))),
        "train_seconds": round(time.perf_counter() - t0, 3),
        "fusion": config.fusion,
        "loss": config.loss,
        "mode": config.mode,
    }


def train_end_to_end(
    *,
    backbone: nn.Module,
    slices: list,
    rad: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    progress: Progress | None = None,
) -> tuple[nn.Module, dict]:
    """Fine-tune `backbone` (in place; marked `fine_tuned`) and a new head together on
    PreparedSlice images + standardised radiomics. For GPU workers; runs (slowly) on CPU.

    Returns (head in eval mode, metrics); the backbone is left in eval mode on the device.
    """
    from retrieval.engine.backbones import images_to_tensor

    config.validate()
    deep_dim = int(backbone.out_dim)
    dummy = np.zeros((len(slices), deep_dim), np.float32)
    _, rad, labels = _check_inputs(dummy, rad, labels)
    if config.fusion == "radiomics":  # no image path to fine-tune
        head, metrics = train_head(deep=dummy, rad=rad, labels=labels, config=config)
        return head, {**metrics, "mode": "end_to_end", "note": "radiomics-only: head only"}
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = _device(config)
    backbone.to(device)
    for p in backbone.parameters():
        p.requires_grad_(True)
    head = make_head(config, deep_dim=deep_dim, rad_dim=rad.shape[1]).to(device)
    r_all = torch.as_tensor(rad, device=device)

    def emb_of(idx: np.ndarray) -> torch.Tensor:
        x = images_to_tensor([slices[i].image for i in idx], size=config.input_size).to(device)
        deep = backbone(x)
        if config.fusion == "ildffn":
            return head(deep, r_all[torch.as_tensor(idx, device=device)])
        return head(deep)

    metrics = _run_epochs(
        [backbone, head], emb_of=emb_of, labels=labels, config=config, rng=rng, progress=progress
    )
    from retrieval.engine.backbones import state_sha256

    backbone.eval()
    backbone.fine_tuned = True
    # weights_sha256 keeps naming the starting weights (provenance); caches key on this one
    backbone.fine_tuned_sha256 = state_sha256(backbone.state_dict())
    return head.eval(), metrics


def patient_kfold(patient_ids, labels, *, folds: int, seed: int = 0) -> list[tuple]:
    """Patient-level stratified k-fold: list of (train_idx, test_idx) int arrays; a patient's
    samples are always on one side (sklearn StratifiedGroupKFold, shuffled under `seed`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    patients = np.asarray(patient_ids)
    y = np.asarray(labels)
    if len(patients) != len(y):
        raise ValueError("patient_ids and labels differ in length")
    if folds < 2:
        raise ValueError("patient_kfold needs folds >= 2")
    n_patients = len(np.unique(patients))
    if n_patients < folds:
        raise ValueError(f"{n_patients} patients cannot be split into {folds} folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    x = np.zeros(len(y))
    return [(tr.astype(np.int64), te.astype(np.int64)) for tr, te in splitter.split(x, y, patients)]
