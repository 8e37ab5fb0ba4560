"""`python manage.py bootstrap_model`: give a fresh install a retrieval model.

When no model version is active and the approved reference library has cases of at least two
diagnoses, trains a head-only model on the library (frozen backbone `ILDREVIEW_BACKBONE`),
evaluates the recipe on held-out library patients against the frozen backbone (the held-out
gate, `retrieval.pipeline.gate`), registers it and activates it only when it is not worse;
otherwise it activates a version serving the frozen backbone and says so. Then it embeds the
library. Prints what it did and the held-out figures; exits 0 when there was nothing to do.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from retrieval.pipeline.reference import library_reconcile, model_version_bootstrap
from retrieval.selectors import model_version_active


class Command(BaseCommand):
    help = "Train, register, activate and embed a first model from the approved library."

    def add_arguments(self, parser):
        parser.add_argument("--force", action="store_true", help="train even if one is active")

    def handle(self, *args, force: bool = False, **options):
        active = model_version_active()
        if active is not None and not force:
            n = library_reconcile(model_version=active)
            self.stdout.write(f"active model: {active.name}; {n} reference case(s) embedded now")
            return
        version = model_version_bootstrap(force=force, progress=self._progress)
        if version is None:
            self.stdout.write(
                "no model activated: the approved library needs cases of at least two "
                "diagnoses (or, with --force, the gate kept the active version)"
            )
            return
        from retrieval.engine.holdout import gate_summary

        summary = gate_summary(version.holdout or {})
        if (version.config or {}).get("frozen_backbone"):
            self.stdout.write(
                self.style.WARNING(
                    f"the trained model was not activated: it is worse than the frozen "
                    f"backbone on held-out library patients, or could not be evaluated "
                    f"({summary}); activated {version.name}, which serves the frozen backbone"
                )
            )
            return
        self.stdout.write(
            self.style.SUCCESS(f"trained and activated model {version.name} ({summary})")
        )

    def _progress(self, done: int, total: int) -> None:
        if total and (done == total or done % 50 == 0):
            self.stdout.write(f"  {done}/{total}")
