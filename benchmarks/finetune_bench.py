"""Cost and effect of partial fine-tuning (`retrieval.engine.finetune`) on one COVID-CT fold.

    nice -n 5 python benchmarks/finetune_bench.py [MANIFEST] [--backbones efficientnet_lite0 ...]

Fold: the first of `patient_kfold(patients, labels, folds=5, seed=0)` (patient-level, as
`evaluate_retrieval` splits). Images are read and prepared with `retrieval.engine.preprocess`
at 512 px (as the evaluation does) and fed to the backbone at `--input-size`. For each
backbone it prints and writes to `--out` (JSON):

- seconds to embed the fold with the frozen backbone, and the macro F1 of top-1 cosine
  retrieval of held-out (test) slices among the training slices with those frozen features
  (and the class-balanced precision@10 of the same retrieval);
- fine-tuning on the fold's training slices (inner patient-level validation, early stopping):
  seconds of the setup and of each epoch, the whole fold's seconds, epochs run and the best
  epoch, then the same macro F1 with the fine-tuned backbone.

`--epochs` applies to the first backbone; the others run `--other-epochs` (default 1), which
is enough for their cost per epoch. `--threads` sets torch's CPU threads (default 2).
`--cost-only` skips the embeddings and F1 (fine-tuning times only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")


def _prepare(paths, *, size: int):
    from retrieval.engine.preprocess import load_image_file, prepare_slice

    images = []
    with warnings.catch_warnings():  # colour-to-grey notes, one per file: not this bench's topic
        warnings.simplefilter("ignore", UserWarning)
        for path in paths:
            pixels, windowed = load_image_file(path)
            images.append(prepare_slice(pixels, is_windowed=windowed, size=size).image)
    return images


def _scores(train_emb, train_y, test_emb, test_y) -> dict:
    """Macro F1 of the top-1 label and class-balanced precision@10 of test among train."""
    from retrieval.engine.finetune import retrieval_score

    return {
        k: round(v, 4) for k, v in retrieval_score(test_emb, test_y, train_emb, train_y).items()
    }


def main() -> int:
    default_manifest = Path(os.environ.get("ILDREVIEW_REAL_DATA", "../shared/datasets"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "manifest", nargs="?", type=Path, default=default_manifest / "covid-ct" / "manifest.csv"
    )
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"],
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--other-epochs", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--size", type=int, default=512, help="prepared slice side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cost-only",
        action="store_true",
        help="time the fine-tuning only (no frozen/tuned embedding of the fold, no F1)",
    )
    parser.add_argument("--out", type=Path, default=Path("finetune_bench.json"))
    args = parser.parse_args()

    import numpy as np
    import torch

    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.evaluation import read_manifest
    from retrieval.engine.finetune import FinetuneConfig, embed_images, finetune_backbone
    from retrieval.engine.training import patient_kfold

    torch.set_num_threads(args.threads)
    if not args.manifest.is_file():
        print(f"{args.manifest}: manifest not found (set ILDREVIEW_REAL_DATA)", file=sys.stderr)
        return 2
    items = read_manifest(args.manifest)
    classes, y = np.unique(items.labels, return_inverse=True)
    patients = np.asarray(items.patients)
    train_idx, test_idx = patient_kfold(patients, y, folds=5, seed=0)[0]
    t0 = time.perf_counter()
    images = _prepare(items.paths, size=args.size)
    prepare_s = time.perf_counter() - t0
    print(
        f"{len(images)} slices ({len(train_idx)} train, {len(test_idx)} test, classes "
        f"{[str(c) for c in classes]}), prepared in {prepare_s:.1f} s; torch threads "
        f"{args.threads}",
        flush=True,
    )
    train_images = [images[i] for i in train_idx]
    test_images = [images[i] for i in test_idx]
    results = {
        "manifest": str(args.manifest),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "prepare_seconds": round(prepare_s, 1),
        "runs": [],
    }
    for n, name in enumerate(args.backbones):
        epochs = args.epochs if n == 0 else args.other_epochs
        backbone = build_backbone(name, weights="imagenet", device="cpu")
        embed_s = embed_cpu = f1_frozen = f1_tuned = p10_frozen = p10_tuned = None
        t, cpu = time.perf_counter(), time.process_time()
        if not args.cost_only:
            frozen_train = embed_images(backbone, train_images, input_size=args.input_size)
            frozen_test = embed_images(backbone, test_images, input_size=args.input_size)
            embed_s, embed_cpu = time.perf_counter() - t, time.process_time() - cpu
            frozen = _scores(frozen_train, y[train_idx], frozen_test, y[test_idx])
            f1_frozen, p10_frozen = frozen["f1_top1"], frozen["score"]
            print(
                f"{name}: frozen embed {embed_s:.1f} s ({embed_cpu:.1f} CPU s), "
                f"macro F1 {f1_frozen}, precision@10 {p10_frozen}",
                flush=True,
            )
        config = FinetuneConfig(input_size=args.input_size, blocks=args.blocks, epochs=epochs)
        info = finetune_backbone(
            backbone,
            train_images,
            y[train_idx],
            patients=patients[train_idx],
            config=config,
            progress=lambda done, total, name=name: print(
                f"  {name} epoch {done}/{total}", flush=True
            ),
        )
        if not args.cost_only:
            tuned_train = embed_images(backbone, train_images, input_size=args.input_size)
            tuned_test = embed_images(backbone, test_images, input_size=args.input_size)
            tuned = _scores(tuned_train, y[train_idx], tuned_test, y[test_idx])
            f1_tuned, p10_tuned = tuned["f1_top1"], tuned["score"]
        epoch_s = [row["seconds"] for row in info["val_history"][1:]]
        epoch_cpu = [row["cpu_seconds"] for row in info["val_history"][1:]]
        run = {
            "backbone": name,
            "input_size": args.input_size,
            "blocks": args.blocks,
            "frozen_embed_seconds": None if embed_s is None else round(embed_s, 1),
            "frozen_embed_cpu_seconds": None if embed_cpu is None else round(embed_cpu, 1),
            "f1_frozen": f1_frozen,
            "precision10_frozen": p10_frozen,
            "setup_seconds": info["val_history"][0]["seconds"],
            "epoch_seconds": epoch_s,
            "mean_epoch_seconds": round(float(np.mean(epoch_s)), 1) if epoch_s else None,
            "finetune_seconds": info["seconds"],
            "finetune_cpu_seconds": info["cpu_seconds"],
            "setup_cpu_seconds": info["val_history"][0]["cpu_seconds"],
            "epoch_cpu_seconds": epoch_cpu,
            "mean_epoch_cpu_seconds": round(float(np.mean(epoch_cpu)), 1) if epoch_cpu else None,
            "epochs_run": info["epochs_run"],
            "best_epoch": info["best_epoch"],
            "val_history": info["val_history"],
            "trainable_count": info["trainable_count"],
            "f1_finetuned": f1_tuned,
            "precision10_finetuned": p10_tuned,
        }
        results["runs"].append(run)
        print(
            f"{name}: setup {run['setup_seconds']:.1f} s, {run['epochs_run']} epochs "
            f"(mean {run['mean_epoch_seconds']} s, {run['mean_epoch_cpu_seconds']} CPU s), "
            f"fine-tune {run['finetune_seconds']:.1f} s ({run['finetune_cpu_seconds']:.1f} CPU "
            f"s), best epoch {run['best_epoch']}, macro F1 {f1_frozen} -> {f1_tuned}, "
            f"precision@10 {p10_frozen} -> {p10_tuned}",
            flush=True,
        )
        args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
