"""Stage services of the study pipeline: results, progress, idempotency, failures."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from cases.models import Slice, Study
from retrieval.models import SimilarCase, SliceFeatures, StudyJob, StudyResult
from retrieval.pipeline import enqueue
from retrieval.pipeline import stages as pipeline_stages
from retrieval.pipeline.synthetic import synthetic_study_create
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


def _enqueue_and_run(study, django_capture_on_commit_callbacks):
    """Enqueue like an upload does; the on-commit chain runs eagerly (tests' Celery config)."""
    with django_capture_on_commit_callbacks(execute=True):
        job = enqueue.study_enqueue_processing(study=study)
    study.refresh_from_db()
    return job


def _run_stages(study, *stages: str) -> str:
    """Start a run in-process (no broker) and execute `stages` of it; returns the run id."""
    from retrieval.selectors import model_version_active

    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    run_id = enqueue.job_new_run(study_id=study.pk, model_version=model_version_active()).run_id
    for stage in stages:
        assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=run_id)
    return run_id


def _media_files(folder: str) -> list[str]:
    root = Path(settings.MEDIA_ROOT) / folder
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.slow
def test_processing_a_study_stores_ranked_results_with_cam_files_and_marks_it_ready(
    library, clinician, active_version, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=3, size=SIZE
    )
    _enqueue_and_run(study, django_capture_on_commit_callbacks)

    assert study.status == Study.Status.READY_FOR_REVIEW
    assert (study.progress_stage, study.progress_percent) == ("done", 100)
    result = StudyResult.objects.get(study=study, model_version=active_version)
    cases = list(result.cases.order_by("rank"))
    assert [c.rank for c in cases] == [1, 2]  # ILDREVIEW_RESULTS_TOP_K = 2 in the tests
    assert [c.score for c in cases] == sorted((c.score for c in cases), reverse=True)
    assert result.key_slice_id == cases[0].query_slice_id
    assert result.suggested_diagnosis is not None
    assert sum(result.votes.values()) == pytest.approx(1.0)
    assert result.suggested_diagnosis.code == max(result.votes, key=result.votes.get)
    for c in cases:
        assert c.query_slice.series.study_id == study.pk
        assert c.reference_slice.series.study_id == c.reference_case.study_id
        for f in (c.query_cam, c.reference_cam):
            assert f.name.endswith(".png")
            assert f.open("rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert StudyJob.objects.get(study=study).state == StudyJob.State.DONE


@pytest.mark.slow
def test_rerunning_every_stage_of_a_run_creates_no_duplicate_rows_or_files(
    library, clinician, active_version, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="ground_glass", slices=3, size=SIZE
    )
    # The Retry action on a failed study.
    Study.objects.filter(pk=study.pk).update(status=Study.Status.FAILED, status_message="boom")
    study.refresh_from_db()
    job = _enqueue_and_run(study, django_capture_on_commit_callbacks)
    assert (study.status, study.status_message) == (Study.Status.READY_FOR_REVIEW, "")
    before = {
        "features": SliceFeatures.objects.filter(slice__series__study=study).count(),
        "results": StudyResult.objects.filter(study=study).count(),
        "cases": list(
            SimilarCase.objects.filter(result__study=study).values_list(
                "rank", "reference_case_id", "query_cam", "reference_cam"
            )
        ),
        "files": _media_files(f"results/{study.pk}"),
    }
    # A worker died after the last stage but before the ack: the same run is replayed (with
    # the CAM jobs that the retrieve stage publishes on commit).
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    with django_capture_on_commit_callbacks(execute=True):
        for stage in pipeline_stages.STAGES:
            assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=job.run_id)
    after = {
        "features": SliceFeatures.objects.filter(slice__series__study=study).count(),
        "results": StudyResult.objects.filter(study=study).count(),
        "cases": list(
            SimilarCase.objects.filter(result__study=study).values_list(
                "rank", "reference_case_id", "query_cam", "reference_cam"
            )
        ),
        "files": _media_files(f"results/{study.pk}"),
    }
    assert after == before
    assert before["features"] == 3 and before["results"] == 1
    assert len(before["files"]) == 2 * len(before["cases"])


def test_a_stage_message_of_an_older_run_does_nothing(library, clinician, active_version):
    study = synthetic_study_create(uploaded_by=clinician, slices=2, size=SIZE)
    old = _run_stages(study, "prepare", "embed", "retrieve")
    result_id = StudyResult.objects.get(study=study).pk
    new = _run_stages(study)  # re-enqueued (e.g. by recovery): a new run owns the study

    assert new != old
    for stage in pipeline_stages.STAGES:
        assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=old) is False
    assert StudyResult.objects.get(study=study).pk == result_id
    assert Study.objects.get(pk=study.pk).status == Study.Status.PROCESSING


def test_slices_without_enough_lung_are_never_queried(library, clinician, active_version):
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="normal", slices=2, empty_slices=3, size=SIZE
    )
    _run_stages(study, "prepare", "embed", "retrieve")

    result = StudyResult.objects.get(study=study)
    assert (result.query_slice_count, result.excluded_slice_count) == (2, 3)
    empty = Slice.objects.filter(series__study=study, index__gte=2)
    assert all(s.lung_fraction < settings.ILDREVIEW_MIN_LUNG_FRACTION for s in empty)
    used = set(SimilarCase.objects.filter(result=result).values_list("query_slice_id", flat=True))
    assert used.isdisjoint({s.pk for s in empty})
    assert not SliceFeatures.objects.filter(slice__in=empty).exclude(embedding=None).exists()


def test_a_study_with_no_lung_at_all_fails_with_a_clear_reason(
    library, clinician, active_version, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(uploaded_by=clinician, slices=0, empty_slices=2, size=SIZE)
    with pytest.raises(pipeline_stages.PipelineDataError):
        _enqueue_and_run(study, django_capture_on_commit_callbacks)
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "lung fraction" in study.status_message
    assert not StudyResult.objects.filter(study=study).exists()


def test_without_an_active_model_the_study_fails_and_says_how_to_fix_it(
    clinician, pipeline_env, django_capture_on_commit_callbacks
):
    study = synthetic_study_create(uploaded_by=clinician, slices=1, size=SIZE)
    with pytest.raises(pipeline_stages.PipelineDataError):
        _enqueue_and_run(study, django_capture_on_commit_callbacks)
    study.refresh_from_db()
    assert study.status == Study.Status.FAILED
    assert "bootstrap_model" in study.status_message


def test_enqueue_refuses_a_status_outside_the_machine_and_saves_nothing(clinician, pipeline_env):
    study = synthetic_study_create(uploaded_by=clinician, slices=1, size=SIZE)
    # Every known status may go (back) to processing; anything else is refused.
    Study.objects.filter(pk=study.pk).update(status="archived")
    with pytest.raises(ValueError, match="cannot be processed"):
        enqueue.study_enqueue_processing(study=study)
    assert not StudyJob.objects.filter(study=study).exists()
    assert Study.objects.get(pk=study.pk).status == "archived"


def test_a_reference_study_is_not_returned_as_its_own_similar_case(
    library, active_version, settings
):
    settings.ILDREVIEW_RESULTS_TOP_K = len(library)
    own = library[0]
    _run_stages(own.study, "prepare", "embed", "retrieve")
    ids = set(
        SimilarCase.objects.filter(result__study=own.study).values_list(
            "reference_case_id", flat=True
        )
    )
    assert own.pk not in ids
    assert ids == {rc.pk for rc in library[1:]}  # every other case still fills the k places
