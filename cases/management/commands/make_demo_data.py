"""`manage.py make_demo_data OUTDIR`: write synthetic chest CT studies as real DICOM files
(four pattern classes) and a `manifest.csv` that `import_reference` reads."""

from __future__ import annotations

import time
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases.demo_data import DEMO_CLASSES, MANIFEST_NAME, demo_dataset_write


class Command(BaseCommand):
    help = (
        "Write synthetic but realistic chest CT studies (normal, ground-glass, "
        "reticulation/honeycombing, consolidation) as DICOM series, one folder per patient, "
        "with OUTDIR/manifest.csv (path,label,patient_id,split). Deterministic in --seed."
    )

    def add_arguments(self, parser):
        parser.add_argument("outdir", type=Path)
        parser.add_argument("--patients-per-class", type=int, default=3)
        parser.add_argument("--slices", type=int, default=12, help="slices per series")
        parser.add_argument("--size", type=int, default=512, help="image rows and columns")
        parser.add_argument("--seed", type=int, default=0)

    def handle(
        self,
        *args,
        outdir: Path,
        patients_per_class: int,
        slices: int,
        size: int,
        seed: int,
        **options,
    ):
        started = time.perf_counter()
        total = len(DEMO_CLASSES) * patients_per_class
        bar = tqdm(total=total, unit="study", desc="demo studies", disable=options["verbosity"] < 1)
        try:
            cases = demo_dataset_write(
                outdir=outdir,
                patients_per_class=patients_per_class,
                slices=slices,
                size=size,
                seed=seed,
                progress=lambda done, _total: bar.update(done - bar.n),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            bar.close()
        files = sum(c.files for c in cases)
        self.stdout.write(
            f"wrote {len(cases)} studies ({files} DICOM files, {size}x{size}) in "
            f"{time.perf_counter() - started:.1f} s; manifest: {Path(outdir) / MANIFEST_NAME}"
        )
