"""`manage.py evaluate_retrieval MANIFEST.csv --folds 5 --out DIR`: cross-validated evaluation."""

from __future__ import annotations

import sys
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from retrieval.management.options import (
    backbone_options,
    recipe_arguments_add,
    training_options,
)


class Command(BaseCommand):
    help = (
        "Patient-level k-fold evaluation of retrieval (train on the train folds, index them, "
        "query with the held-out fold), with the ablation rows; writes DIR/report.json and "
        "DIR/report.html."
    )

    def add_arguments(self, parser):
        parser.add_argument("manifest", type=Path, help="CSV: path,label,patient_id[,split]")
        parser.add_argument("--folds", type=int, default=5, help="1 = use the split column")
        parser.add_argument("--out", type=Path, required=True, help="report folder")
        recipe_arguments_add(parser)
        # The evaluation's defaults are the headline configuration a 2-core CPU runs in under
        # an hour on COVID-CT (docs/evaluation.md); `--reduce-deep 0` gives the paper's map.
        parser.set_defaults(reduce_deep=32, epochs=10)
        parser.add_argument(
            "--mode",
            default="head",
            choices=["head", "finetune"],
            help="finetune: per fold, fine-tune the backbone's last blocks on the train fold "
            "(CPU: about 15 min per COVID-CT fold) and use its features for the headline",
        )
        parser.add_argument("--finetune-input-size", type=int, default=224)
        parser.add_argument("--finetune-blocks", type=int, default=2)
        parser.add_argument("--finetune-epochs", type=int, default=8)
        parser.add_argument(
            "--fused",
            action="store_true",
            help="add the paper's ILD-FFN row (fused_contrastive; 2-9 min per COVID-CT fold "
            "on 2 CPU cores)",
        )
        parser.add_argument(
            "--strict",
            action="store_true",
            help="fail on the first unreadable row instead of listing it and skipping it",
        )
        parser.add_argument(
            "--index", default="exact", choices=["exact", "lsh-paper", "lsh", "faiss-hnsw"]
        )
        parser.add_argument("--min-lung-fraction", type=float, default=0.0)
        parser.add_argument("--knn-k", type=int, default=5)
        parser.add_argument(
            "--no-extras",
            action="store_true",
            help="only radiomics_only, deep_only, deep_contrastive and the headline (no "
            "baselines or ablations)",
        )
        parser.add_argument(
            "--cache-dir",
            default=str(settings.VAR_DIR / "feature-cache"),
            help="feature cache folder (reused across runs)",
        )

    def handle(self, *args, **opts):
        from retrieval.engine.evaluation import (
            EXTRA_VARIANTS,
            EvalConfig,
            ManifestError,
            evaluate,
            read_manifest,
        )
        from retrieval.engine.report import (
            ablation_table_markdown,
            chosen_per_fold_markdown,
            write_report,
        )

        if opts["folds"] < 1:
            raise CommandError("--folds must be >= 1")
        try:
            items = read_manifest(
                opts["manifest"], limit=opts["limit"], seed=opts["seed"], strict=opts["strict"]
            )
        except ManifestError as exc:
            raise CommandError(str(exc)) from exc
        training = training_options(opts)
        if not training["reduce_deep"]:
            training["reduce_deep"] = None  # 0: the paper's full correlation map
        config = EvalConfig(
            **backbone_options(opts),
            **training,
            strict=opts["strict"],
            fused=opts["fused"],
            mode=opts["mode"],
            finetune_input_size=opts["finetune_input_size"],
            finetune_blocks=opts["finetune_blocks"],
            finetune_epochs=opts["finetune_epochs"],
            index=opts["index"],
            knn_k=opts["knn_k"],
            min_lung_fraction=opts["min_lung_fraction"],
            extra_variants=() if opts["no_extras"] else EXTRA_VARIANTS,
            cache_dir=opts["cache_dir"],
        )
        bars: dict[str, tqdm] = {}
        quiet = opts["verbosity"] < 1

        def progress(stage: str, done: int, total: int) -> None:
            if quiet:
                return
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", file=sys.stderr)
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        self.stdout.write(f"{len(items)} images, {len(set(items.patients))} patients")
        if items.skipped:
            self.stdout.write(self.style.WARNING(f"{len(items.skipped)} manifest rows skipped"))
        try:
            report, projection = evaluate(
                items=items, folds=opts["folds"], config=config, progress=progress
            )
        except ManifestError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for bar in bars.values():
                bar.close()
        json_path, html_path = write_report(report, opts["out"], projection=projection)
        if report["skipped"]:
            self.stdout.write(
                self.style.WARNING(
                    f"{len(report['skipped'])} unreadable rows skipped (listed in report.json)"
                )
            )
        if report["converted"]:
            self.stdout.write(
                self.style.WARNING(f"{len(report['converted'])} colour images read as grey")
            )
        self.stdout.write(ablation_table_markdown(report))
        self.stdout.write(chosen_per_fold_markdown(report))
        self.stdout.write(self.style.SUCCESS(f"wrote {json_path} and {html_path}"))
