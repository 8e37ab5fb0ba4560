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
    # Fixes measured in docs/evaluation.md (defaults keep the paper's recipe):
    patience: int | None = None  # early stopping on the validation set given to train_head
    hard_negatives: bool = False  # paper loss: hardest in-batch negative of each other class
    feature_noise: float = 0.0  # gaussian noise, in units of each feature's std, on inputs
    feature_dropout: float = 0.0  # dropout probability on input features while training
    val_k: int = 10  # k of the validation kNN vote (early stopping score)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 (or None: no early stopping)")
        if not (0.0 <= self.feature_dropout < 1.0) or self.feature_noise < 0:
            raise ValueError("feature_dropout must be in [0, 1) and feature_noise >= 0")


def make_head(config: TrainConfig, *, deep_dim: int, rad_dim: int) -> nn.Module:
    """The head selected by `config.fusion`."""
    if config.fusion == "ildffn":
        return ILDFFN(deep_dim, rad_dim, config.embed_dim, reduce_deep=config.reduce_deep)
    if config.fusion == "deep":
        return ProjectionHead(deep_dim, config.embed_dim)
    return ProjectionHead(rad_dim, config.embed_dim)


def _loss(config: TrainConfig) -> nn.Module:
    if config.loss == "paper":
        loss = PaperContrastiveLoss(margin=config.margin, seed=config.seed)
        loss.hard_negatives = config.hard_negatives
        return loss
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
        if getattr(loss_fn, "hard_negatives", False):
            negatives = hardest_negatives(emb, labels[union], ia, labels[anchors])
        else:
            negatives = emb[ineg]
        return loss_fn.pair_loss(
            emb[ia], emb[ip], negatives, negative_mask=torch.as_tensor(ok, device=emb.device)
        )
    y = torch.as_tensor(labels[union], device=emb.device)
    return loss_fn(emb, y)


