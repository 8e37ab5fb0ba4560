"""The training recipe serves the evaluation's headline: the adaptive embedding chosen on a
patient-level inner split of the library, with its abstention thresholds stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cases.phantom import chest_phantom
from retrieval.engine.artefact import RetrievalModel
from retrieval.engine.fusion import AdaptiveEmbedding
from retrieval.engine.preprocess import prepare_slice
from retrieval.engine.recipe import RecipeConfig, train_retrieval_model
from retrieval.engine.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def library():
    slices, labels, patients = [], [], []
    for pattern in ("normal", "ground_glass", "consolidation"):
        for p in range(4):
            for z in (-0.2, 0.2):
                hu, _ = chest_phantom(size=64, pattern=pattern, seed=p, z=z)
                slices.append(prepare_slice(hu, is_windowed=False, size=64))
                labels.append(pattern)
                patients.append(f"{pattern}-{p}")
    return slices, labels, patients


@pytest.mark.slow
def test_recipe_trains_the_adaptive_embedding_and_stores_choice_and_thresholds(tmp_path, library):
    slices, labels, patients = library
    torch.manual_seed(0)
    config = RecipeConfig(weights="random", size=64, train=TrainConfig(seed=0), device="cpu")
    model = train_retrieval_model(slices, labels, config, patients=patients)
    assert isinstance(model.head, AdaptiveEmbedding)
    assert model.fusion == "adaptive"
    assert model.config["selection"]["inner_split"] == "patient-level"
    assert model.config["selection"]["candidate"]
    thresholds = model.config["abstain"]
    assert {"min_similarity", "min_margin", "coverage"} <= set(thresholds)
    assert model.config["knn_k"] in (1, 5, 10)
    before = model.embed(slices)
    np.testing.assert_allclose(np.linalg.norm(before, axis=1), 1.0, rtol=1e-5)
    model.save(tmp_path / "m")
    loaded = RetrievalModel.load(tmp_path / "m", device="cpu")
    assert isinstance(loaded.head, AdaptiveEmbedding)
    np.testing.assert_allclose(loaded.embed(slices), before, atol=1e-6)
    assert loaded.config["abstain"] == thresholds


@pytest.mark.slow
def test_recipe_without_patient_ids_says_its_inner_split_was_slice_level(library):
    slices, labels, _ = library
    torch.manual_seed(0)
    config = RecipeConfig(weights="random", size=64, train=TrainConfig(seed=0), device="cpu")
    model = train_retrieval_model(slices, labels, config)
    assert model.config["selection"]["inner_split"] == "slice-level (no patient ids)"


@pytest.mark.slow
def test_recipe_head_embedding_keeps_the_configured_head(library):
    from retrieval.engine.fusion import ProjectionHead

    slices, labels, patients = library
    config = RecipeConfig(
        weights="random", size=64, embedding="head", device="cpu",
        train=TrainConfig(fusion="deep", epochs=1, embed_dim=8, seed=0),
    )  # fmt: skip
    model = train_retrieval_model(slices, labels, config, patients=patients)
    assert isinstance(model.head, ProjectionHead) and model.fusion == "deep"
