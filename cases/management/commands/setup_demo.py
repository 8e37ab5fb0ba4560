"""`manage.py setup_demo`: demo accounts and, on an empty install, the demo reference library.

Idempotent (run by `scripts/run_local.sh` at every start): creates the accounts that are
missing — admin (superuser, group Admin), clinician (Clinician), expert1 and expert2 (Expert) —
with the password from the environment variable DEMO_PASSWORD or the documented local demo
password "ildreview-demo"; existing accounts are left as they are. When the reference library
has no approved case, writes the synthetic demo studies into VAR_DIR/demo (`make_demo_data`)
and imports them (`import_reference`, labelled and approved by admin).
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.db import transaction

from cases.demo_data import MANIFEST_NAME
from cases.models import ReferenceCase

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


class Command(BaseCommand):
    help = (
        "Create the demo accounts (admin, clinician, expert1, expert2) if missing and, when the "
        "reference library is empty, generate and import the synthetic demo library."
    )

    def add_arguments(self, parser):
        parser.add_argument("--patients-per-class", type=int, default=3)
        parser.add_argument("--slices", type=int, default=12)
        parser.add_argument("--size", type=int, default=512)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, patients_per_class, slices, size, seed, **options):
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
        outdir = Path(settings.VAR_DIR) / "demo"
        manifest = outdir / MANIFEST_NAME
        if manifest.exists():
            self.stdout.write(f"Reference library is empty; reusing demo data in {outdir}")
        else:
            self.stdout.write(f"Reference library is empty; writing demo data into {outdir}")
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
        self.stdout.write("Importing the demo reference library")
        call_command(
            "import_reference",
            str(manifest),
            admin="admin",
            stdout=self.stdout,
            stderr=self.stderr,
            verbosity=options["verbosity"],
        )
