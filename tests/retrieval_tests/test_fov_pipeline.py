"""A model trained with a physical field of view (ILDREVIEW_FOV_MM) prepares DICOM slices
at it everywhere in the pipeline, and its CAM overlays land on the slice the page shows."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cases.models import Series, Study
from retrieval.engine.preprocess import prepare_slice
from retrieval.models import ModelVersion, SliceFeatures
from retrieval.pipeline import enqueue
from retrieval.pipeline import stages as pipeline_stages
from retrieval.pipeline.runtime import (
    model_fov_mm,
    model_load,
    slice_pixels_load,
    slice_prepare,
)
from retrieval.pipeline.synthetic import synthetic_study_create
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]

SPACING_MM = 2.0  # an 80-px synthetic slice then covers 160 mm
FOV_MM = 200.0  # > 160 mm: the frame reaches beyond the slice on every side
SOURCE = 80  # source slices larger than the model's 64 px, so the grids differ


@pytest.fixture
def fov_version(tiny_artefact, pipeline_env, tmp_path) -> ModelVersion:
    folder = tmp_path / "fov-model"
    shutil.copytree(tiny_artefact, folder)
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["fov_mm"] = FOV_MM
    (folder / "config.json").write_text(json.dumps(meta))
    return ModelVersion.objects.create(
        name="tiny-fov", artefact_dir=str(folder), backbone="efficientnet_lite0", is_active=True
    )


def _study(clinician, *, spacing: bool = True) -> Study:
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=2, size=SOURCE
    )
    if spacing:
        Series.objects.filter(study=study).update(
            pixel_spacing_row=SPACING_MM, pixel_spacing_col=SPACING_MM
        )
    return study


def _slices(study):
    return list(Series.objects.get(study=study).slices.order_by("index"))


def test_the_model_records_its_field_of_view(fov_version):
    assert model_fov_mm(model_load(model_version=fov_version)) == FOV_MM


def test_slice_prepare_resamples_a_slice_with_a_spacing_and_leaves_one_without(
    fov_version, clinician
):
    with_spacing = _slices(_study(clinician))[0]
    without = _slices(_study(clinician, spacing=False))[0]
    a = slice_prepare(slice_obj=with_spacing, size=SIZE, fov_mm=FOV_MM)
    b = slice_prepare(slice_obj=without, size=SIZE, fov_mm=FOV_MM)
    plain = slice_prepare(slice_obj=with_spacing, size=SIZE)
    assert a.frame is not None and a.frame.width == pytest.approx(FOV_MM / SPACING_MM)
    assert b.frame is None and plain.frame is None
    assert not np.array_equal(a.image, plain.image)  # cached apart: fov is in the key


def test_the_prepare_stage_prepares_slices_at_the_model_field_of_view(fov_version, clinician):
    study = _study(clinician)
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    run_id = enqueue.job_new_run(study_id=study.pk, model_version=fov_version).run_id
    assert pipeline_stages.STAGE_SERVICES["prepare"](study_id=study.pk, run_id=run_id)

    for s in _slices(study):
        px = slice_pixels_load(slice_obj=s).pixels
        want = prepare_slice(
            px, is_windowed=False, size=SIZE, pixel_spacing=(SPACING_MM,) * 2, fov_mm=FOV_MM
        ).lung_fraction
        whole = prepare_slice(px, is_windowed=False, size=SIZE).lung_fraction
        got = SliceFeatures.objects.get(slice=s, model_version=fov_version).lung_fraction
        assert got == pytest.approx(want) and abs(want - whole) > 0.01


def test_cam_overlays_of_a_resampled_slice_are_on_the_source_grid(fov_version, clinician):
    query, ref = _slices(_study(clinician))
    q_png, r_png = pipeline_stages.cam_pair_png(
        model=model_load(model_version=fov_version),
        size=SIZE,
        query_slice=query,
        reference_slice=ref,
    )
    for png, s in ((q_png, query), (r_png, ref)):
        rgba = np.asarray(Image.open(io.BytesIO(png)))
        assert rgba.shape == (SOURCE, SOURCE, 4)  # the slice's grid, not the model's 64 px
        # (what the random-weight test model's CAM draws may be nothing: no content check)
        drawn = rgba[..., 3] > 0
        lung = _source_lungs(s)
        assert (drawn & ~lung).sum() <= 0.1 * max(int(drawn.sum()), 1)


def _source_lungs(slice_obj) -> np.ndarray:
    px = slice_pixels_load(slice_obj=slice_obj).pixels
    return prepare_slice(px, is_windowed=False, size=SOURCE).mask


def test_a_heat_map_over_the_whole_resampled_slice_is_drawn_on_the_source_lungs(
    fov_version, clinician
):
    from retrieval.engine.cam import lung_cam_png

    s = _slices(_study(clinician))[0]
    prepared = slice_prepare(slice_obj=s, size=SIZE, fov_mm=FOV_MM)
    heat, mask = pipeline_stages._on_source_grid(np.ones((SIZE, SIZE), np.float32), prepared)
    assert heat.shape == mask.shape == (SOURCE, SOURCE)
    drawn = np.asarray(Image.open(io.BytesIO(lung_cam_png(heat, mask))))[..., 3] > 0
    lung = _source_lungs(s)
    assert (drawn & lung).sum() / (drawn | lung).sum() > 0.8


def test_models_trained_for_the_library_record_ildreview_fov_mm(settings, tiny_artefact):
    from retrieval.engine.artefact import read_artefact_meta
    from retrieval.pipeline.bootstrap import library_recipe_config

    settings.ILDREVIEW_FOV_MM = 360.0
    config = library_recipe_config(
        backbone_name="efficientnet_lite0", weights="random", size=SIZE, epochs=1
    )
    assert config.fov_mm == 360.0
    # ... and the recipe writes it into the model's config (None: trained without it)
    assert read_artefact_meta(tiny_artefact)["config"]["fov_mm"] is None
