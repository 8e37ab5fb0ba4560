"""Export the COVID-CT benchmark images' frozen deep embeddings as an (N, D) float32 .npy, for
`index_bench.py --real-embeddings`.

    ILDREVIEW_REAL_DATA=../shared/datasets \
    python benchmarks/export_embeddings.py --out var/bench/covid-ct-lite0-pca128.npy \
        [--manifest $ILDREVIEW_REAL_DATA/covid-ct/manifest.csv] [--backbone efficientnet_lite0]
        [--pca 128] [--size 512]

Each image is read and prepared as the evaluation does (`preprocess.load_image_file`,
`prepare_slice` at 512 px: window, resize, lung mask) and embedded with the default frozen
backbone (efficientnet_lite0, ImageNet weights shipped with the package, GeM pooling;
`FeatureExtractor.deep`). Radiomics are not computed: the index sees only the vector.

The raw GeM vector has 1280 dimensions. The app indexes 128-dimensional embeddings (the
served head's `embed_dim`), so the export reduces the L2-normalised deep vectors to `--pca`
dimensions with a PCA fitted on these same vectors (centred, not whitened) and L2-normalises
the result -- a frozen-backbone deployment would index the same kind of vector. `--pca 0`
keeps the raw 1280 dimensions. Next to OUT it writes OUT with `.deep.npy` (the normalised raw
vectors) and with `.meta.json`: paths, labels, patients, the backbone's weights SHA-256 and the
PCA's explained variance.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402


def pca_reduce(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised (N, dim) projection of the centred rows, explained variance ratios)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    out = centred @ vt[:dim].T
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    ratio = (s**2) / np.sum(s**2)
    return out.astype(np.float32), ratio[:dim]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    data = os.environ.get("ILDREVIEW_REAL_DATA", "../shared/datasets")
    ap.add_argument("--manifest", type=Path, default=Path(data) / "covid-ct" / "manifest.csv")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--pca", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)

    import torch

    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.features import FeatureExtractor
    from retrieval.engine.manifest import read_manifest
    from retrieval.engine.preprocess import load_image_file, prepare_slice
    from retrieval.engine.radiomics import RadiomicsExtractor

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    items = read_manifest(args.manifest, strict=False)
    backbone = build_backbone(args.backbone, weights="imagenet", device="cpu")
    extractor = FeatureExtractor(backbone, RadiomicsExtractor(), batch_size=args.batch)
    t0 = time.perf_counter()
    parts = []
    for start in range(0, len(items), args.batch):
        chunk = items.paths[start : start + args.batch]
        images = []
        for p in chunk:
            pixels, windowed = load_image_file(p)
            images.append(prepare_slice(pixels, is_windowed=windowed, size=args.size).image)
        parts.append(extractor.deep(images))
        done = start + len(chunk)
        print(f"\r{done}/{len(items)} images, {time.perf_counter() - t0:.0f}s", end="", flush=True)
    print()
    deep = np.vstack(parts).astype(np.float32)
    deep /= np.maximum(np.linalg.norm(deep, axis=1, keepdims=True), 1e-12)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out.with_suffix(".deep.npy"), deep)  # the raw vectors, before any reduction
    meta: dict = {
        "manifest": args.manifest.name,
        "backbone": args.backbone,
        "weights_sha256": backbone.weights_sha256,
        "size": args.size,
        "deep_dim": int(deep.shape[1]),
        "skipped": items.skipped,
        "paths": [os.path.relpath(p, args.manifest.parent.resolve()) for p in items.paths],
        "labels": list(items.labels),
        "patients": list(items.patients),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = deep
    if args.pca and args.pca < deep.shape[1]:
        out, ratio = pca_reduce(deep, args.pca)
        meta["pca"] = {"dim": args.pca, "explained_variance": float(ratio.sum())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, out)
    args.out.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1, default=str))
    print(f"wrote {args.out}: {out.shape[0]} x {out.shape[1]} float32 ({meta.get('pca')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
