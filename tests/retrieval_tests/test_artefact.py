"""Model artefact: save/load round trip gives identical embeddings; provenance recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cases.phantom import chest_phantom
from retrieval.engine.artefact import ArtefactError, RetrievalModel, read_artefact_meta
from retrieval.engine.backbones import build_backbone
from retrieval.engine.fusion import ILDFFN, ProjectionHead
from retrieval.engine.preprocess import prepare_slice
from retrieval.engine.radiomics import RadiomicsExtractor, Standardizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def radiomics():
    return RadiomicsExtractor()


@pytest.fixture(scope="module")
def slices():
    return [
        prepare_slice(chest_phantom(size=64, pattern=p, seed=s)[0], is_windowed=False, size=64)
        for s, p in enumerate(("normal", "ground_glass", "consolidation"))
    ]


def _model(radiomics, *, fusion="ildffn") -> RetrievalModel:
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights="random", device="cpu")
    dim = len(radiomics.feature_names)
    rng = np.random.default_rng(0)
    standardizer = Standardizer().fit(rng.normal(size=(10, dim)))
    if fusion == "ildffn":
        head = ILDFFN(backbone.out_dim, dim, 16)
    else:
        head = ProjectionHead(dim, 16)
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head.eval(),
        class_names=["Normal", "UIP"],
        config={"fusion": fusion, "size": 64},
        metrics={"final_loss": 0.25},
    )


def test_round_trip_gives_identical_embeddings(tmp_path, radiomics, slices):
    model = _model(radiomics)
    before = model.embed(slices)
    assert before.shape == (3, 16) and before.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "m")
    loaded = RetrievalModel.load(tmp_path / "m", device="cpu")
    np.testing.assert_array_equal(loaded.embed(slices), before)
    assert loaded.class_names == ["Normal", "UIP"]
    assert loaded.backbone_weights_sha256 == model.backbone_weights_sha256
    assert loaded.radiomics_params == model.radiomics_params
    assert loaded.metrics == {"final_loss": 0.25}


def test_embed_features_standardises_raw_radiomics(radiomics, slices):
    model = _model(radiomics)
    from retrieval.engine.features import FeatureExtractor

    deep, rad = FeatureExtractor(model.backbone, radiomics).extract(slices)
    raw = model.embed_features(deep, rad)
    pre = model.embed_features(deep, model.standardizer.transform(rad), standardized=True)
    np.testing.assert_allclose(raw, pre, rtol=1e-6)
    np.testing.assert_allclose(raw, model.embed(slices), rtol=1e-5, atol=1e-6)


def test_config_json_records_provenance(tmp_path, radiomics):
    model = _model(radiomics, fusion="radiomics")
    model.save(tmp_path / "m")
    meta = read_artefact_meta(tmp_path / "m")
    assert meta["backbone_name"] == "efficientnet_lite0"
    assert len(meta["backbone_weights_sha256"]) == 64
    assert meta["backbone_stored"] is True  # random weights cannot be re-downloaded
    assert meta["fusion"] == "radiomics" and meta["head"]["type"] == "ProjectionHead"
    assert len(meta["standardizer"]["mean"]) == len(radiomics.feature_names)
    assert (tmp_path / "m" / "radiomics_params.yaml").read_text() == radiomics.params_text
    json.dumps(meta)  # plain JSON


def test_pretrained_backbone_is_rebuilt_and_its_hash_checked(tmp_path, radiomics):
    backbone = build_backbone("efficientnet_lite0", weights="imagenet", device="cpu")
    dim = len(radiomics.feature_names)
    model = RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=Standardizer().fit(np.random.default_rng(0).normal(size=(4, dim))),
        head=ProjectionHead(backbone.out_dim, 8),
        class_names=["a", "b"],
        config={"fusion": "deep"},
        metrics={},
    )
    model.save(tmp_path / "m")
    assert not (tmp_path / "m" / "backbone.pt").exists()  # rebuilt from the package file
    RetrievalModel.load(tmp_path / "m", device="cpu")
    meta = read_artefact_meta(tmp_path / "m")
    meta["backbone_weights_sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ArtefactError, match="SHA-256"):
        RetrievalModel.load(tmp_path / "m", device="cpu")


def test_loading_a_folder_without_an_artefact_fails_clearly(tmp_path):
    with pytest.raises(ArtefactError, match="not a readable model artefact"):
        RetrievalModel.load(tmp_path, device="cpu")
