"""Upload = import + start processing; the one entry point of the browser page and the API."""

from __future__ import annotations

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.files.uploadedfile import UploadedFile

from cases.models import Study
from cases.services.ingestion import ImportResult, study_import_uploads
from cases.signals import study_imported


def study_upload(*, files: list[UploadedFile], uploader: AbstractBaseUser) -> ImportResult:
    """Import uploaded DICOM files/zips and queue every study that has not been processed yet
    (status still `uploaded`). Raises `IngestionError` on bad input with nothing saved.

    All or nothing: the processing job is created in the import's own transaction, so a
    client that gets an error has no saved study and one that gets a success has its study
    queued exactly once; the broker message is sent after the commit (a lost one is re-sent
    by the recovery sweep). The queueing itself is the retrieval app's receiver of
    `cases.signals.study_imported`, sent here inside the import's transaction."""

    def announce_unprocessed(result: ImportResult) -> None:
        pks = [study.pk for study in result.studies]
        pending = Study.objects.filter(pk__in=pks, status=Study.Status.UPLOADED).order_by("pk")
        for study in pending:
            study_imported.send(sender=Study, study=study)

    result = study_import_uploads(
        files=files, uploader=uploader, before_commit=announce_unprocessed
    )
    for study in result.studies:
        study.refresh_from_db()
    return result
