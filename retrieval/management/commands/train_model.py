"""`manage.py train_model MANIFEST.csv --out DIR`: train a retrieval model version.

`--mode finetune` first fine-tunes the last `--blocks` blocks of the backbone on the slices
(`retrieval.engine.finetune`, patient-level inner validation and early stopping) and then runs
the usual recipe on the fine-tuned backbone; slices are then prepared at `--input-size`, the
side the backbone is tuned and served at.
"""

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
        "Train the fusion head (contrastive learning) on a manifest of labelled images or on the "
        "approved reference library, save the model artefact to --out and optionally register "
        "(and activate) it as a model version."
    )

    def add_arguments(self, parser):
        parser.add_argument("manifest", nargs="?", type=Path, help="CSV: path,label,patient_id")
        parser.add_argument("--from-library", action="store_true", help="train on approved cases")
        parser.add_argument("--out", type=Path, required=True, help="artefact folder")
        recipe_arguments_add(parser)
        parser.add_argument("--loss", choices=["paper", "supcon"], default="paper")
        parser.add_argument(
            "--mode",
            choices=["head", "end_to_end", "finetune"],
            default="head",
            help="finetune: partial fine-tuning of the backbone (CPU), then the recipe",
        )
        parser.add_argument(
            "--input-size",
            type=int,
            default=224,
            help="finetune: backbone input side; slices are prepared at this side",
        )
        parser.add_argument(
            "--blocks", type=int, default=2, help="finetune: last N backbone blocks trained"
        )
        parser.add_argument("--finetune-epochs", type=int, default=8, help="finetune: epochs")
        parser.add_argument("--fusion", choices=["ildffn", "deep", "radiomics"], default="ildffn")
        parser.add_argument("--name", default="", help="model version name (default: folder)")
        parser.add_argument("--register", action="store_true")
        parser.add_argument("--activate", action="store_true", help="implies --register")
        parser.add_argument(
            "--override-reason",
            default="",
            help="with --activate: why a version that the held-out gate shows worse than the "
            "frozen backbone or the active version should serve anyway (audit log)",
        )

    def handle(self, *args, **opts):
        from retrieval.engine.evaluation import ManifestError, read_manifest

        if bool(opts["manifest"]) == bool(opts["from_library"]):
            raise CommandError("give either MANIFEST.csv or --from-library (one of them)")
        out: Path = opts["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out}: folder exists and is not empty")
        name = opts["name"] or out.name
        register = opts["register"] or opts["activate"]
        if register:
            from retrieval.models import ModelVersion

            if ModelVersion.objects.filter(name=name).exists():
                raise CommandError(f"a model version named {name!r} already exists")
        quiet = opts["verbosity"] < 1
        if opts["mode"] == "finetune":
            opts["size"] = opts["input_size"]

        if opts["from_library"]:
            prepared, labels, patients = _library_slices(size=opts["size"], quiet=quiet)
            source = "reference library (approved cases)"
        else:
            try:
                items = read_manifest(opts["manifest"], limit=opts["limit"], seed=opts["seed"])
            except ManifestError as exc:
                raise CommandError(str(exc)) from exc
            prepared, labels, patients = _manifest_slices(items, size=opts["size"], quiet=quiet)
            source = str(opts["manifest"])
        if len(set(labels)) < 2:
            raise CommandError(f"{source}: training needs at least two classes")

        try:
            if opts["mode"] == "finetune":
                model = _train_finetuned(prepared, labels, patients, opts=opts, quiet=quiet)
            else:
                model = _train(prepared, labels, patients, opts=opts)
        except Exception as exc:  # engine errors: report them without a half-written folder
            _remove_partial(out)
            raise CommandError(f"training failed: {exc}") from exc
        # Library slices were prepared at ILDREVIEW_FOV_MM; serving must prepare them the same.
        model.config["fov_mm"] = settings.ILDREVIEW_FOV_MM if opts["from_library"] else None
        model.metrics = {
            **(model.metrics or {}),
            "n_slices": len(labels),
            "n_patients": len(set(patients)),
            "source": source,
        }
        out.mkdir(parents=True, exist_ok=True)
        model.save(out)
        self.stdout.write(self.style.SUCCESS(f"saved model artefact to {out}"))
        if register:
            from retrieval.services import ModelVersionError, model_version_register

            # The held-out gate's table (the same training on part of the patients); the
            # registration stores it and activation goes through the gate.
            holdout = _gate_table(prepared, labels, patients, opts=opts)
            try:
                version = model_version_register(
                    artefact_dir=out,
                    name=name,
                    activate=opts["activate"],
                    holdout=holdout,
                    override_reason=opts["override_reason"],
                )
            except ModelVersionError as exc:
                raise CommandError(str(exc)) from exc
            state = "registered and activated" if version.is_active else "registered"
            self.stdout.write(self.style.SUCCESS(f"model version {version.name!r} {state}"))


