#!/usr/bin/env python
"""Time from upload to results for a real CT study, with a real worker (no eager mode).

A fresh temporary database, media folder and broker (filesystem transport by default, so no
Redis is needed); a small synthetic reference library at the model's size (nine cases, so all
top-8 CAMs exist); a bootstrap model (`ILDREVIEW_BACKBONE`, ImageNet weights by default,
512 px); then the study is imported from disk with the ingestion service and queued exactly as
an upload is, and the clock runs until it is ready_for_review ("first results") and until every
similar case has both CAM overlays ("all CAMs"). Prints import seconds, both times, the
per-stage split (wall seconds from the study's job record, and the CPU seconds the worker's
processes used meanwhile) and the machine's load.

    .venv/bin/python scripts/upload_to_results.py            # A0001/series-2-5mm, 64 slices

`--batch 10` queues ten copies of the study at once and prints the throughput (studies per
hour for the one worker, until the last study's CAMs). `--prepare-embeds false` measures the
embed stage on its own (as with separate gpu-queue workers).
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
    p.add_argument(
        "--series", default="series-2-5mm", help="one series folder only ('' for all of them)"
    )
    p.add_argument("--batch", type=int, default=1, help="copies of the study queued at once")
    p.add_argument("--top-k", type=int, default=8, help="similar cases (CAM jobs) per study")
    p.add_argument(
        "--prepare-embeds", default="auto", help="ILDREVIEW_PREPARE_EMBEDS of the worker"
    )
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
    env["ILDREVIEW_RESULTS_TOP_K"] = str(args.top_k)
    env["ILDREVIEW_PREPARE_EMBEDS"] = args.prepare_embeds
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


def _group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes of process group `pgid` (the worker
    and its pool process), from /proc; 0 where /proc is not there."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _study_copy(study, n: int):
    """Another study with the same pixels (the files are shared, the rows new, so every stage
    does its full work for it): the batch's further studies."""
    from cases.models import Series, Slice, Study

    series = list(Series.objects.filter(study=study))
    copy = Study.objects.get(pk=study.pk)
    copy.pk = copy.id = None
    copy.study_instance_uid = f"{study.study_instance_uid[:56]}.c{n}"
    copy.save()
    for se in series:
        slices = list(Slice.objects.filter(series=se))
        uid = se.series_instance_uid
        se.pk = se.id = None
        se.study = copy
        se.series_instance_uid = f"{uid[:56]}.c{n}"
        se.save()
        for sl in slices:
            sl.pk = sl.id = None
            sl.series = se
            sl.sop_instance_uid = f"{sl.sop_instance_uid[:56]}.c{n}"
        Slice.objects.bulk_create(slices)
    return copy


