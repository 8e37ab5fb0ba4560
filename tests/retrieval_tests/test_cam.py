"""Similarity CAM: shape, range, PNG overlay, and that the map follows a focal lesion."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from retrieval.engine.cam import overlay_png, similarity_cam


def _model(*, weights: str, size: int):
    """A RetrievalModel with an untrained ILD-FFN head over the given backbone."""
    import torch

    from retrieval.engine.artefact import RetrievalModel
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.fusion import ILDFFN
    from retrieval.engine.radiomics import RadiomicsExtractor, Standardizer

    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights=weights, device="cpu")
    radiomics = RadiomicsExtractor()
    dim = len(radiomics.feature_names)
    rng = np.random.default_rng(0)
    standardizer = Standardizer().fit(rng.normal(size=(8, dim)))
    head = ILDFFN(deep_dim=backbone.out_dim, rad_dim=dim, embed_dim=32)
    return RetrievalModel(
        backbone=backbone,
        radiomics=radiomics,
        standardizer=standardizer,
        head=head,
        class_names=["a", "b"],
        config={"fusion": "ildffn", "size": size, "embed_dim": 32},
        metrics={},
    )


def _slice(*, size: int, lesion_center=None, seed: int = 0):
    from cases.phantom import chest_phantom
    from retrieval.engine.preprocess import prepare_slice

    hu, _ = chest_phantom(
        size=size,
        pattern="normal",
        seed=seed,
        lesion_center=lesion_center,
        focal=lesion_center is not None,
    )
    return prepare_slice(hu, is_windowed=False, size=size)


def test_cam_has_the_slice_shape_and_values_in_unit_range():
    model = _model(weights="random", size=64)
    q = _slice(size=64, seed=1)
    o = _slice(size=64, seed=2)
    heat = similarity_cam(model, q, o)
    assert heat.shape == (64, 64)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_overlay_png_is_an_rgb_png_of_the_slice_size():
    image = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    heat = np.zeros((32, 32), np.float32)
    heat[8:16, 8:16] = 1.0
    png = overlay_png(image, heat, alpha=0.5)
    decoded = np.asarray(Image.open(io.BytesIO(png)))
    assert decoded.shape == (32, 32, 3)
    # the hot square is tinted (red-ish in 'jet'), the cold corner is blue-ish grey
    assert decoded[12, 12, 0] > decoded[12, 12, 2]
    assert decoded[30, 30, 2] > decoded[30, 30, 0]


def test_overlay_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_png(np.zeros((8, 8)), np.zeros((4, 4)))


@pytest.mark.slow
def test_cam_follows_a_focal_lesion_from_left_to_right_lung():
    """Pretrained backbone, reference = the same lesion: the heat inside the lesion's half of
    the chest is larger than in the mirror half, and it moves when the lesion moves."""
    size = 224
    model = _model(weights="imagenet", size=size)
    left_c, right_c = (0.5, 0.3), (0.5, 0.7)  # (row, col) fractions
    ratios = {}
    for name, centre in (("left", left_c), ("right", right_c)):
        q = _slice(size=size, lesion_center=centre, seed=3)
        ref = _slice(size=size, lesion_center=centre, seed=4)
        heat = similarity_cam(model, q, ref)
        half_left = heat[:, : size // 2].mean()
        half_right = heat[:, size // 2 :].mean()
        ratios[name] = half_left / max(half_right, 1e-6)
    assert ratios["left"] > ratios["right"]


def test_cam_leaves_the_model_in_eval_mode_and_its_embeddings_unchanged():
    import numpy as np

    from cases.phantom import chest_phantom
    from retrieval.engine.artefact import RetrievalModel
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.cam import similarity_cam
    from retrieval.engine.fusion import ProjectionHead
    from retrieval.engine.preprocess import prepare_slice
    from retrieval.engine.radiomics import RadiomicsExtractor

    backbone = build_backbone("efficientnet_lite0", weights="random")
    head = ProjectionHead(backbone.out_dim, 16).eval()
    model = RetrievalModel(
        backbone=backbone,
        radiomics=RadiomicsExtractor(),
        standardizer=None,
        head=head,
        class_names=["a", "b"],
        config={"fusion": "deep", "size": 64},
        metrics={},
    )
    slices = [
        prepare_slice(chest_phantom(size=64, pattern=p, seed=1)[0], is_windowed=False, size=64)
        for p in ("normal", "consolidation")
    ]
    before = model.embed(slices)
    similarity_cam(model, slices[0], slices[1])
    assert not backbone.training and not head.training
    np.testing.assert_allclose(model.embed(slices), before, atol=1e-6)
