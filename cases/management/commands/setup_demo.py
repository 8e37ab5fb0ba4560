"""`manage.py setup_demo`: demo accounts and, on an empty install, the demo reference library.

Idempotent (run by `scripts/run_local.sh` at every start): creates the accounts that are
missing — admin (superuser, group Admin), clinician (Clinician), expert1 and expert2 (Expert) —
with the password from the environment variable DEMO_PASSWORD or the documented local demo
password "ildreview-demo"; existing accounts are left as they are. When the reference library
has no approved case, seeds the demo library (`import_reference`, labelled and approved by
admin), chosen by `--library` or the environment variable ILDREVIEW_DEMO_LIBRARY:
- "real": the real public chest CT series under ILDREVIEW_REAL_DATA (COVID-CT-MD: COVID-19, CAP,
  Normal; Lung-PET-CT-Dx: Adenocarcinoma when present; `cases.real_data`), imported through the
  normal DICOM import (de-identified like any upload); an error when the data is absent;
- "phantoms": synthetic phantom studies written into VAR_DIR/demo (`make_demo_data`);
- "auto" (default): "real" when the real data is present, else "phantoms".
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from cases.demo_data import MANIFEST_NAME
from cases.models import Diagnosis, ReferenceCase
from cases.real_data import (
    REAL_DIAGNOSES,
    RealDataError,
    real_demo_manifest_write,
    real_library_present,
)

DEFAULT_DEMO_PASSWORD = "ildreview-demo"
# (username, group, superuser)
DEMO_ACCOUNTS = (
    ("admin", "Admin", True),
    ("clinician", "Clinician", False),
    ("expert1", "Expert", False),
    ("expert2", "Expert", False),
)


def demo_accounts_ensure(*, password: str) -> list[tuple[str, str, bool]]:
    """Create the missing demo accounts; returns (username, group, created) per account."""
    users = get_user_model().objects
    done = []
    with transaction.atomic():
        for username, group_name, superuser in DEMO_ACCOUNTS:
            group, _ = Group.objects.get_or_create(name=group_name)
            user = users.filter(username=username).first()
            created = user is None
            if created:
                user = users.create_user(
                    username=username,
                    password=password,
                    is_staff=superuser,
                    is_superuser=superuser,
                )
            user.groups.add(group)
            done.append((username, group_name, created))
    return done


LIBRARIES = ("auto", "real", "phantoms")


def demo_diagnoses_ensure() -> list[str]:
    """Create the real demo library's diagnoses that are missing (code, name, description of
    `REAL_DIAGNOSES`; the import would otherwise create them without a description); returns
    the codes created."""
    created = []
    with transaction.atomic():
        for code, name, description in REAL_DIAGNOSES:
            if Diagnosis.objects.filter(name__iexact=name).exists():
                continue
            _, made = Diagnosis.objects.get_or_create(
                code=code, defaults={"name": name, "description": description}
            )
            if made:
                created.append(code)
    return created


def demo_library_choose(*, requested: str, data_root: Path) -> str:
    """ "real" or "phantoms" for the requested library ("auto" picks real when present);
    CommandError for an unknown name or a real library whose data is absent."""
    requested = (requested or "auto").strip().lower()
    if requested not in LIBRARIES:
        raise CommandError(
            f"unknown demo library {requested!r} (ILDREVIEW_DEMO_LIBRARY or --library): "
            f"choose {', '.join(LIBRARIES)}"
        )
    present = real_library_present(data_root)
    if requested == "real" and not present:
        raise CommandError(
            f"the real demo library needs {data_root}/covid-ct-md (set ILDREVIEW_REAL_DATA, or "
            "ILDREVIEW_DEMO_LIBRARY=phantoms for the synthetic one)"
        )
    if requested == "auto":
        return "real" if present else "phantoms"
    return requested


class Command(BaseCommand):
    help = (
        "Create the demo accounts (admin, clinician, expert1, expert2) if missing and, when the "
        "reference library is empty, import the demo library: the real public CT series "
        "under ILDREVIEW_REAL_DATA when present, else synthetic phantoms (--library)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--library",
            choices=LIBRARIES,
            default=None,
            help="demo library to seed (default: $ILDREVIEW_DEMO_LIBRARY, else auto)",
        )
        parser.add_argument("--patients-per-class", type=int, default=3)
        parser.add_argument("--slices", type=int, default=12)
        parser.add_argument("--size", type=int, default=512)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, library, patients_per_class, slices, size, seed, **options):
        password = os.environ.get("DEMO_PASSWORD") or DEFAULT_DEMO_PASSWORD
        accounts = demo_accounts_ensure(password=password)
        self.stdout.write("Demo accounts (log in at http://127.0.0.1:8000/):")
        for username, group, created in accounts:
            secret = password if created else "(existing account, password unchanged)"
            self.stdout.write(f"  {username:<10} {group:<10} {secret}")

        approved = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).count()
        if approved:
            self.stdout.write(f"Reference library: {approved} approved case(s); nothing to seed.")
            return
        data_root = Path(settings.ILDREVIEW_REAL_DATA)
        requested = library or os.environ.get("ILDREVIEW_DEMO_LIBRARY", "auto")
        if demo_library_choose(requested=requested, data_root=data_root) == "real":
            manifest = self._real_manifest(data_root)
        else:
            manifest = self._phantom_manifest(patients_per_class, slices, size, seed, options)
        self.stdout.write("Importing the demo reference library")
        call_command(
            "import_reference",
            str(manifest),
            admin="admin",
            stdout=self.stdout,
            stderr=self.stderr,
            verbosity=options["verbosity"],
        )

    def _real_manifest(self, data_root: Path) -> Path:
        outdir = Path(settings.VAR_DIR) / "demo-real"
        self.stdout.write(
            f"Reference library is empty; demo library: real chest CT from {data_root} "
            "(ILDREVIEW_DEMO_LIBRARY=phantoms for the synthetic one)"
        )
        demo_diagnoses_ensure()
        try:
            cases = real_demo_manifest_write(data_root=data_root, outdir=outdir)
        except (RealDataError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        for case in cases:
            how = " (UIDs repaired, see cases/real_data.py)" if case.repaired else ""
            self.stdout.write(f"  {case.dataset}/{case.name}: {case.label}{how}")
        return outdir / MANIFEST_NAME

    def _phantom_manifest(self, patients_per_class, slices, size, seed, options) -> Path:
        outdir = Path(settings.VAR_DIR) / "demo"
        manifest = outdir / MANIFEST_NAME
        if manifest.exists():
            self.stdout.write(f"Reference library is empty; reusing the phantom demo in {outdir}")
        else:
            self.stdout.write(f"Reference library is empty; writing the phantom demo into {outdir}")
            call_command(
                "make_demo_data",
                str(outdir),
                patients_per_class=patients_per_class,
                slices=slices,
                size=size,
                seed=seed,
                stdout=self.stdout,
                stderr=self.stderr,
                verbosity=options["verbosity"],
            )
        return manifest