def run(args, worker) -> int:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db.models import Q

    call_command("migrate", verbosity=0)
    from cases.models import Slice, Study
    from cases.services.ingestion import study_import_paths
    from retrieval.models import SimilarCase, StudyJob
    from retrieval.pipeline.enqueue import study_enqueue_processing
    from retrieval.pipeline.reference import model_version_bootstrap
    from retrieval.pipeline.synthetic import synthetic_library_create

    folder = Path(settings.ILDREVIEW_REAL_DATA) / "lung-pet-ct-dx" / args.study
    if args.series:
        folder = folder / args.series
    if not folder.exists():
        print(f"no study at {folder} (set ILDREVIEW_REAL_DATA)")
        return 2
    User = get_user_model()
    expert, approver = User.objects.create(username="e1"), User.objects.create(username="e2")
    clinician = User.objects.create(username="c1")
    synthetic_library_create(expert=expert, approver=approver, per_class=3, size=args.size)
    t = time.perf_counter()
    version = model_version_bootstrap()
    print(
        f"bootstrap model {version.name} ({settings.ILDREVIEW_BACKBONE}, {args.weights}, "
        f"{args.size} px, fusion {version.config.get('fusion')}): "
        f"{time.perf_counter() - t:.1f} s"
    )
    worker.start()
    time.sleep(15)  # let the worker import torch and connect before the clock starts
    load_before = os.getloadavg()
    pgid = worker.proc.pid
    cpu0 = _group_cpu_seconds(pgid)
    t0 = time.perf_counter()
    studies = [study_import_paths(paths=[folder], uploader=clinician).studies[0]]
    # The same DICOM again is the same study (found by its UID): copies stand for the others.
    studies += [_study_copy(studies[0], n) for n in range(1, args.batch)]
    for study in studies:
        study_enqueue_processing(study=study)
    t_import = time.perf_counter() - t0
    first = studies[0]
    n_slices = Slice.objects.filter(series__study=first).count()
    # Stage marks of the first study: (stage, seconds since upload, worker CPU seconds then).
    marks: list[tuple[str, float, float]] = []
    ready_at: dict[int, float] = {}
    cams_at: dict[int, float] = {}
    done = (Study.Status.READY_FOR_REVIEW, Study.Status.FAILED)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and len(cams_at) < len(studies):
        now = time.perf_counter() - t0
        rows = dict(
            Study.objects.filter(pk__in=[s.pk for s in studies]).values_list("pk", "status")
        )
        stage = Study.objects.filter(pk=first.pk).values_list("progress_stage", flat=True)[0]
        if first.pk not in ready_at and (not marks or marks[-1][0] != stage):
            marks.append((stage, now, _group_cpu_seconds(pgid) - cpu0))
        for pk, status in rows.items():
            if status in done and pk not in ready_at:
                ready_at[pk] = now
                if pk == first.pk:
                    marks.append(("ready", now, _group_cpu_seconds(pgid) - cpu0))
            if pk in ready_at and pk not in cams_at:
                cases = SimilarCase.objects.filter(result__study_id=pk)
                if (
                    status == Study.Status.FAILED
                    or not cases.filter(Q(query_cam="") | Q(reference_cam="")).exists()
                ):
                    cams_at[pk] = now
        time.sleep(0.1)
    total = time.perf_counter() - t0
    cpu_total = _group_cpu_seconds(pgid) - cpu0
    first.refresh_from_db()
    job = StudyJob.objects.get(study=first)
    label = f"{args.study}{'/' + args.series if args.series else ''}"
    print(f"study {label}: {n_slices} slices, status {first.status} {first.status_message}")
    print(f"  import (upload service): {t_import:.1f} s for {len(studies)} study(ies)")
    print("  stage       wall (job record)   from (s)   worker CPU s")
    for (name, at, cpu), nxt in zip(marks, marks[1:], strict=False):
        recorded = (job.stage_seconds or {}).get(name)
        rec = f"{recorded:8.1f}" if recorded is not None else "       -"
        print(f"  {name or '-':10s} {rec} s          {at:6.1f}     {nxt[2] - cpu:6.1f}")
    n_cams = SimilarCase.objects.filter(result__study=first).exclude(query_cam="").count()
    if first.pk in ready_at:
        print(f"  upload -> first results: {ready_at[first.pk]:.1f} s (attempts {job.attempts})")
    if first.pk in cams_at:
        cam_cpu = cpu_total - marks[-1][2] if len(studies) == 1 else float("nan")
        print(
            f"  upload -> all {n_cams} CAMs: {cams_at[first.pk]:.1f} s"
            + (f" (worker CPU after results {cam_cpu:.1f} s)" if len(studies) == 1 else "")
        )
    if len(studies) > 1 and len(cams_at) == len(studies):
        last = max(cams_at.values())
        print(
            f"  batch of {len(studies)}: last results {max(ready_at.values()):.1f} s, "
            f"last CAMs {last:.1f} s -> {3600 * len(studies) / last:.0f} studies/hour "
            "for one worker"
        )
    print(f"  worker CPU: {cpu_total:.1f} s in {total:.1f} s")
    print(
        f"  machine: {os.cpu_count()} CPU, load average before {load_before[0]:.2f}, "
        f"after {os.getloadavg()[0]:.2f}"
    )
    ok = all(
        s == Study.Status.READY_FOR_REVIEW
        for s in Study.objects.filter(pk__in=[s.pk for s in studies]).values_list(
            "status", flat=True
        )
    )
    return 0 if ok and len(cams_at) == len(studies) else 1


if __name__ == "__main__":
    sys.exit(main())
