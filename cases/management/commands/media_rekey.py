"""`manage.py media_rekey [--dry-run]`: move stored files from the UID-named keys of older
versions to the id-based keys (see `cases.services.media_rekey`)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from cases.services.media_rekey import media_rekey


class Command(BaseCommand):
    help = (
        "Move slice pixels and DICOM copies stored under UID-named keys (older versions) to "
        "keys made of database ids. Safe to interrupt and rerun; --dry-run lists the moves."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="list the moves only")

    def handle(self, *args, dry_run: bool, **options):
        verbose = options["verbosity"] > 1 or dry_run
        report = media_rekey(dry_run=dry_run, log=self.stdout.write if verbose else None)
        verb = "would move" if dry_run else "moved"
        self.stdout.write(
            f"{report.series_seen} series, {verb} {report.files_moved} files"
            + (f", {report.files_missing} missing" if report.files_missing else "")
        )
