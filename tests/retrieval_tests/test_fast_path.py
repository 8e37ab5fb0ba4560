"""The fast path from upload to results: prepared slices cached between stages, embeddings
computed by the prepare stage (backbone in a thread next to radiomics), CAMs from one Grad-CAM
pass per pair with the stored embeddings. Each shortcut must give the results of the long way.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cases.models import Slice, Study
from retrieval.models import SimilarCase, SliceFeatures, StudyResult
from retrieval.pipeline import enqueue, runtime
from retrieval.pipeline import stages as pipeline_stages
from retrieval.pipeline.runtime import vector_from_bytes
from retrieval.pipeline.synthetic import synthetic_study_create
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


def _run_stages(study, *stages: str) -> str:
    from retrieval.selectors import model_version_active

    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    run_id = enqueue.job_new_run(study_id=study.pk, model_version=model_version_active()).run_id
    for stage in stages:
        assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=run_id)
    return run_id


def _embeddings(study, version) -> dict[int, np.ndarray]:
    rows = SliceFeatures.objects.filter(
        slice__series__study=study, model_version=version, usable=True
    ).values_list("slice_id", "embedding")
    return {pk: vector_from_bytes(emb) for pk, emb in rows if emb is not None}


def _rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"), dtype=np.int16)


# --- prepare embeds / embed stage -------------------------------------------------------------


def test_prepare_stage_embeds_like_the_embed_stage(settings, library, clinician, active_version):
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=3, size=SIZE
    )

    settings.ILDREVIEW_PREPARE_EMBEDS = "false"
    runtime.prepared_cache_clear()
    _run_stages(study, "prepare")
    assert _embeddings(study, active_version) == {}  # left to the embed stage
    _run_stages(study, "prepare", "embed")
    separate = _embeddings(study, active_version)

    settings.ILDREVIEW_PREPARE_EMBEDS = "true"
    runtime.prepared_cache_clear()
    _run_stages(study, "prepare")
    merged = _embeddings(study, active_version)

    assert len(separate) == 3 and merged.keys() == separate.keys()
    for pk, vec in separate.items():
        np.testing.assert_allclose(merged[pk], vec, atol=1e-5)


def test_embed_stage_has_nothing_left_after_prepare_embedded(
    settings, library, clinician, active_version
):
    settings.ILDREVIEW_PREPARE_EMBEDS = "true"
    study = synthetic_study_create(uploaded_by=clinician, slices=2, size=SIZE)
    run_id = _run_stages(study, "prepare")
    before = dict(
        SliceFeatures.objects.filter(slice__series__study=study).values_list("pk", "updated_at")
    )
    runtime.prepared_cache_clear()
    assert pipeline_stages.study_embed(study_id=study.pk, run_id=run_id)
    after = dict(
        SliceFeatures.objects.filter(slice__series__study=study).values_list("pk", "updated_at")
    )
    assert after == before  # no row rewritten
    assert runtime.prepared_cache_stats()["misses"] == 0  # no slice loaded or segmented


def test_embed_stage_uses_the_slices_prepare_segmented(
    settings, library, clinician, active_version
):
    settings.ILDREVIEW_PREPARE_EMBEDS = "false"
    study = synthetic_study_create(uploaded_by=clinician, slices=3, size=SIZE)
    runtime.prepared_cache_clear()
    run_id = _run_stages(study, "prepare")
    misses = runtime.prepared_cache_stats()["misses"]
    assert misses == 3  # prepare segmented each slice once

    assert pipeline_stages.study_embed(study_id=study.pk, run_id=run_id)
    stats = runtime.prepared_cache_stats()
    assert stats["misses"] == misses  # the lung masks were not computed again
    assert stats["hits"] == 3
    assert len(_embeddings(study, active_version)) == 3


def test_cached_and_fresh_preparation_give_the_same_results(
    settings, library, clinician, active_version
):
    settings.ILDREVIEW_PREPARE_EMBEDS = "false"
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="ground_glass", slices=3, size=SIZE
    )
    runtime.prepared_cache_clear()
    _run_stages(study, "prepare", "embed", "retrieve")
    cached = _embeddings(study, active_version)
    cases_cached = list(
        SimilarCase.objects.filter(result__study=study).values_list("rank", "reference_case_id")
    )

    settings.ILDREVIEW_PREPARED_CACHE_SLICES = 0  # nothing kept: every stage prepares again
    runtime.prepared_cache_clear()
    _run_stages(study, "prepare", "embed", "retrieve")
    fresh = _embeddings(study, active_version)
    assert runtime.prepared_cache_stats()["size"] == 0
    assert fresh.keys() == cached.keys()
    for pk, vec in cached.items():
        np.testing.assert_array_equal(fresh[pk], vec)
    assert StudyResult.objects.filter(study=study).count() == 1
    assert cases_cached == list(
        SimilarCase.objects.filter(result__study=study).values_list("rank", "reference_case_id")
    )


def test_prepared_slices_are_shared_read_only_and_follow_the_file(
    settings, library, clinician, active_version
):
    study = synthetic_study_create(uploaded_by=clinician, slices=1, size=SIZE)
    slice_obj = Slice.objects.get(series__study=study)
    runtime.prepared_cache_clear()
    first = runtime.slice_prepare(slice_obj=slice_obj, size=SIZE)
    assert runtime.slice_prepare(slice_obj=slice_obj, size=SIZE) is first
    with pytest.raises(ValueError):
        first.mask[0, 0] = True  # shared with later callers: not writable

    # The same row and file name with other pixels (a rewritten file) is not served stale.
    path = slice_obj.pixels.path
    np.save(path, np.full((SIZE, SIZE), -1000, dtype=np.int16))
    import os

    os.utime(path, ns=(1, 1))
    again = runtime.slice_prepare(slice_obj=slice_obj, size=SIZE)
    assert again is not first
    assert again.lung_fraction != first.lung_fraction


def test_auto_mode_embeds_in_prepare_only_where_the_gpu_queue_is_served(settings):
    settings.ILDREVIEW_PREPARE_EMBEDS = "auto"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    assert pipeline_stages.prepare_embeds()  # every task runs in this process
    settings.CELERY_TASK_ALWAYS_EAGER = False
    # No -Q given: this process consumes both configured queues.
    assert runtime.worker_serves_queue("gpu") and runtime.worker_serves_queue("cpu")
    assert not runtime.worker_serves_queue("no-such-queue")
    settings.ILDREVIEW_PREPARE_EMBEDS = "false"
    assert not pipeline_stages.prepare_embeds()


def test_model_warm_up_loads_the_active_version(active_version):
    runtime.model_cache_clear()
    assert runtime.model_warm_up()
    key = (active_version.pk, active_version.artefact_dir)
    assert key in runtime._models  # the first study finds it loaded
    model = runtime._models[key]
    assert runtime.model_load(model_version=active_version) is model


def test_model_warm_up_without_an_active_version_does_nothing(db):
    runtime.model_cache_clear()
    assert runtime.model_warm_up() is False
    assert runtime._models == {}


# --- CAMs -------------------------------------------------------------------------------------


def _reference_cam(model, query, other) -> np.ndarray:
    """Grad-CAM the long way (as before the fast path): the other slice embedded here, the
    query's radiomics extracted here, the backward pass down to the input."""
    import torch
    from pytorch_grad_cam import GradCAM

    from retrieval.engine.backbones import images_to_tensor
    from retrieval.engine.cam import (
        SimilarityToEmbeddingTarget,
        _EmbeddingWithFixedRadiomics,
        _standardised_radiomics,
    )

    other_emb = torch.as_tensor(model.embed([other])[0], dtype=torch.float32)
    rad = _standardised_radiomics(model, query)
    wrapper = _EmbeddingWithFixedRadiomics(model.backbone, model.head, rad)
    modes = [(m, m.training) for m in (model.backbone, model.head)]
    x = images_to_tensor([query.image], size=model.config.get("input_size"))
    try:
        with GradCAM(model=wrapper, target_layers=[model.backbone.target_layer]) as cam:
            cam.compute_input_gradient = True
            heat = cam(input_tensor=x, targets=[SimilarityToEmbeddingTarget(other_emb)])[0]
    finally:
        for module, mode in modes:
            module.train(mode)
    return np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)


