"""Per-slice seconds of the retrieval pipeline stages, per backbone.

    python benchmarks/pipeline_bench.py [--slices 16] [--threads 2] [--json OUT]

Stages timed per 512x512 slice: segmentation (window + resize + lung mask), radiomics, deep
features (backbone + GeM, batch of 1 — the latency a single uploaded slice sees) and fusion
(ILD-FFN forward). Slices come from the real Lung-PET-CT-Dx DICOM series (read with pydicom) under
ILDREVIEW_REAL_DATA (default ../shared/datasets from the project root); without them, generated
phantom slices are used and the output says so.

Backbones: efficientnet_lite0 with its offline ImageNet weights (the default); resnet50 with
the weights from ILDREVIEW_RESNET50_WEIGHTS when set, otherwise with random weights, labelled
"timing only" (the architecture's cost does not depend on the weights' values).
Target (issue 3): full pipeline <= 0.5 s per slice on 2 CPU cores with the default backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TARGET_S = 0.5


def real_slices(n: int) -> tuple[list[np.ndarray], str]:
    """Up to n HU slices (int16) from the real DICOM series, spread along z; else phantoms."""
    root = Path(os.environ.get("ILDREVIEW_REAL_DATA", ROOT.parent / "shared" / "datasets"))
    folder = root / "lung-pet-ct-dx"
    files = sorted(folder.rglob("*.dcm")) if folder.exists() else []
    if files:
        import pydicom

        chosen = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).astype(int)]
        out = []
        for f in chosen:
            ds = pydicom.dcmread(f)
            hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
                getattr(ds, "RescaleIntercept", 0)
            )
            out.append(hu.astype(np.int16))
        return out, f"real DICOM slices from {folder.name} ({len(out)} of {len(files)} files)"
    from cases.phantom import chest_phantom

    out = [chest_phantom(size=512, pattern="normal", seed=i)[0] for i in range(n)]
    return out, "NOTE: real data not found; generated phantom slices (cases/phantom.py)"


def _time(fn, repeats: list[float]):
    t = time.perf_counter()
    result = fn()
    repeats.append(time.perf_counter() - t)
    return result


def bench_backbone(name: str, slices: list[np.ndarray]) -> dict:
    from retrieval.engine.backbones import (
        BackboneWeightsUnavailable,
        build_backbone,
        images_to_tensor,
    )
    from retrieval.engine.fusion import ILDFFN
    from retrieval.engine.preprocess import prepare_slice
    from retrieval.engine.radiomics import RadiomicsExtractor

    label = name
    resnet_file = os.environ.get("ILDREVIEW_RESNET50_WEIGHTS", "")
    if name == "resnet50" and not resnet_file:
        # No configured weights file: never download; the cost does not depend on the values.
        backbone = build_backbone(name, weights="random", device="cpu")
        label = f"{name} (random weights, timing only)"
    else:
        try:
            backbone = build_backbone(
                name, weights="imagenet", imagenet_file=resnet_file, device="cpu"
            )
        except BackboneWeightsUnavailable:
            backbone = build_backbone(name, weights="random", device="cpu")
            label = f"{name} (random weights, timing only)"
    backbone.eval()
    radiomics = RadiomicsExtractor()
    fusion = None
    seg, rad, deep, fus = [], [], [], []
    with torch.no_grad():
        # warm-up: first calls pay for lazy initialisation and allocator growth
        warm = prepare_slice(slices[0], is_windowed=False, size=512)
        backbone(images_to_tensor([warm.image]))
        for hu in slices:
            prepared = _time(lambda hu=hu: prepare_slice(hu, is_windowed=False, size=512), seg)
            r = _time(lambda p=prepared: radiomics.extract(p.image, p.mask), rad)
            d = _time(lambda p=prepared: backbone(images_to_tensor([p.image])), deep)
            if fusion is None:
                fusion = ILDFFN(deep_dim=d.shape[1], rad_dim=len(r)).eval()
            rt = torch.as_tensor(np.asarray(r, dtype=np.float32))[None]
            _time(lambda d=d, rt=rt, f=fusion: f(d, rt), fus)
    row = {
        "backbone": label,
        "segmentation_s": statistics.median(seg),
        "radiomics_s": statistics.median(rad),
        "deep_s": statistics.median(deep),
        "fusion_s": statistics.median(fus),
    }
    row["total_s"] = sum(row[k] for k in ("segmentation_s", "radiomics_s", "deep_s", "fusion_s"))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "resnet50"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    slices, source = real_slices(args.slices)
    print(source)
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"torch threads {torch.get_num_threads()}, CUDA {torch.cuda.is_available()}"
    )
    rows = [bench_backbone(name, slices) for name in args.backbones]
    head = f"{'backbone':<42}{'segment':>9}{'radiomics':>11}{'deep':>9}{'fusion':>9}{'total':>9}"
    print("median seconds per 512x512 slice")
    print(head)
    for r in rows:
        print(
            f"{r['backbone']:<42}{r['segmentation_s']:>9.3f}{r['radiomics_s']:>11.3f}"
            f"{r['deep_s']:>9.3f}{r['fusion_s']:>9.3f}{r['total_s']:>9.3f}"
        )
    default = rows[0]
    verdict = "meets" if default["total_s"] <= TARGET_S else "MISSES"
    print(
        f"{default['backbone']}: {default['total_s']:.3f} s/slice, "
        f"{verdict} the <= {TARGET_S} s target"
    )
    if args.json:
        args.json.write_text(json.dumps({"source": source, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