def hardest_negatives(
    emb: torch.Tensor, union_labels: np.ndarray, anchor_rows: torch.Tensor, anchor_labels
) -> torch.Tensor:
    """(B, C-1, E): for each anchor and each other class (ascending class order, as
    `sample_partners`), the batch member of that class closest to the anchor. The sampled
    partners guarantee every class is in the batch."""
    classes = np.unique(union_labels)
    a = emb[anchor_rows]
    dist = torch.cdist(a.detach(), emb.detach())  # (B, U), selection needs no gradient
    lab = torch.as_tensor(union_labels, device=emb.device)
    rows = []
    for i, own in enumerate(np.asarray(anchor_labels).tolist()):
        picks = []
        for c in classes:
            if c == own:
                continue
            d = dist[i].masked_fill(lab != int(c), float("inf"))
            picks.append(int(torch.argmin(d)))
        rows.append(picks)
    return emb[torch.as_tensor(rows, device=emb.device, dtype=torch.long)]


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
    val: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[nn.Module, dict]:
    """Train the head selected by `config.fusion` on cached features (radiomics already
    standardised). Returns (head in eval mode, metrics) — metrics: loss per epoch, seconds,
    sizes; with `val` = (deep, rad, labels) of held-out patients also the validation score per
    epoch (macro F1 of the class-balanced kNN vote of the validation rows against the training
    rows), the best epoch, and the head is the best epoch's (early stopping after
    `config.patience` epochs without improvement)."""
    config.validate()
    deep, rad, labels = _check_inputs(deep, rad, labels)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = _device(config)
    head = make_head(config, deep_dim=deep.shape[1], rad_dim=rad.shape[1]).to(device)
    d_all = torch.as_tensor(deep, device=device)
    r_all = torch.as_tensor(rad, device=device)
    d_std = d_all.std(dim=0, keepdim=True) + 1e-6
    r_std = r_all.std(dim=0, keepdim=True) + 1e-6
    augment = config.feature_noise > 0 or config.feature_dropout > 0

    def _augment(x: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        if config.feature_noise > 0:
            x = x + config.feature_noise * std * torch.randn_like(x)
        if config.feature_dropout > 0:
            x = nn.functional.dropout(x, p=config.feature_dropout, training=True)
        return x

    def emb_of(idx: np.ndarray) -> torch.Tensor:
        t = torch.as_tensor(idx, device=device)
        d, r = d_all[t], r_all[t]
        if augment and head.training:
            d, r = _augment(d, d_std), _augment(r, r_std)
        if config.fusion == "ildffn":
            return head(d, r)
        return head(d if config.fusion == "deep" else r)

    validate = None
    if val is not None:
        from retrieval.engine.fusion import head_embed

        v_deep = np.asarray(val[0], dtype=np.float32)
        v_rad = np.asarray(val[1], dtype=np.float32)
        v_labels = np.asarray(val[2]).astype(np.int64)
        if not (len(v_deep) == len(v_rad) == len(v_labels) > 0):
            raise ValueError("validation deep, radiomics and labels must be non-empty and equal")

        def validate() -> float:
            return knn_val_score(
                head_embed(head, config.fusion, deep, rad),
                labels,
                head_embed(head, config.fusion, v_deep, v_rad),
                v_labels,
                k=config.val_k,
            )

    history = _run_epochs(
        [head],
        emb_of=emb_of,
        labels=labels,
        config=config,
        rng=rng,
        progress=progress,
        validate=validate,
    )
    return head.eval(), history


def knn_val_score(
    train_emb: np.ndarray, train_labels, val_emb: np.ndarray, val_labels, *, k: int = 10
) -> float:
    """Macro F1 of the class-balanced similarity-weighted kNN vote (metrics.balanced_knn_vote)
    of validation embeddings against training embeddings (cosine)."""
    from retrieval.engine import metrics

    tr = metrics.l2_normalise(train_emb)
    va = metrics.l2_normalise(val_emb)
    k = min(k, len(tr))
    sims = va @ tr.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    train_labels = np.asarray(train_labels).astype(str)
    classes = sorted(set(train_labels.tolist()) | set(np.asarray(val_labels).astype(str)))
    vote = metrics.balanced_knn_vote(
        train_labels[top],
        np.take_along_axis(sims, top, axis=1),
        k=k,
        classes=classes,
        priors=metrics.class_priors(train_labels, classes),
    )
    return metrics.classification_metrics(
        np.asarray(val_labels).astype(str), vote["predicted"], labels=classes
    )["macro_f1"]


def _run_epochs(
    modules: list[nn.Module],
    *,
    emb_of: Callable[[np.ndarray], torch.Tensor],
    labels: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    progress: Progress | None,
    validate: Callable[[], float] | None = None,
) -> dict:
    """Train all parameters of `modules` (Adam, the config's loss) for up to `config.epochs`
    epochs of anchor batches; with `validate` (a score, higher is better, computed in eval
    mode after each epoch) keep the best epoch's weights and stop after `config.patience`
    epochs without improvement. Returns the metrics (loss per epoch, seconds, sizes...)."""
    import copy

    loss_fn = _loss(config)
    opt = torch.optim.Adam(
        [p for m in modules for p in m.parameters()],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    n = len(labels)
    t0 = time.perf_counter()
    losses: list[float] = []
    val_scores: list[float] = []
    best_score, best_epoch, best_states = -np.inf, 0, None
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
        if validate is not None:
            for m in modules:
                m.eval()
            score = float(validate())
            val_scores.append(score)
            if score > best_score + 1e-4:  # ties keep the earlier (less trained) epoch
                best_score, best_epoch = score, epoch + 1
                best_states = [copy.deepcopy(m.state_dict()) for m in modules]
        if progress:
            progress(epoch + 1, config.epochs)
        if (
            validate is not None
            and config.patience is not None
            and epoch + 1 - best_epoch >= config.patience
        ):
            break
    if best_states is not None:
        for m, state in zip(modules, best_states, strict=True):
            m.load_state_dict(state)
    out = {
        "loss_history": losses,
        "final_loss": losses[-1] if losses else None,
        "epochs": config.epochs,
        "epochs_run": len(losses),
        "n_train": int(n),
        "n_classes": int(len(np.unique(labels))),
        "train_seconds": round(time.perf_counter() - t0, 3),
        "fusion": config.fusion,
        "loss": config.loss,
        "mode": config.mode,
    }
    if validate is not None:
        out.update({"val_history": val_scores, "best_epoch": best_epoch, "best_val": best_score})
    return out


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
