"""`manage.py import_reference MANIFEST.csv [--admin USERNAME]`: import a labelled reference
library (images or DICOM series folders) as approved reference cases."""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases.services.reference_import import (
    ReferenceImportError,
    manifest_read,
    reference_import_user,
    reference_manifest_import,
)


class Command(BaseCommand):
    help = (
        "Import the cases of a manifest (CSV: path,label,patient_id[,split]; path relative to "
        "the manifest: a PNG/JPEG/TIFF image or a DICOM series folder) as labelled, approved "
        "reference cases. Idempotent. Bad rows are reported with the reason and skipped "
        "(nothing saved for them); the exit status is 1 when any row was rejected."
    )

    def add_arguments(self, parser):
        parser.add_argument("manifest", type=Path)
        parser.add_argument(
            "--admin",
            help="user recorded as labelling/approving (default: the first superuser, else the "
            "inactive service account 'reference-import')",
        )

    def handle(self, *args, manifest: Path, admin: str | None, **options):
        started = time.perf_counter()
        try:
            rows = manifest_read(manifest=manifest)
            user = reference_import_user(username=admin)
        except ReferenceImportError as exc:
            raise CommandError(str(exc)) from exc
        show = options["verbosity"] >= 1
        with tqdm(total=len(rows), unit="row", desc="reference import", disable=not show) as bar:
            report = reference_manifest_import(
                manifest=manifest, admin=user, on_row=lambda _outcome: bar.update(1)
            )
        outcomes = report.outcomes
        created = sum(o.status == "created" for o in outcomes)
        existing = sum(o.status == "existing" for o in outcomes)
        rejected = [o for o in outcomes if o.status == "rejected"]
        for o in outcomes:
            if o.note:
                self.stdout.write(f"note: line {o.row.line} ({o.row.path}): {o.note}")
        for o in rejected:
            self.stderr.write(f"rejected: line {o.row.line} ({o.row.path or '-'}): {o.reason}")
        self.stdout.write(
            f"{created} created, {existing} existing, {len(rejected)} rejected "
            f"({len(outcomes)} rows, by {user.username}, {time.perf_counter() - started:.1f} s)"
        )
        if rejected:
            raise CommandError(f"{len(rejected)} row(s) rejected; the others were imported")
