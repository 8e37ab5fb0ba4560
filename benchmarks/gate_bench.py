"""What the held-out gate costs and says on the approved library of an install.

Run against an install whose library is set up (e.g. `manage.py setup_demo --library
phantoms` in a scratch database: see docs/model-gate.md), with the same environment:

    python benchmarks/gate_bench.py [--size 512] [--weights imagenet]

Prints, in seconds: slice preparation, one radiomics pass and one deep-feature pass over the
library (what one recipe run costs in features), the gate (the recipe on the training
patients + the frozen/candidate features of every slice), the recipe on the whole library;
then the gate's table. Nothing is written to the database.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from cases.models import ReferenceCase
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.features import FeatureExtractor
    from retrieval.engine.radiomics import RadiomicsExtractor
    from retrieval.pipeline.bootstrap import library_prepare, library_recipe_config
    from retrieval.pipeline.gate import library_gate_table, library_patients, recipe_train

    times = {}
    t = time.perf_counter()
    cases = list(
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).select_related("diagnosis")
    )
    prepared, labels, names, case_ids = library_prepare(cases=cases, size=args.size)
    labels = [names[i] for i in labels]
    patients = library_patients(case_ids=case_ids)
    times["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    radiomics = RadiomicsExtractor()
    for p in prepared:
        radiomics.extract(p.image, p.mask)
    times["radiomics_pass"] = time.perf_counter() - t
    t = time.perf_counter()
    backbone = build_backbone(args.backbone, weights=args.weights, device="cpu")
    FeatureExtractor(backbone, radiomics, 8).deep([p.image for p in prepared])
    times["deep_pass"] = time.perf_counter() - t
    config = library_recipe_config(
        backbone_name=args.backbone, weights=args.weights, size=args.size, epochs=args.epochs
    )
    t = time.perf_counter()
    table = library_gate_table(
        prepared=prepared, labels=labels, patients=patients, class_names=names, config=config
    )
    times["gate"] = time.perf_counter() - t
    t = time.perf_counter()
    recipe_train(prepared, labels, patients, config=config, class_names=names)
    times["full_recipe"] = time.perf_counter() - t
    print(f"library: {len(prepared)} slices of {len(set(patients))} patients, {len(names)} classes")
    for key, value in times.items():
        print(f"{key:>15}: {value:7.1f} s")
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
