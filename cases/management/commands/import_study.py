"""`manage.py import_study PATH [PATH ...] --uploader USERNAME`: import CT studies from DICOM
files, folders of them and zip archives, through the same service as the browser upload."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from cases.models import Study
from cases.services.ingestion import IngestionError, study_import_paths


class Command(BaseCommand):
    help = (
        "Import CT studies from DICOM files, folders (recursively; files with or without .dcm) "
        "and zip archives. Prints the id of each study created or found; importing the same "
        "instances again creates nothing. Bad input is refused as a whole with the file and "
        "the reason, and nothing is saved."
    )

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", type=Path, help="DICOM file, folder or zip")
        parser.add_argument("--uploader", required=True, help="username recorded as uploader")
        parser.add_argument(
            "--source",
            choices=[c for c, _ in Study.Source.choices],
            default=Study.Source.UPLOAD,
            help="recorded origin of the studies (default: upload)",
        )

    def handle(self, *args, paths: list[Path], uploader: str, source: str, **options):
        user = get_user_model().objects.filter(username=uploader).first()
        if user is None:
            raise CommandError(f"no user named {uploader!r}")
        try:
            result = study_import_paths(paths=paths, uploader=user, source=source)
        except IngestionError as exc:
            raise CommandError(str(exc)) from exc
        for study, created, new in zip(
            result.studies, result.created, result.new_series, strict=True
        ):
            series = study.series.count()
            slices = sum(study.series.values_list("slice_count", flat=True))
            verb = "created" if created else "found"
            extra = f" (added {new} new series)" if new and not created else ""
            self.stdout.write(
                f"{verb} study {study.pk} ({study.study_instance_uid}): "
                f"{series} series, {slices} slices{extra}"
            )
