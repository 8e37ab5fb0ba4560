#!/usr/bin/env python
"""Time from upload to results for a real CT study, with a real worker (no eager mode).

A fresh temporary database, media folder and broker (filesystem transport by default, so no
Redis is needed); a small synthetic reference library at the model's size; a bootstrap model
(`ILDREVIEW_BACKBONE`, ImageNet weights by default, 512 px); then the study is imported from
disk with the ingestion service and queued exactly as an upload is, and the clock runs until it
is ready_for_review. Prints import seconds, queue-to-ready seconds and the per-stage split.

    .venv/bin/python scripts/upload_to_results.py --study A0001
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import worker_kill_check as wkc  # noqa: E402 (shared helpers: environment, redis_flush)
from worker_process import WorkerProcess  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--study", default="A0001", help="patient folder under lung-pet-ct-dx")
    p.add_argument("--series", default="", help="one series folder only (e.g. series-2-5mm)")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--broker", choices=["redis", "filesystem"], default="filesystem")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ildreview-timing-"))
    ns = argparse.Namespace(
        db="sqlite", broker=args.broker, redis_url=args.redis_url, size=args.size
    )
    env = wkc.environment(ns, tmp)
    env["ILDREVIEW_BOOTSTRAP_WEIGHTS"] = args.weights
    env["ILDREVIEW_BOOTSTRAP_EPOCHS"] = "2"
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "ildreview.settings"
    sys.path.insert(0, str(wkc.ROOT))
    if args.broker == "redis":
        wkc.redis_flush(args.redis_url)
    worker = WorkerProcess(env=env, log=tmp / "worker.log", name=f"timing-{os.getpid()}@%h")
    try:
        return run(args, worker)
    finally:
        worker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, worker) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from cases.models import Diagnosis, Slice, Study
    from cases.services.ingestion import study_import_paths
    from retrieval.models import StudyJob
    from retrieval.pipeline.enqueue import study_enqueue_processing
    from retrieval.pipeline.reference import model_version_bootstrap
    from retrieval.pipeline.synthetic import synthetic_reference_create

    folder = Path(settings.ILDREVIEW_REAL_DATA) / "lung-pet-ct-dx" / args.study
    if args.series:
        folder = folder / args.series
    if not folder.exists():
        print(f"no study at {folder} (set ILDREVIEW_REAL_DATA)")
        return 2
    User = get_user_model()
    expert, approver = User.objects.create(username="e1"), User.objects.create(username="e2")
    clinician = User.objects.create(username="c1")
    for n, (name, pattern) in enumerate(
        {"Normal": "normal", "IPF-ILD": "reticulation", "ASS-ILD": "ground_glass"}.items()
    ):
        for j in range(2):
            synthetic_reference_create(
                expert=expert,
                approver=approver,
                diagnosis=Diagnosis.objects.get(name=name),
                pattern=pattern,
                slices=3,
                size=args.size,
                seed=10 * n + j,
            )
    t = time.perf_counter()
    version = model_version_bootstrap()
    print(
        f"bootstrap model {version.name} ({settings.ILDREVIEW_BACKBONE}, {args.weights}, "
        f"{args.size} px): {time.perf_counter() - t:.1f} s"
    )
    worker.start()
    time.sleep(15)  # let the worker import torch and connect before the clock starts
    t0 = time.perf_counter()
    result = study_import_paths(paths=[folder], uploader=clinician)
    study = result.studies[0]
    study_enqueue_processing(study=study)
    t_import = time.perf_counter() - t0
    n_slices = Slice.objects.filter(series__study=study).count()
    stages: dict[str, float] = {}
    last = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        study.refresh_from_db()
        stage = study.progress_stage
        if stage != last:
            stages[stage] = time.perf_counter() - t0
            last = stage
        if study.status in (Study.Status.READY_FOR_REVIEW, Study.Status.FAILED):
            break
        time.sleep(0.2)
    total = time.perf_counter() - t0
    job = StudyJob.objects.get(study=study)
    print(
        f"study {args.study}{'/' + args.series if args.series else ''}: {n_slices} slices, "
        f"status {study.status} {study.status_message}"
    )
    print(f"  import (upload service): {t_import:.1f} s")
    marks = sorted(stages.items(), key=lambda kv: kv[1])
    for (name, at), nxt in zip(marks, [m[1] for m in marks[1:]] + [total], strict=True):
        print(f"  {name or '-':10s} from {at:6.1f} s  ({nxt - at:6.1f} s)")
    print(f"  upload -> results: {total:.1f} s (attempts {job.attempts})")
    print(f"  machine: {os.cpu_count()} CPU, load average {os.getloadavg()}")
    return 0 if study.status == Study.Status.READY_FOR_REVIEW else 1


if __name__ == "__main__":
    sys.exit(main())
