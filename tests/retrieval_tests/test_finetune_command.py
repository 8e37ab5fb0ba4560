"""`manage.py train_model --mode finetune`: the backbone is partially fine-tuned, the recipe
runs on it, and the artefact serves the tuned backbone at the tuned side."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from tests.retrieval_tests.eval_data import write_manifest

TUNE = ["--mode", "finetune", "--input-size", "64", "--blocks", "1", "--finetune-epochs", "2",
        "--epochs", "1", "--embed-dim", "16", "--reduce-deep", "8"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.django_db
def test_train_model_finetune_saves_the_tuned_backbone_and_serves_it_at_its_side(tmp_path):
    from retrieval.engine.artefact import RetrievalModel, read_artefact_meta
    from retrieval.engine.backbones import build_backbone, state_sha256
    from retrieval.engine.preprocess import load_image_file, prepare_slice

    manifest = write_manifest(
        tmp_path / "data", classes=("normal", "reticular"), patients_per_class=3, size=96
    )
    out = tmp_path / "model"
    call_command(
        "train_model", str(manifest), "--out", str(out), *TUNE, stdout=StringIO(), verbosity=0
    )
    meta = read_artefact_meta(out)
    assert meta["backbone_fine_tuned"] and meta["backbone_stored"]
    assert meta["backbone_weights_source"] == "imagenet"  # provenance: the starting weights
    assert meta["backbone_input_size"] == 64
    assert meta["config"]["mode"] == "finetune" and meta["config"]["size"] == 64
    assert meta["config"]["input_size"] == 64 and meta["config"]["finetune"]["blocks"] == 1
    tuned = meta["metrics"]["finetune"]
    assert 1 <= tuned["epochs_run"] <= 2 and len(tuned["val_history"]) == tuned["epochs_run"] + 1
    assert tuned["n_val"] > 0 and tuned["n_train"] + tuned["n_val"] == 12

    model = RetrievalModel.load(out, device="cpu")
    assert model.backbone.fine_tuned
    assert state_sha256(model.backbone.state_dict()) == meta["backbone_fine_tuned_sha256"]
    imagenet = build_backbone("efficientnet_lite0", weights="imagenet", device="cpu")
    same = state_sha256(imagenet.state_dict()) == meta["backbone_fine_tuned_sha256"]
    assert same == (tuned["best_epoch"] == 0)  # weights differ unless the frozen ones won
    pixels, windowed = load_image_file(next((tmp_path / "data").glob("*.png")))
    emb = model.embed([prepare_slice(pixels, is_windowed=windowed, size=model.config["size"])])
    assert emb.shape[0] == 1 and np.isfinite(emb).all()


@pytest.mark.django_db
def test_train_model_finetune_with_too_few_patients_fails_without_an_artefact(tmp_path):
    manifest = write_manifest(
        tmp_path / "data", classes=("normal", "reticular"), patients_per_class=1, size=32
    )
    out = tmp_path / "model"
    with pytest.raises(CommandError, match="patients"):
        call_command("train_model", str(manifest), "--out", str(out), *TUNE, verbosity=0)
    assert not out.exists()