def _gate_table(prepared, labels, patients, *, opts) -> dict:
    """The held-out gate's table of this command's training (`retrieval.pipeline.gate`)."""
    from retrieval.engine.backbones import build_backbone
    from retrieval.pipeline.gate import gate_table
    from retrieval.selectors import model_version_active

    def train(p, y, g):
        if opts["mode"] == "finetune":
            return _train_finetuned(p, y, g, opts=opts, quiet=True)
        return _train(p, y, g, opts=opts)

    options = backbone_options(opts)
    return gate_table(
        prepared=prepared,
        labels=list(labels),
        patients=list(patients),
        class_names=None,
        train=train,
        frozen_backbone_factory=lambda: build_backbone(
            options["backbone"], weights=options["weights"], imagenet_file=options["imagenet_file"]
        ),
        size=opts["size"],
        active=model_version_active(),
    )


def _remove_partial(out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out, ignore_errors=True)


def _manifest_slices(items, *, size: int, quiet: bool):
    from retrieval.engine.preprocess import load_image_file, prepare_slice

    prepared = []
    for path in tqdm(items.paths, desc="prepare", disable=quiet, file=sys.stderr):
        try:
            pixels, windowed = load_image_file(path)
            prepared.append(prepare_slice(pixels, is_windowed=windowed, size=size))
        except Exception as exc:
            raise CommandError(f"{path}: cannot be read as an image ({exc})") from exc
    return prepared, list(items.labels), list(items.patients)


def _library_slices(*, size: int, quiet: bool):
    """Usable slices of every approved reference case, labelled with its diagnosis."""
    from retrieval.pipeline.runtime import slice_prepare
    from retrieval.selectors import reference_training_slices

    prepared, labels, patients = [], [], []
    rows = reference_training_slices()
    for slice_obj, label, patient in tqdm(rows, desc="prepare", disable=quiet, file=sys.stderr):
        p = slice_prepare(slice_obj=slice_obj, size=size, fov_mm=settings.ILDREVIEW_FOV_MM)
        if p.lung_fraction >= settings.ILDREVIEW_MIN_LUNG_FRACTION:
            prepared.append(p)
            labels.append(label)
            patients.append(patient)
    if not prepared:
        raise CommandError("the reference library has no approved case with usable slices")
    return prepared, labels, patients


def _train(prepared, labels, patients, *, opts):
    from retrieval.engine.recipe import RecipeConfig, train_retrieval_model
    from retrieval.engine.training import TrainConfig

    config = RecipeConfig(
        **backbone_options(opts),
        train=TrainConfig(
            **training_options(opts), loss=opts["loss"], mode=opts["mode"], fusion=opts["fusion"]
        ),
    )
    # patient ids keep a case's slices on one side of the recipe's inner validation split
    return train_retrieval_model(prepared, labels, config, patients=list(patients))


def _train_finetuned(prepared, labels, patients, *, opts, quiet: bool):
    """Fine-tune the backbone, then run the recipe on it: the recipe rebuilds the backbone
    from a saved copy of the tuned weights (its one way in for weights); the tuned backbone
    object, with its provenance (starting weights, `fine_tuned_sha256`, input side), then
    replaces that copy in the model. Slices are prepared at the tuned side, so the recipe's
    features, the model's `size` and serving all use it."""
    import tempfile

    import numpy as np
    import torch

    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.finetune import FinetuneConfig, finetune_backbone

    options = backbone_options(opts)
    backbone = build_backbone(
        options["backbone"], weights=options["weights"], imagenet_file=options["imagenet_file"]
    )
    config = FinetuneConfig(
        input_size=opts["input_size"],
        blocks=opts["blocks"],
        epochs=opts["finetune_epochs"],
        seed=opts["seed"],
    )
    bar = tqdm(total=config.epochs, desc="fine-tune", disable=quiet, file=sys.stderr)
    info = finetune_backbone(
        backbone,
        [p.image for p in prepared],
        np.asarray(labels),
        patients=list(patients),
        config=config,
        progress=lambda done, total: bar.update(done - bar.n),
    )
    bar.close()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "finetuned_backbone.pth"
        torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, weights)
        model = _train(
            prepared, labels, patients, opts={**opts, "mode": "head", "weights": str(weights)}
        )
    from retrieval.engine.backbones import state_sha256

    if state_sha256(model.backbone.state_dict()) != backbone.fine_tuned_sha256:
        raise RuntimeError("the recipe's backbone is not the fine-tuned one")
    model.backbone = backbone.to(model.device).eval()
    model.config.update(
        mode="finetune",
        input_size=config.input_size,
        weights=backbone.weights_source,
        finetune={k: v for k, v in info["config"].items() if k != "device"},
    )
    model.metrics = {
        **(model.metrics or {}),
        "finetune": {k: v for k, v in info.items() if k not in ("trainable_parameters", "config")},
    }
    return model