def _model_and_slices():
    from tests.retrieval_tests.test_cam import _model, _slice

    # 128 px: at 64 px the random backbone's 2 x 2 map is blank for some pairs.
    model = _model(weights="random", size=128)
    return model, [_slice(size=128, seed=s) for s in (1, 2, 3)]


def test_batched_cams_match_one_pass_per_pair_the_long_way():
    from retrieval.engine.cam import similarity_cams

    model, (a, b, c) = _model_and_slices()
    fast = similarity_cams(model, [a, b, c], [b, a, a])
    for heat, (q, o) in zip(fast, [(a, b), (b, a), (c, a)], strict=True):
        expected = _reference_cam(model, q, o)
        assert heat.shape == expected.shape
        assert float(expected.max()) > 0  # a map with content, not two blank ones
        np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_cams_from_stored_vectors_match_computed_ones():
    from retrieval.engine.cam import similarity_cams

    model, (a, b, _c) = _model_and_slices()
    emb_b = model.embed([b])[0]
    rad_a = model.radiomics.extract(a.image, a.mask)
    given = similarity_cams(model, [a], [b], other_embeddings=[emb_b], query_radiomics=[rad_a])
    computed = similarity_cams(model, [a], [b])
    np.testing.assert_allclose(given[0], computed[0], atol=1e-5)


def test_a_cam_job_with_stored_vectors_writes_the_overlays_of_the_long_way(
    settings, library, clinician, active_version
):
    from retrieval.engine.cam import lung_cam_png

    settings.CELERY_TASK_ALWAYS_EAGER = False  # keep the CAM jobs out of the retrieve stage
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=2, size=SIZE
    )
    _run_stages(study, "prepare", "embed", "retrieve")
    case = SimilarCase.objects.filter(result__study=study).order_by("rank").first()
    assert case.query_cam == "" and case.reference_cam == ""

    assert pipeline_stages.similar_case_explain(similar_case_id=case.pk)
    case.refresh_from_db()
    model = runtime.model_load(model_version=active_version)
    q = runtime.slice_prepare(slice_obj=case.query_slice, size=SIZE)
    r = runtime.slice_prepare(slice_obj=case.reference_slice, size=SIZE)
    expected = {
        "query": lung_cam_png(_reference_cam(model, q, r), q.mask),
        "reference": lung_cam_png(_reference_cam(model, r, q), r.mask),
    }
    for side, field in (("query", case.query_cam), ("reference", case.reference_cam)):
        with field.open("rb") as fh:
            got = _rgba(fh.read())
        want = _rgba(expected[side])
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 2  # float rounding of the stored embeddings only
