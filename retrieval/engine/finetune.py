"""Partial fine-tuning of a backbone on CPU: the last `blocks` blocks of the trunk (and the
head conv/BN after them) adapt to CT, so the retrieval embedding itself changes.

`finetune_backbone(backbone, images, labels, patients=..., config=...)` trains in place:

- the trunk is split (`backbones.trunk_parts`) into a frozen front (stem + early blocks) and a
  trainable tail (last `blocks` blocks + head conv/BN). Only tail parameters get gradients; the
  front runs in eval mode (BatchNorm statistics untouched) under `torch.no_grad`, so backward
  passes cost only the tail. GeM's exponent stays fixed: the pooled vector is what retrieval
  compares, and the front/tail split should be the only thing that moves;
- augmentation on the [0, 1] slices, per sample: left-right flip, rotation within +-10
  degrees, scale 0.9-1.1 (zero padding: air outside the body is black in a lung window), and
  a window jitter (width x0.9-1.1 around mid-grey, level +-0.05; for HU slices this is a
  jitter of the lung window), clipped back to [0, 1];
- loss (`loss`): "ce" — cross-entropy of a cosine classifier (scale 16) on the L2-normalised
  GeM vector, its class weights initialised at the frozen class means; "supcon" — supervised
  contrastive loss (temperature 0.1) on the same normalised vectors within a batch; "ce+supcon"
  (default) — their sum. Both act on the vector that cosine retrieval uses, no projection;
- AdamW, cosine learning-rate decay over the planned epochs;
- model selection: a patient-level inner split (`val_fraction` of the patients, stratified)
  is held out; after every epoch (and before the first, i.e. the frozen backbone) the
  validation slices query the training slices by cosine similarity and the score is the
  class-balanced precision@10 (`retrieval_score`; top-1 macro F1 is recorded beside it).
  The best state is kept — the frozen one when no epoch beats it — and training stops after
  `patience` epochs without improvement. Un-augmented front activations are computed once,
  so each evaluation runs only the tail.

`embed_images` gives the (N, D) GeM features of the (fine-tuned) backbone, as
`FeatureExtractor.deep` does. Django-free.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from retrieval.engine.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    images_to_tensor,
    state_sha256,
    trunk_parts,
)
from retrieval.engine.losses import SupConLoss

LOSSES = ("ce", "supcon", "ce+supcon")
COSINE_SCALE = 16.0  # logit scale of the cosine classifier (a temperature of 1/16)
SCORE_K = 10

Progress = Callable[[int, int], None]  # (epochs done, epochs planned)


@dataclass
class FinetuneConfig:
    """Fine-tuning hyper-parameters. `input_size` is the backbone's input side (224-320 are
    the sizes this is meant for; smaller ones are accepted for quick runs)."""

    input_size: int = 224
    blocks: int = 2  # last N blocks of the trunk unfrozen (+ the head conv/BN after them)
    epochs: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    patience: int = 2  # epochs without a better validation score before stopping
    val_fraction: float = 0.2  # share of patients held out for model selection (0: none)
    seed: int = 0
    augment: bool = True
    loss: str = "ce+supcon"  # "ce" | "supcon" | "ce+supcon"
    temperature: float = 0.1  # SupCon
    device: str | None = None  # None: the backbone's device

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be >= 32, got {self.input_size}")
        if self.blocks < 1 or self.epochs < 0 or self.batch_size < 2 or self.patience < 1:
            raise ValueError("need blocks >= 1, epochs >= 0, batch_size >= 2, patience >= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


# --- data --------------------------------------------------------------------------------------


def inner_patient_split(
    labels: np.ndarray, patients: Sequence, *, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): about `val_fraction` of the patients (stratified by class) held
    out; a patient's slices are all on one side. Raises ValueError with too few patients."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = max(2, round(1.0 / val_fraction))
    groups = np.asarray(patients)
    if len(np.unique(groups)) < n_splits:
        raise ValueError(
            f"val_fraction {val_fraction} needs at least {n_splits} patients, "
            f"got {len(np.unique(groups))}"
        )
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_idx, val_idx = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return train_idx.astype(np.int64), val_idx.astype(np.int64)


def augment_batch(x01: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flip / rotation (+-10 deg) / scale (0.9-1.1) / window jitter of (B, 1, H, W)
    [0, 1] slices; same shape, values in [0, 1] (see module docstring)."""
    b = x01.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    angle = uniform(-10.0, 10.0) * math.pi / 180.0
    scale = uniform(0.9, 1.1)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    grid = nn.functional.affine_grid(theta.to(x01), list(x01.shape), align_corners=False)
    out = nn.functional.grid_sample(x01, grid, padding_mode="zeros", align_corners=False)
    width = uniform(0.9, 1.1).to(x01).view(b, 1, 1, 1)
    level = uniform(-0.05, 0.05).to(x01).view(b, 1, 1, 1)
    return ((out - 0.5) * width + 0.5 + level).clamp(0.0, 1.0)


