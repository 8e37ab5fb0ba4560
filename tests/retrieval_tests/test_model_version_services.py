"""Registering and activating model versions."""

from __future__ import annotations

import json

import pytest

from retrieval.models import ModelVersion
from retrieval.selectors import model_version_active
from retrieval.services import ModelVersionError, model_version_activate, model_version_register


def _fake_artefact(folder, *, backbone="efficientnet_lite0"):
    """An artefact folder's description file only (registration reads no weights)."""
    folder.mkdir(parents=True)
    meta = {
        "backbone_name": backbone,
        "backbone_weights_sha256": "ab" * 32,
        "config": {"fusion": "ildffn", "epochs": 3},
        "metrics": {"final_loss": 0.1},
    }
    (folder / "config.json").write_text(json.dumps(meta))
    return folder


@pytest.mark.django_db
def test_register_copies_backbone_config_and_metrics_from_the_artefact(tmp_path):
    version = model_version_register(artefact_dir=_fake_artefact(tmp_path / "a"), name="a")
    assert version.backbone == "efficientnet_lite0"
    assert version.backbone_weights_sha256 == "ab" * 32
    assert version.config["epochs"] == 3
    assert not version.is_active
    assert model_version_active() is None


@pytest.mark.django_db
def test_activating_a_version_deactivates_the_previous_one(tmp_path):
    first = model_version_register(
        artefact_dir=_fake_artefact(tmp_path / "a"), name="a", activate=True
    )
    second = model_version_register(artefact_dir=_fake_artefact(tmp_path / "b"), name="b")
    model_version_activate(version=second)
    first.refresh_from_db()
    assert not first.is_active
    assert model_version_active() == second
    assert ModelVersion.objects.filter(is_active=True).count() == 1


@pytest.mark.django_db
def test_register_rejects_a_folder_without_artefact_and_saves_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelVersionError, match="not a readable model artefact"):
        model_version_register(artefact_dir=tmp_path / "empty", name="x")
    with pytest.raises(ModelVersionError, match="does not exist"):
        model_version_register(artefact_dir=tmp_path / "missing", name="x")
    assert not ModelVersion.objects.exists()
