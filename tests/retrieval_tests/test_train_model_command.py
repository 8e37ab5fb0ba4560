"""`manage.py train_model`: artefact on disk, optional ModelVersion registration."""

from __future__ import annotations

from io import StringIO

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.management import CommandError, call_command

from retrieval.models import ModelVersion
from retrieval.selectors import model_version_active
from tests.factories import (
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    diagnosis,
    hu_npy_bytes,
)
from tests.retrieval_tests.eval_data import write_manifest

FAST = ["--weights", "random", "--size", "64", "--epochs", "1", "--embed-dim", "16",
        "--reduce-deep", "8"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.django_db
def test_train_model_saves_a_loadable_artefact_and_registers_the_active_version(tmp_path):
    from retrieval.engine.artefact import RetrievalModel

    manifest = write_manifest(tmp_path / "data", classes=("a", "b"), patients_per_class=2, size=64)
    out = tmp_path / "model"
    # A random-weight model on 4 patients is worse than the frozen backbone on the held-out
    # gate: activating it needs the written reason.
    call_command(
        "train_model", str(manifest), "--out", str(out), *FAST, "--activate", "--name", "v1",
        "--override-reason", "test model", stdout=StringIO(), verbosity=0,
    )  # fmt: skip
    version = model_version_active()
    assert version is not None and version.name == "v1"
    assert set(version.holdout["rows"]) == {"frozen", "this"}
    assert version.holdout["n_heldout_patients"] == 2
    assert version.backbone == "efficientnet_lite0"
    assert version.metrics["n_slices"] == 8
    assert version.config["fusion"] == "adaptive"  # the evaluation's headline embedding
    model = RetrievalModel.load(out, device="cpu")
    assert model.class_names == ["a", "b"]
    from retrieval.engine.preprocess import load_image_file, prepare_slice

    pixels, windowed = load_image_file(next((tmp_path / "data").glob("*.png")))
    emb = model.embed([prepare_slice(pixels, is_windowed=windowed, size=64)])
    # The adaptive embedding's width depends on the candidate chosen (frozen vector, whitened
    # axes, learned part, radiomics); it is one unit vector per slice whatever the choice.
    assert emb.ndim == 2 and emb.shape[0] == 1 and emb.shape[1] >= 16
    assert np.linalg.norm(emb[0]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.django_db
def test_train_model_refuses_a_taken_version_name_before_training(tmp_path):
    ModelVersion.objects.create(name="taken", artefact_dir="/x", backbone="resnet50")
    manifest = write_manifest(tmp_path / "data", classes=("a", "b"), patients_per_class=1, size=32)
    with pytest.raises(CommandError, match="already exists"):
        call_command(
            "train_model", str(manifest), "--out", str(tmp_path / "m"), *FAST,
            "--register", "--name", "taken", verbosity=0,
        )  # fmt: skip
    assert not (tmp_path / "m").exists()
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_train_model_needs_a_manifest_or_the_library(tmp_path):
    with pytest.raises(CommandError, match="either MANIFEST.csv or --from-library"):
        call_command("train_model", "--out", str(tmp_path / "m"), verbosity=0)


@pytest.mark.slow
@pytest.mark.django_db
def test_train_model_from_library_uses_approved_cases_only(tmp_path):
    from cases.phantom import chest_phantom

    for n, (name, pattern, state) in enumerate(
        [
            ("Normal", "normal", "approved"),
            ("Normal", "normal", "approved"),
            ("IPF-ILD", "reticulation", "approved"),
            ("IPF-ILD", "reticulation", "approved"),
            ("IPF-ILD", "reticulation", "proposed"),
        ]
    ):
        rc = ReferenceCaseFactory(diagnosis=diagnosis(name), state=state)
        series = SeriesFactory(study=rc.study)
        for i in range(2):
            hu, _ = chest_phantom(size=64, pattern=pattern, seed=10 * n + i)
            SliceFactory(series=series, index=i, pixels=ContentFile(hu_npy_bytes(hu), name="s.npy"))
    out = tmp_path / "lib-model"
    call_command(
        "train_model", "--from-library", "--out", str(out), *FAST, "--register",
        stdout=StringIO(), verbosity=0,
    )  # fmt: skip
    version = ModelVersion.objects.get(name="lib-model")
    assert not version.is_active
    assert version.metrics["source"].startswith("reference library")
    assert version.metrics["n_slices"] == 8  # the proposed case's 2 slices are left out
