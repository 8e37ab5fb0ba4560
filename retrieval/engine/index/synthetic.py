"""Clustered synthetic unit vectors for index tests and `benchmarks/index_bench.py`.

Generator: `clusters` centres drawn uniformly on the unit sphere; cluster sizes uneven (weights
log-normal, sigma 0.5); a point is its centre plus isotropic Gaussian noise of total norm about
`spread` (per-coordinate std spread/sqrt(dim)), then L2-normalised. Queries come from the same
distribution but are fresh draws, never indexed points.

Expected cosines: two points of one cluster ~ 1/(1 + spread^2) (0.80 at spread 0.5, 0.64 at
0.75); points of different clusters ~ 0 +- 1/sqrt(dim). This is not an easy setting for kNN:
the noise is isotropic, so every member of the query's cluster is nearly equally similar, and
the true top 10 stand out from the ~N/clusters other members by only a few hundredths of
cosine. An index must find the right 10 within the cluster, not just the cluster.
"""

from __future__ import annotations

import numpy as np

from .base import normalize


class ClusteredVectors:
    """Draws points (and fresh queries) from one fixed mixture of clusters."""

    def __init__(self, *, dim: int, clusters: int, spread: float, seed: int = 0) -> None:
        self.dim = dim
        self.spread = float(spread)
        rng = np.random.default_rng(seed)
        self.centers = normalize(rng.standard_normal((clusters, dim)))
        weights = rng.lognormal(0.0, 0.5, clusters)
        self.weights = weights / weights.sum()

    def sample(self, n: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) float32 unit vectors and their cluster numbers."""
        rng = np.random.default_rng(seed)
        labels = rng.choice(len(self.centers), size=n, p=self.weights)
        out = np.empty((n, self.dim), dtype=np.float32)
        scale = np.float32(self.spread / np.sqrt(self.dim))
        chunk = 1 << 16
        for start in range(0, n, chunk):
            lab = labels[start : start + chunk]
            noise = rng.standard_normal((len(lab), self.dim), dtype=np.float32) * scale
            out[start : start + len(lab)] = normalize(self.centers[lab] + noise)
        return out, labels


def similarity_profile(x: np.ndarray, labels: np.ndarray, *, pairs: int = 20000, seed: int = 0):
    """Mean (and std) cosine of random same-cluster and different-cluster pairs."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, len(x), pairs * 4)
    b = rng.integers(0, len(x), pairs * 4)
    same = (labels[a] == labels[b]) & (a != b)
    sims = np.einsum("ij,ij->i", x[a], x[b])
    intra = sims[same][:pairs]
    inter = sims[~same][:pairs]
    if not len(intra):  # huge clusters count: force same-cluster pairs
        order = np.argsort(labels, kind="stable")
        s = labels[order]
        idx = np.flatnonzero(s[1:] == s[:-1])[:pairs]
        intra = np.einsum("ij,ij->i", x[order[idx]], x[order[idx + 1]])
    return {
        "intra_mean": float(intra.mean()),
        "intra_std": float(intra.std()),
        "inter_mean": float(inter.mean()),
        "inter_std": float(inter.std()),
    }
