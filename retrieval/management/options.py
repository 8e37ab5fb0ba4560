"""Command-line options shared by `train_model` and `evaluate_retrieval`: the parts of the
recipe both commands let the user choose, with the same names, defaults and help."""

from __future__ import annotations

from django.conf import settings


def recipe_arguments_add(parser) -> None:
    """Add --backbone, --weights, --epochs, --embed-dim, --reduce-deep, --size, --seed and
    --limit to an argparse parser."""
    parser.add_argument("--backbone", default=settings.ILDREVIEW_BACKBONE)
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="imagenet | random (timing/tests only) | path to a weights file",
    )
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--embed-dim", type=int, default=128)
    parser.add_argument(
        "--reduce-deep",
        type=int,
        default=None,
        help="ILD-FFN: project the deep vector to N dims before the outer product "
        "(default: the paper's full map)",
    )
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="about N rows (quick runs)")


def backbone_options(opts: dict) -> dict:
    """The backbone keywords of the engine's configs (`RecipeConfig`, `EvalConfig`) from the
    parsed options; a downloaded backbone's ImageNet file comes from the setting
    `ILDREVIEW_RESNET50_WEIGHTS`."""
    return {
        "backbone": opts["backbone"],
        "weights": opts["weights"],
        "imagenet_file": settings.ILDREVIEW_RESNET50_WEIGHTS or None,
        "size": opts["size"],
    }


def training_options(opts: dict) -> dict:
    """The training keywords shared by `TrainConfig` and `EvalConfig` from the parsed
    options."""
    return {
        "epochs": opts["epochs"],
        "embed_dim": opts["embed_dim"],
        "reduce_deep": opts["reduce_deep"],
        "seed": opts["seed"],
    }
