"""Upload is all or nothing: the study's rows, its files and its processing job commit together,
and the broker message is sent only after the commit."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from cases.models import Patient, Series, Slice, Study
from cases.services.ingestion import ImportResult, study_import_uploads
from cases.services.upload import study_upload
from retrieval.models import StudyJob
from tests.dicomgen import ct_series_write

pytestmark = pytest.mark.django_db


@pytest.fixture
def series_files(tmp_path) -> list[Path]:
    return ct_series_write(folder=tmp_path / "series", slices=3, size=16).paths


def _uploads(paths: list[Path]) -> list[SimpleUploadedFile]:
    return [SimpleUploadedFile(p.name, p.read_bytes()) for p in paths]


def _media_files() -> list[Path]:
    return [p for p in Path(settings.MEDIA_ROOT).rglob("*") if p.is_file()]


def _publishes(callbacks) -> int:
    return sum(cb.__qualname__.startswith("study_enqueue_processing.") for cb in callbacks)


def test_an_upload_commits_its_study_with_one_queued_job_and_publishes_after_the_commit(
    clinician, series_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        result = study_upload(files=_uploads(series_files), uploader=clinician)

    # The message is an on-commit callback: it is sent only once the rows are committed.
    assert _publishes(callbacks) == 1
    (study,) = result.studies
    job = StudyJob.objects.get(study=study)
    assert study.status == Study.Status.PROCESSING
    assert job.state == StudyJob.State.QUEUED and job.attempts == 1 and job.run_id


def test_uploading_the_same_study_again_queues_it_only_once(
    clinician, series_files, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        first = study_upload(files=_uploads(series_files), uploader=clinician)
        again = study_upload(files=_uploads(series_files), uploader=clinician)

    assert first.created == [True] and again.created == [False] and again.new_series == [0]
    assert StudyJob.objects.get().attempts == 1
    assert _publishes(callbacks) == 1


def test_a_failure_before_the_commit_leaves_no_row_no_file_and_no_job(clinician, series_files):
    seen: list[int] = []

    def fail_after_writing(result: ImportResult) -> None:
        seen.append(Slice.objects.count())  # the rows and files were written by now
        raise RuntimeError("broker decision failed")

    with pytest.raises(RuntimeError, match="broker decision failed"):
        study_import_uploads(
            files=_uploads(series_files), uploader=clinician, before_commit=fail_after_writing
        )

    assert seen == [3]
    assert not Patient.objects.exists() and not Study.objects.exists()
    assert not Series.objects.exists() and not Slice.objects.exists()
    assert not StudyJob.objects.exists()
    assert _media_files() == []