def _resized01(images: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """(N, 1, size, size) [0, 1] slices, resized as `images_to_tensor` does."""
    x = torch.from_numpy(np.stack([np.asarray(im, np.float32) for im in images]))[:, None]
    if tuple(x.shape[-2:]) != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


def _normalise(x01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01.expand(-1, 3, -1, -1) - mean) / std


# --- scoring ---------------------------------------------------------------------------------


def retrieval_score(
    query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> dict[str, float]:
    """Cosine retrieval of `query` rows among `gallery` rows: class-balanced precision@10
    ("score", the model-selection criterion) and macro F1 of the top-1 label."""
    from sklearn.metrics import f1_score

    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    g = gallery / np.maximum(np.linalg.norm(gallery, axis=1, keepdims=True), 1e-12)
    k = min(SCORE_K, len(g))
    top = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]
    hits = (gallery_labels[top] == query_labels[:, None]).mean(axis=1)
    score = float(np.mean([hits[query_labels == c].mean() for c in np.unique(query_labels)]))
    f1 = f1_score(query_labels, gallery_labels[top[:, 0]], average="macro", zero_division=0)
    return {"score": score, "f1_top1": float(f1)}


# --- the run ---------------------------------------------------------------------------------


def _split_trunk(backbone: nn.Module, blocks: int) -> tuple[nn.Sequential, nn.Sequential]:
    parts = trunk_parts(backbone)
    block_pos = [i for i, (kind, _) in enumerate(parts) if kind == "block"]
    if blocks > len(block_pos):
        raise ValueError(f"{backbone.name} has {len(block_pos)} blocks, cannot unfreeze {blocks}")
    cut = block_pos[len(block_pos) - blocks]
    return (
        nn.Sequential(*[m for _, m in parts[:cut]]),
        nn.Sequential(*[m for _, m in parts[cut:]]),
    )


def _batches(n: int, size: int) -> list[tuple[int, int]]:
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _tail_embed(front_out: torch.Tensor, tail: nn.Module, gem: nn.Module, bs: int) -> np.ndarray:
    tail.eval()
    with torch.no_grad():
        out = [gem(tail(front_out[s:e])).float().cpu() for s, e in _batches(len(front_out), bs)]
    return torch.cat(out).numpy()


def finetune_backbone(
    backbone: nn.Module,
    images: Sequence[np.ndarray],
    labels,
    *,
    patients: Sequence,
    config: FinetuneConfig,
    progress: Progress | None = None,
) -> dict:
    """Fine-tune the last `config.blocks` blocks (+ head conv/BN) of `backbone` in place on
    [0, 1] slices `images` with integer `labels`, selecting the best epoch on a patient-level
    inner split (see module docstring). Afterwards the backbone is in eval mode with its
    original `requires_grad` flags, `fine_tuned` True, `fine_tuned_sha256` the hash of its new
    state and `input_size` the side it was tuned at.

    Returns info: epochs_run, best_epoch (0: the frozen weights were best), val_history (one
    dict per evaluation, epoch 0 = before training: epoch, train_loss, score, f1_top1 and
    seconds — of the setup for epoch 0, else of that epoch's training and evaluation — and
    cpu_seconds, the process's CPU time over all threads for the same), seconds,
    cpu_seconds, trainable_parameters (names), trainable_count, n_train, n_val, config.
    Raises ValueError on bad input.
    """
    config.validate()
    labels = np.asarray(labels)
    if len(images) != len(labels) or len(patients) != len(labels):
        raise ValueError("images, labels and patients differ in length")
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError("fine-tuning needs at least two classes")
    t0, cpu0 = time.perf_counter(), time.process_time()
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if config.val_fraction > 0:
        train_idx, val_idx = inner_patient_split(
            y, patients, val_fraction=config.val_fraction, seed=config.seed
        )
    else:
        train_idx, val_idx = np.arange(len(y)), np.zeros(0, np.int64)
    if len(np.unique(y[train_idx])) < len(classes):
        raise ValueError("the inner split left a class without training slices")

    device = torch.device(config.device) if config.device else next(backbone.parameters()).device
    backbone.to(device).eval()
    front, tail = _split_trunk(backbone, config.blocks)
    flags = {name: p.requires_grad for name, p in backbone.named_parameters()}
    tail_ids = {id(p) for p in tail.parameters()}
    for p in backbone.parameters():
        p.requires_grad_(id(p) in tail_ids)
    trainable = [n for n, p in backbone.named_parameters() if id(p) in tail_ids]

    base01 = _resized01(images, config.input_size)  # resized once; augmented per batch
    bs = config.batch_size
    with torch.no_grad():  # un-augmented front activations: every evaluation reuses them
        front_clean = torch.cat(
            [front(_normalise(base01[s:e].to(device))) for s, e in _batches(len(y), bs)]
        )

    def evaluate(epoch: int, train_loss: float | None) -> tuple[dict, np.ndarray]:
        emb = _tail_embed(front_clean, tail, backbone.gem, bs)
        row = {"epoch": epoch, "train_loss": train_loss}
        if len(val_idx):
            row.update(retrieval_score(emb[val_idx], y[val_idx], emb[train_idx], y[train_idx]))
        return row, emb

    first, emb0 = evaluate(0, None)
    first["seconds"] = round(time.perf_counter() - t0, 3)  # split, front pass, first evaluation
    first["cpu_seconds"] = round(time.process_time() - cpu0, 3)
    history = [first]
    # cosine classifier starts at the frozen class means: CE then refines, not re-learns
    train_emb = emb0[train_idx]
    centres = np.stack([_unit(train_emb[y[train_idx] == c].mean(0)) for c in range(len(classes))])
    classifier = nn.Parameter(torch.as_tensor(centres, dtype=torch.float32, device=device))
    steps = max(1, config.epochs * len(_batches(len(train_idx), bs)))
    opt = torch.optim.AdamW(
        [*tail.parameters(), classifier], lr=config.lr, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
    )
    supcon = SupConLoss(temperature=config.temperature)
    best = {"epoch": 0, "score": first.get("score", -math.inf), "state": _snapshot(backbone)}
    stale = 0
    y_all = torch.as_tensor(y, device=device)
    for epoch in range(1, config.epochs + 1):
        t_epoch, cpu_epoch = time.perf_counter(), time.process_time()
        tail.train()
        order = rng.permutation(train_idx)
        total, count = 0.0, 0
        for s, e in _batches(len(order), bs):
            idx = torch.as_tensor(order[s:e])
            if len(idx) < 2:  # BatchNorm and SupCon need two samples
                continue
            x01 = base01[idx]
            if config.augment:
                x01 = augment_batch(x01, gen)
            with torch.no_grad():
                hidden = front(_normalise(x01.to(device)))
            z = nn.functional.normalize(backbone.gem(tail(hidden)), dim=-1)
            target = y_all[idx.to(device)]
            loss = torch.zeros((), device=device)
            if "ce" in config.loss:
                logits = COSINE_SCALE * z @ nn.functional.normalize(classifier, dim=-1).T
                loss = loss + nn.functional.cross_entropy(logits, target)
            if "supcon" in config.loss:
                loss = loss + supcon(z, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        row, _ = evaluate(epoch, total / max(count, 1))
        row["seconds"] = round(time.perf_counter() - t_epoch, 3)  # training + evaluation
        row["cpu_seconds"] = round(time.process_time() - cpu_epoch, 3)  # all threads
        history.append(row)
        if progress:
            progress(epoch, config.epochs)
        if not len(val_idx) or row["score"] > best["score"]:
            best = {"epoch": epoch, "score": row.get("score"), "state": _snapshot(backbone)}
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                break

    backbone.load_state_dict(best["state"])
    for name, p in backbone.named_parameters():
        p.requires_grad_(flags[name])
    backbone.eval()
    backbone.fine_tuned = True
    # weights_sha256 keeps naming the starting weights (provenance); caches key on this one
    backbone.fine_tuned_sha256 = state_sha256(backbone.state_dict())
    backbone.input_size = int(config.input_size)
    return {
        "epochs_run": len(history) - 1,
        "best_epoch": best["epoch"],
        "val_history": history,
        "seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - cpu0, 3),
        "trainable_parameters": trainable,
        "trainable_count": int(sum(p.numel() for p in tail.parameters())),
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "config": asdict(config),
    }


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def _snapshot(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def embed_images(
    backbone: nn.Module, images: Sequence[np.ndarray], *, input_size: int, batch_size: int = 32
) -> np.ndarray:
    """(N, D) float32 GeM features of [0, 1] slices resized to `input_size`: eval mode, no
    gradients (the backbone's training flag is restored afterwards)."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        with torch.inference_mode():
            for s, e in _batches(len(images), batch_size):
                x = images_to_tensor(list(images[s:e]), size=input_size).to(device)
                out.append(backbone(x).float().cpu().numpy())
    finally:
        backbone.train(was_training)
    dim = int(getattr(backbone, "out_dim", 0))
    return np.vstack(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)
