"""Serving a fine-tuned backbone: a model whose EfficientNet-Lite1 was partially fine-tuned
saves its backbone, reloads with identical embeddings at the side it was tuned at, and refuses
a backbone file that changed; an ImageNet Lite2 model is rebuilt from its package instead."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.engine.artefact import ArtefactError, RetrievalModel, read_artefact_meta
from retrieval.engine.backbones import build_backbone, state_sha256
from retrieval.engine.finetune import FinetuneConfig, embed_images, finetune_backbone
from retrieval.engine.fusion import ProjectionHead
from retrieval.engine.preprocess import PreparedSlice
from retrieval.engine.radiomics import RadiomicsExtractor
from tests.retrieval_tests.test_finetune import textures

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TUNED_SIZE = 48


@pytest.fixture(scope="module")
def radiomics():
    return RadiomicsExtractor()


@pytest.fixture(scope="module")
def data():
    return textures(patients=6, per_patient=3)


def _slices(images) -> list[PreparedSlice]:
    return [
        PreparedSlice(image=im, mask=np.ones(im.shape, bool), lung_fraction=1.0) for im in images
    ]


def _model(backbone, radiomics) -> RetrievalModel:
    torch.manual_seed(0)
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=None,
        head=ProjectionHead(backbone.out_dim, 16).eval(),
        class_names=["sine", "square"],
        config={"fusion": "deep", "size": 64, "input_size": None},
    )


@pytest.fixture(scope="module")
def tuned_lite1(data):
    images, labels, patients = data
    backbone = build_backbone("efficientnet_lite1", weights="imagenet", device="cpu")
    config = FinetuneConfig(
        input_size=TUNED_SIZE, blocks=1, epochs=1, batch_size=6, val_fraction=0.0
    )
    finetune_backbone(backbone, images, labels, patients=patients, config=config)
    return backbone


def test_fine_tuned_lite1_round_trips_with_identical_embeddings(
    tmp_path, data, radiomics, tuned_lite1
):
    images = data[0][:5]
    model = _model(tuned_lite1, radiomics)
    assert model.config["input_size"] == TUNED_SIZE  # serving embeds at the tuned side
    rad = np.zeros((len(images), len(radiomics.feature_names)))
    before = model.embed(_slices(images), radiomics=rad)
    model.save(tmp_path / "m")
    meta = read_artefact_meta(tmp_path / "m")
    assert meta["backbone_name"] == "efficientnet_lite1" and meta["backbone_stored"]
    assert meta["backbone_fine_tuned"] and meta["backbone_input_size"] == TUNED_SIZE
    assert meta["backbone_fine_tuned_sha256"] == tuned_lite1.fine_tuned_sha256
    assert (tmp_path / "m" / "backbone.pt").is_file()

    loaded = RetrievalModel.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(loaded.embed(_slices(images), radiomics=rad), before)
    np.testing.assert_array_equal(
        embed_images(loaded.backbone, images, input_size=TUNED_SIZE),
        embed_images(tuned_lite1, images, input_size=TUNED_SIZE),
    )
    assert loaded.backbone.fine_tuned and loaded.backbone.input_size == TUNED_SIZE
    assert loaded.backbone.fine_tuned_sha256 == tuned_lite1.fine_tuned_sha256
    assert loaded.backbone_weights_sha256 == tuned_lite1.weights_sha256  # the starting weights
    # the fine-tuned backbone is not the package's ImageNet one
    imagenet = build_backbone("efficientnet_lite1", weights="imagenet", device="cpu")
    assert state_sha256(imagenet.state_dict()) != loaded.backbone.fine_tuned_sha256


def test_changed_fine_tuned_backbone_file_is_refused(tmp_path, radiomics, tuned_lite1):
    _model(tuned_lite1, radiomics).save(tmp_path / "m")
    state = torch.load(tmp_path / "m" / "backbone.pt", weights_only=True)
    state["features.3.weight"] = state["features.3.weight"] * 1.01
    torch.save(state, tmp_path / "m" / "backbone.pt")
    with pytest.raises(ArtefactError, match="SHA-256"):
        RetrievalModel.load(tmp_path / "m", device="cpu")


def test_imagenet_lite2_model_is_rebuilt_from_its_package(tmp_path, data, radiomics):
    images = data[0][:3]
    backbone = build_backbone("efficientnet_lite2", weights="imagenet", device="cpu")
    model = _model(backbone, radiomics)
    model.config["input_size"] = 64
    rad = np.zeros((len(images), len(radiomics.feature_names)))
    before = model.embed(_slices(images), radiomics=rad)
    model.save(tmp_path / "m")
    meta = read_artefact_meta(tmp_path / "m")
    assert not meta["backbone_stored"] and not (tmp_path / "m" / "backbone.pt").exists()
    loaded = RetrievalModel.load(tmp_path / "m", device="cpu")
    assert loaded.backbone_name == "efficientnet_lite2"
    np.testing.assert_array_equal(loaded.embed(_slices(images), radiomics=rad), before)
