"""Robust evaluation input: unreadable rows are listed and skipped (or fail with --strict),
grey saved as colour is read as grey, other colour is converted with a warning, and 16-bit
Hounsfield-unit TIFFs whose three channels repeat one image evaluate as HU."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from django.core.management import CommandError, call_command
from PIL import Image

from retrieval.engine.evaluation import EvalConfig, check_images, evaluate, read_manifest
from retrieval.engine.preprocess import load_image_file
from tests.retrieval_tests.eval_data import chest_png, write_manifest


def _break_one(manifest):
    """Overwrite the first image of the manifest with bytes no decoder reads."""
    first = manifest.parent / next(csv.DictReader(manifest.open()))["path"]
    first.write_bytes(b"this is not an image")
    return first


def test_check_images_lists_an_unreadable_row_with_its_reason_and_skips_it(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=3, size=32)
    broken = _break_one(manifest)
    items = read_manifest(manifest)
    kept = check_images(items)
    assert len(kept) == len(items) - 1
    assert broken.resolve() not in kept.paths
    assert len(kept.skipped) == 1
    assert kept.skipped[0]["path"] == str(broken.resolve())
    assert "unknown format" in kept.skipped[0]["reason"]


def test_strict_check_fails_on_the_unreadable_row(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=3, size=32)
    broken = _break_one(manifest)
    with pytest.raises(ValueError, match=broken.name):
        check_images(read_manifest(manifest), strict=True)


def test_missing_file_is_skipped_unless_strict(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=3, size=32)
    (tmp_path / "a-p0-s0.png").unlink()
    items = read_manifest(manifest, strict=False)
    assert items.skipped == [
        {"line": 2, "path": "a-p0-s0.png", "reason": "a-p0-s0.png does not exist"}
    ]
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(manifest)


def test_grey_saved_as_rgb_is_read_as_the_grey_image_without_warning(tmp_path, recwarn):
    grey = chest_png(label="reticular", size=48, rng=np.random.default_rng(0))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "g.png")
    pixels, windowed = load_image_file(tmp_path / "g.png")
    assert windowed and pixels.ndim == 2
    np.testing.assert_array_equal(pixels, grey)
    assert not [w for w in recwarn if "grey" in str(w.message)]


def test_colour_image_is_converted_with_a_warning_listed_by_the_check(tmp_path):
    rng = np.random.default_rng(0)
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=2, size=32)
    first = manifest.parent / next(csv.DictReader(manifest.open()))["path"]
    grey = np.asarray(Image.open(first))
    colour = np.stack([grey, np.roll(grey, 3, axis=1), rng.integers(0, 255, grey.shape)], -1)
    Image.fromarray(colour.astype(np.uint8)).save(first)
    with pytest.warns(UserWarning, match=first.name):
        pixels, _ = load_image_file(first)
    assert pixels.ndim == 2 and pixels.dtype == np.uint8
    kept = check_images(read_manifest(manifest))
    assert len(kept) == 8 and not kept.skipped
    assert [c["path"] for c in kept.converted] == [str(first.resolve())]


def _hu_tiff_manifest(folder, *, n_patients=3, size=48):
    """int16 HU slices saved as 3 repeated channels: 'dense' lungs (-300 HU) vs 'clear'
    (-850 HU) inside a soft-tissue body."""
    rng = np.random.default_rng(0)
    rows = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.5) / 0.38) ** 2 < 1
    lungs = (((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.27) ** 2 < 1) | (
        ((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.27) ** 2 < 1
    )
    for label, lung_hu in (("dense", -300), ("clear", -850)):
        for p in range(n_patients):
            for s in range(2):
                hu = np.where(body, 40, -1000) + rng.normal(0, 20, (size, size))
                hu = np.where(lungs, lung_hu + rng.normal(0, 30, (size, size)), hu)
                hu = hu.astype(np.int16)
                name = f"{label}-{p}-{s}.tif"
                tifffile.imwrite(folder / name, np.stack([hu] * 3, axis=-1), photometric="rgb")
                rows.append({"path": name, "label": label, "patient_id": f"{label}{p}"})
    manifest = folder / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_16_bit_three_channel_tiff_is_read_as_hounsfield_units(tmp_path):
    manifest = _hu_tiff_manifest(tmp_path)
    pixels, windowed = load_image_file(tmp_path / "dense-0-0.tif")
    assert pixels.dtype == np.int16 and pixels.ndim == 2 and not windowed
    assert pixels.min() < -500  # HU, not a windowed 8-bit image
    kept = check_images(read_manifest(manifest))
    assert len(kept) == 12 and not kept.skipped and not kept.converted


@pytest.mark.slow
def test_evaluation_of_16_bit_tiffs_with_a_broken_row_lists_it_and_finishes(tmp_path):
    manifest = _hu_tiff_manifest(tmp_path, n_patients=6)
    (tmp_path / "clear-5-1.tif").write_bytes(b"II*\x00broken")
    config = EvalConfig(
        weights="random", size=48, epochs=1, embed_dim=8, reduce_deep=4,
        extra_variants=(), cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    report, _ = evaluate(items=read_manifest(manifest), folds=2, config=config)
    assert report["meta"]["n_skipped"] == 1 and report["meta"]["n_read"] == 23
    assert report["skipped"][0]["path"].endswith("clear-5-1.tif")
    assert "TIFF" in report["skipped"][0]["reason"]
    assert sum(v["support"] for v in report["per_class"].values()) == 23


def test_evaluate_command_with_strict_fails_clearly_on_an_unreadable_row(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=3, size=32)
    broken = _break_one(manifest)
    with pytest.raises(CommandError, match=broken.name):
        call_command(
            "evaluate_retrieval", str(manifest), "--out", str(tmp_path / "o"), "--strict",
            "--weights", "random", "--size", "32", "--cache-dir", str(tmp_path / "cache"),
            verbosity=0,
        )  # fmt: skip
    assert not (tmp_path / "o" / "report.json").exists()


@pytest.mark.slow
def test_finetune_mode_adds_the_tuned_row_and_records_each_folds_tuning(tmp_path):
    manifest = write_manifest(
        tmp_path, classes=("normal", "reticular"), patients_per_class=6, size=48
    )
    config = EvalConfig(
        weights="random", size=48, epochs=1, embed_dim=8, reduce_deep=4, extra_variants=(),
        cache_dir=str(tmp_path / "cache"), mode="finetune", finetune_input_size=32,
        finetune_epochs=1,
    )  # fmt: skip
    report, _ = evaluate(items=read_manifest(manifest), folds=2, config=config)
    assert "finetuned" in report["ablation"] and "deep_only" in report["ablation"]
    for fold in report["folds"]:
        assert fold["finetune"]["epochs_run"] == 1
        assert fold["finetune"]["best_epoch"] in (0, 1)
    # prepared slices were cached once per image for the next run
    assert len(list((tmp_path / "cache" / "prepared").rglob("*.npy"))) == 24
