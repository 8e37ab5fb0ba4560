"""Stage 5 losses: the paper's contrastive loss and supervised contrastive loss (SupCon).

Both L2-normalise their inputs first (a no-op for the heads' outputs) and take labels (B,).

PaperContrastiveLoss (margin m = 0.7), the standard contrastive form with Euclidean distance
d between normalised embeddings, per anchor a with one positive p (same class) and one
negative n_c from each other class c:

    L(a) = d(a, p)^2 + sum_c max(0, m - d(a, n_c))^2

averaged over anchors. `forward(embeddings, labels)` picks the positive and the negatives
inside the batch (seeded generator); an anchor without a positive in the batch contributes only
its negative terms. Training (`training.py`) instead draws each anchor's partners from the
*whole training set* and calls `pair_loss` — with batch 8 and several classes, a batch alone
often lacks them.

SupConLoss (Khosla et al. 2020, "L_out" form), temperature tau:

    L = mean_i  -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a != i} exp(z_i.z_a/tau) )

over anchors i with at least one positive P(i) (0 when none has one).
"""

from __future__ import annotations

import torch
from torch import nn


class PaperContrastiveLoss(nn.Module):
    """The paper's contrastive loss (see module docstring)."""

    def __init__(self, margin: float = 0.7, seed: int = 0):
        super().__init__()
        self.margin = float(margin)
        self._generator = torch.Generator().manual_seed(seed)

    def pair_loss(
        self,
        anchors: torch.Tensor,
        positives: torch.Tensor | None,
        negatives: torch.Tensor,
        negative_mask: torch.Tensor | None = None,
        positive_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """anchors (B, E), positives (B, E), negatives (B, C, E) with negative_mask (B, C)
        saying which negatives exist; positive_mask (B,) which positives exist."""
        a = nn.functional.normalize(anchors, dim=-1)
        b = a.shape[0]
        total = a.new_zeros(b)
        if positives is not None:
            d_pos = (a - nn.functional.normalize(positives, dim=-1)).norm(dim=-1)
            pos_term = d_pos.pow(2)
            if positive_mask is not None:
                pos_term = pos_term * positive_mask.to(pos_term.dtype)
            total = total + pos_term
        if negatives.numel():
            n = nn.functional.normalize(negatives, dim=-1)
            d_neg = (a.unsqueeze(1) - n).norm(dim=-1)  # (B, C)
            neg_term = (self.margin - d_neg).clamp(min=0).pow(2)
            if negative_mask is not None:
                neg_term = neg_term * negative_mask.to(neg_term.dtype)
            total = total + neg_term.sum(dim=1)
        return total.mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labels = labels.to(embeddings.device).long()
        b = embeddings.shape[0]
        classes = torch.unique(labels).tolist()
        pos_idx = torch.arange(b)
        pos_ok = torch.zeros(b, dtype=torch.bool)
        neg_idx = torch.zeros(b, max(len(classes) - 1, 0), dtype=torch.long)
        neg_ok = torch.zeros_like(neg_idx, dtype=torch.bool)
        lab = labels.cpu()
        for i in range(b):
            same = torch.nonzero((lab == lab[i]) & (torch.arange(b) != i)).flatten()
            if len(same):
                pos_idx[i] = same[torch.randint(len(same), (1,), generator=self._generator)]
                pos_ok[i] = True
            others = [c for c in classes if c != int(lab[i])]
            for j, c in enumerate(others):
                cand = torch.nonzero(lab == c).flatten()
                neg_idx[i, j] = cand[torch.randint(len(cand), (1,), generator=self._generator)]
                neg_ok[i, j] = True
        dev = embeddings.device
        return self.pair_loss(
            embeddings,
            embeddings[pos_idx.to(dev)],
            embeddings[neg_idx.to(dev)],
            negative_mask=neg_ok.to(dev),
            positive_mask=pos_ok.to(dev),
        )


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020), see module docstring."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = nn.functional.normalize(embeddings, dim=-1)
        labels = labels.to(z.device).long()
        b = z.shape[0]
        logits = z @ z.T / self.temperature
        self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positive = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positive.sum(dim=1)
        has_pos = n_pos > 0
        if not bool(has_pos.any()):
            return z.sum() * 0.0  # keeps the graph; nothing to pull together
        pos_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1)
        per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos]
        return per_anchor.mean()
