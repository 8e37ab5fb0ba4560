#!/usr/bin/env python
"""Scale-out and worker memory, measured with real worker processes, Redis and PostgreSQL.

One command:

    OMP_NUM_THREADS=1 python benchmarks/scaleout_bench.py                 # throughput
    OMP_NUM_THREADS=1 python benchmarks/scaleout_bench.py --memory        # worker memory

Set-up (the same for every configuration of a run): a new PostgreSQL database on 127.0.0.1
(user postgres; dropped at the end), Redis db 13 on 127.0.0.1 as the broker (flushed before and
after), a temporary media/var folder, a synthetic reference library of 3 diagnoses x 4 approved
cases at the model's size, and a bootstrap model (`ILDREVIEW_BACKBONE`, ImageNet weights,
512 px, 2 head epochs; `scripts/worker_kill_check.py: environment` and the worker of
`scripts/worker_process.py`, as `scripts/upload_to_results.py` uses them).

Studies: the 10 real series of `$ILDREVIEW_REAL_DATA` (Lung-PET-CT-Dx A0001 and A0002, both
series each; the six COVID-CT-MD series, JPEG Lossless), each cut to `--slices` contiguous
slices from the middle of the series; without the real data, synthetic phantom series
(`tests/dicomgen.py`). Each copy gets new Study/Series/SOP Instance UIDs and a PatientID of its
own (deterministic `2.25.` UIDs, as `cases/real_data.py` repairs invalid ones), so every
configuration imports 10 new studies with the same pixels; A0001's and A0002's two series
would otherwise be one study each. They are imported with the ingestion service
(`study_import_paths`) and queued exactly as an upload queues them (`study_enqueue_processing`
in a transaction), each by a different uploader: the fair queue (`ILDREVIEW_QUEUE_PER_USER`,
default 1) sends one run per user to the broker at a time, and ten clinicians uploading one
study each is the case where two workers can help.

Throughput (default): for each configuration `WxT` of `--configs` (W worker processes, each
`celery worker -Q gpu,cpu --concurrency 1`, T torch/OpenMP threads each), the workers are
started and ready before the clock starts; then the 10 studies are queued and the clock runs
until every study is ready for review (first results) and until every similar case has both
CAM overlays. Before the clock, each worker is warmed up with small synthetic studies until
it has run every kind of stage once (imports, model and index loaded, as in a long-running
deployment; `--no-warm` skips this). Printed: both wall times, studies/hour overall and per
worker, per-study median and p95 latency from queueing, tasks and CPU seconds per worker
process, peak resident memory per pool process, the CPU count and the load average (other
processes on the machine included).

Memory (`--memory`): one worker; the full 64-slice A0001 series-2-5mm study first, then 20
studies (the 10 above twice), one at a time (the next is queued once the previous has all its
CAMs). The resident memory (VmRSS, VmHWM of /proc/<pid>/status) of the worker's pool process,
which runs the tasks, is sampled every 0.2 s; printed: its peak during the 64-slice study and
its resident memory after each of the 20 studies.

`--json FILE` writes every figure. Exit status 0 only when every study became ready with CAMs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
import worker_kill_check as wkc  # noqa: E402 (environment, pg_admin, redis_flush)
from worker_process import (  # noqa: E402
    WorkerProcess,
    proc_cpu_seconds,
    proc_memory_kib,
)

# Series of `$ILDREVIEW_REAL_DATA` (dataset, folder): 4 Lung-PET-CT-Dx + 6 COVID-CT-MD.
REAL_SERIES = (
    ("lung-pet-ct-dx", "A0001/series-2-5mm"),
    ("lung-pet-ct-dx", "A0001/series-3-5mm"),
    ("lung-pet-ct-dx", "A0002/series-2-B70f"),
    ("lung-pet-ct-dx", "A0002/series-3-B40f"),
    ("covid-ct-md", "P001"),
    ("covid-ct-md", "P002"),
    ("covid-ct-md", "cap001"),
    ("covid-ct-md", "cap002"),
    ("covid-ct-md", "normal001"),
    ("covid-ct-md", "normal002"),
)
MEMORY_SERIES = ("lung-pet-ct-dx", "A0001/series-2-5mm")
SUCCEEDED = re.compile(r"Task (\S+)\[[0-9a-f-]+\] succeeded in ([0-9.]+)s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="1x1,1x2,2x1", help="WORKERSxTHREADS, comma-separated")
    p.add_argument("--memory", action="store_true", help="the memory run instead")
    p.add_argument("--studies", type=int, default=10)
    p.add_argument("--slices", type=int, default=32, help="contiguous slices per study")
    p.add_argument("--memory-studies", type=int, default=20)
    p.add_argument("--synthetic", action="store_true", help="phantom studies even with real data")
    p.add_argument("--synthetic-size", type=int, default=256, help="phantom image size")
    p.add_argument("--size", type=int, default=512, help="model image size")
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--library-per-class", type=int, default=4, help="approved cases per diagnosis")
    p.add_argument(
        "--warm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="warm every worker up before the clock starts (--no-warm: cold workers)",
    )
    p.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per configuration")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return p.parse_args(argv)


@dataclass
class Source:
    name: str
    files: list[Path]  # in slice order


def main(argv=None) -> int:
    args = parse_args(argv)
    # Stopped with SIGTERM, still stop the workers and drop the database (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="ildreview-scaleout-"))
    ns = argparse.Namespace(db=args.db, broker="redis", redis_url=args.redis_url, size=args.size)
    env = wkc.environment(ns, tmp)
    env.update(
        {
            "ILDREVIEW_BOOTSTRAP_WEIGHTS": args.weights,
            "ILDREVIEW_BOOTSTRAP_EPOCHS": str(args.epochs),
            "ILDREVIEW_RESULTS_TOP_K": str(args.top_k),
            # production defaults, not the kill check's short ones
            "ILDREVIEW_RECOVERY_INTERVAL_S": "60",
            "ILDREVIEW_CAM_RESEND_AFTER_S": "300",
            # DEBUG off as in production (DEBUG keeps a log of every SQL query in memory)
            "DEBUG": "false",
            "SECRET_KEY": "scaleout-bench-" + os.urandom(16).hex(),
            "ILDREVIEW_PSEUDONYM_KEY": "scaleout-bench-" + os.urandom(16).hex(),
            "ILDREVIEW_STATIC_MANIFEST": "false",
        }
    )
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "ildreview.settings"
    if args.db == "postgres":
        wkc.pg_admin(f'CREATE DATABASE "{wkc.pg_name(tmp)}"')
    wkc.redis_flush(args.redis_url)
    report: dict = {"commit": git_commit(), "cpus": os.cpu_count(), "args": vars(args) | {}}
    report["args"]["json"] = str(args.json) if args.json else None
    workers: list[WorkerProcess] = []
    try:
        report.update(run(args, env, tmp, workers))
    finally:
        for w in workers:
            w.stop()
        from django.db import connections

        connections.close_all()
        if args.db == "postgres":
            wkc.pg_admin(f'DROP DATABASE IF EXISTS "{wkc.pg_name(tmp)}" WITH (FORCE)')
        wkc.redis_flush(args.redis_url)
        if args.keep:
            report["tmp"] = str(tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0 if report.get("ok") else 1


def git_commit() -> str:
    """The commit the workers run, and the tracked files changed since (a shared tree)."""

    def git(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        head = None
    if head is None or head.returncode != 0:  # e.g. run from an exported tree (`git archive`)
        return os.environ.get("ILDREVIEW_BENCH_COMMIT", "unknown (not a git checkout)")
    changed = sorted(line[3:] for line in dirty.stdout.splitlines())
    return head.stdout.strip() + (f" + uncommitted changes in {changed}" if changed else "")


# ---------------------------------------------------------------- studies


def real_sources(*, data_root: Path, slices: int, series=REAL_SERIES) -> list[Source]:
    """The series of `series` that exist, each cut to `slices` contiguous middle slices (0: all)."""
    import pydicom

    from cases.dicom.reading import ignored_file

    out = []
    for dataset, folder in series:
        path = data_root / dataset / folder
        if not path.is_dir():
            continue
        files = [f for f in sorted(path.iterdir()) if f.is_file() and not ignored_file(f.name)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tags = ["ImagePositionPatient"]
            z = {
                f: float(
                    pydicom.dcmread(
                        f, stop_before_pixels=True, specific_tags=tags
                    ).ImagePositionPatient[2]
                )
                for f in files
            }
        files.sort(key=z.get)
        if slices and len(files) > slices:
            start = (len(files) - slices) // 2
            files = files[start : start + slices]
        out.append(Source(name=f"{dataset}/{folder}", files=files))
    return out


def copies_write(*, source: Source, out: Path, tag: str) -> Path:
    """Copies of `source` with new Study/Series/SOP Instance UIDs and PatientID (derived from
    `tag`), everything else, pixel data included, unchanged. Returns the folder."""
    import pydicom

    from cases.uids import deterministic_uid

    out.mkdir(parents=True, exist_ok=True)
    study = deterministic_uid("scaleout-bench", tag, source.name, "study")
    series = deterministic_uid("scaleout-bench", tag, source.name, "series")
    mode = pydicom.config.settings.reading_validation_mode
    # Three COVID-CT-MD series carry invalid UIDs (cases/real_data.py); they are replaced here.
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for k, path in enumerate(source.files):
                ds = pydicom.dcmread(path)
                sop = deterministic_uid("scaleout-bench", tag, source.name, "sop", str(k))
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
                ds.file_meta.MediaStorageSOPInstanceUID = sop
                ds.PatientID = f"SCALE-{tag}"
                ds.save_as(out / f"{k:04d}.dcm", enforce_file_format=True)
    finally:
        pydicom.config.settings.reading_validation_mode = mode
    return out


def synthetic_write(*, out: Path, tag: str, slices: int, size: int, seed: int) -> Path:
    from cases.uids import deterministic_uid
    from tests.dicomgen import ct_series_write

    ct_series_write(
        folder=out,
        slices=slices,
        size=size,
        seed=seed,
        study_uid=deterministic_uid("scaleout-bench", tag, "study"),
        series_uid=deterministic_uid("scaleout-bench", tag, "series"),
        patient_id=f"SCALE-{tag}",
    )
    return out


def studies_import(
    *, args, tmp: Path, sources: list[Source], tag: str, n: int, users, start: int = 0
) -> list:
    """Import studies start..start+n-1 (sources in turn) with the ingestion service, study i
    uploaded by users[i % len(users)]; returns the studies (not queued yet)."""
    from cases.services.ingestion import study_import_paths

    studies = []
    for i in range(start, start + n):
        folder = tmp / "inputs" / f"{tag}-{i:02d}"
        if sources:
            copies_write(source=sources[i % len(sources)], out=folder, tag=f"{tag}-{i}")
        else:
            synthetic_write(
                out=folder,
                tag=f"{tag}-{i}",
                slices=args.slices,
                size=args.synthetic_size,
                seed=1000 + i,
            )
        result = study_import_paths(paths=[folder], uploader=users[i % len(users)])
        studies.append(result.studies[0])
        shutil.rmtree(folder, ignore_errors=True)  # the import stored its own copy
    return studies


def study_enqueue(study) -> None:
    """As an upload does: the job row commits with the request, the broker message after."""
    from django.db import transaction

    from retrieval.pipeline.enqueue import study_enqueue_processing

    with transaction.atomic():
        study_enqueue_processing(study=study)


# ---------------------------------------------------------------- run


def run(args, env: dict, tmp: Path, workers: list[WorkerProcess]) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from retrieval.pipeline.reference import model_version_bootstrap
    from retrieval.pipeline.synthetic import synthetic_library_create

    out: dict = {"load_before": os.getloadavg()}
    User = get_user_model()
    expert, approver = User.objects.create(username="e1"), User.objects.create(username="e2")
    users = [User.objects.create(username=f"clinician{i:02d}") for i in range(args.studies)]
    t = time.perf_counter()
    synthetic_library_create(
        expert=expert, approver=approver, per_class=args.library_per_class, size=args.size
    )
    version = model_version_bootstrap()
    out["setup"] = {
        "model": f"{version.name} ({settings.ILDREVIEW_BACKBONE}, {args.weights}, {args.size} px)",
        "library_cases": 3 * args.library_per_class,
        "seconds": round(time.perf_counter() - t, 1),
    }
    data_root = Path(settings.ILDREVIEW_REAL_DATA)
    sources = [] if args.synthetic else real_sources(data_root=data_root, slices=args.slices)
    out["studies"] = (
        [f"{s.name} ({len(s.files)} slices)" for s in sources]
        if sources
        else [f"synthetic phantom, {args.slices} x {args.synthetic_size} px"]
    )
    print_head(out)
    if args.memory:
        out["memory"] = memory_run(args, env, tmp, workers, users, data_root)
        ok = out["memory"]["ok"]
    else:
        out["configs"] = []
        ok = True
        for k, config in enumerate(args.configs.split(",")):
            n_workers, threads = (int(v) for v in config.lower().split("x"))

            def studies_make(k=k):
                return studies_import(
                    args=args, tmp=tmp, sources=sources, tag=f"c{k}", n=args.studies, users=users
                )

            res = throughput_run(
                args,
                env,
                tmp,
                workers,
                studies_make=studies_make,
                n_workers=n_workers,
                threads=threads,
            )
            res["config"] = config
            out["configs"].append(res)
            print_config(res)
            ok = ok and res["ok"]
        print_table(out["configs"])
    out["ok"] = ok
    return out


def workers_start(
    env: dict, tmp: Path, workers: list[WorkerProcess], *, n: int, threads: int, label: str
) -> list[WorkerProcess]:
    """Start `n` workers with `threads` torch/OpenMP threads each; return once all are ready."""
    started = []
    for i in range(n):
        wenv = {
            **env,
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "ILDREVIEW_TORCH_THREADS": str(threads),
        }
        w = WorkerProcess(
            env=wenv, log=tmp / f"{label}-w{i}.log", name=f"scaleout-{label}-w{i}-{os.getpid()}@%h"
        )
        w.start()
        workers.append(w)
        started.append(w)
    deadline = time.monotonic() + 180
    while not all(" ready." in w.log_tail(100_000) for w in started):
        for w in started:
            if not w.alive():
                raise RuntimeError(f"worker {w.name} stopped:\n{w.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError("workers not ready after 180 s")
        time.sleep(0.5)
    return started


def workers_stop(started: list[WorkerProcess], workers: list[WorkerProcess]) -> None:
    for w in started:
        w.stop()
        workers.remove(w)


def progress_poll(study_ids: list[int]) -> tuple[set[int], set[int], set[int]]:
    """(ready, failed, ready with every CAM stored) among `study_ids`."""
    from django.db.models import Q

    from cases.models import Study
    from retrieval.models import SimilarCase

    status = dict(Study.objects.filter(pk__in=study_ids).values_list("pk", "status"))
    ready = {pk for pk, s in status.items() if s == Study.Status.READY_FOR_REVIEW}
    failed = {pk for pk, s in status.items() if s == Study.Status.FAILED}
    missing = set(
        SimilarCase.objects.filter(result__study_id__in=ready)
        .filter(Q(query_cam="") | Q(reference_cam=""))
        .values_list("result__study_id", flat=True)
    )
    with_cases = set(
        SimilarCase.objects.filter(result__study_id__in=ready).values_list(
            "result__study_id", flat=True
        )
    )
    return ready, failed, (ready & with_cases) - missing


def usage(started: list[WorkerProcess]) -> list[dict]:
    """CPU seconds (main + pool processes) and pool resident memory of each worker now."""
    out = []
    for w in started:
        pool = w.pool_pids()
        mem = [proc_memory_kib(p) for p in pool]
        out.append(
            {
                "pool_pids": pool,
                "cpu_s": proc_cpu_seconds(w.proc.pid) + sum(proc_cpu_seconds(p) for p in pool),
                "rss_mib": sum(m.get("VmRSS", 0) for m in mem) / 1024,
                "hwm_mib": max((m.get("VmHWM", 0) for m in mem), default=0) / 1024,
            }
        )
    return out


def tasks_by_worker(started: list[WorkerProcess], *, skip: list[int] | None = None) -> list[dict]:
    """Tasks each worker finished, by name: {task: [count, seconds]} from its log, after the
    first skip[i] characters of worker i's log."""
    out = []
    for i, w in enumerate(started):
        counts: dict[str, list] = {}
        text = w.log.read_text(errors="replace")[(skip or [0] * len(started))[i] :]
        for name, seconds in SUCCEEDED.findall(text):
            short = name.rsplit(".", 1)[-1]
            c = counts.setdefault(short, [0, 0.0])
            c[0] += 1
            c[1] = round(c[1] + float(seconds), 1)
        out.append(counts)
    return out


WARM_TASKS = ("study_prepare", "study_embed", "study_retrieve", "similar_case_explain")


def workers_warm(started: list[WorkerProcess], *, label: str, timeout: float) -> float:
    """Run small synthetic studies until every worker has run each kind of stage once, so that
    the clock measures warm workers, as in a long-running deployment: a fresh pool process
    imports the imaging libraries and loads the model and the index on its first tasks.
    Returns the seconds this took."""
    from django.contrib.auth import get_user_model

    from retrieval.pipeline.synthetic import synthetic_study_create

    User = get_user_model()
    t0 = time.perf_counter()
    for round_ in range(4):
        studies = []
        for i in range(2 * len(started)):
            user = User.objects.create(username=f"warm-{label}-{round_}-{i}")
            study = synthetic_study_create(uploaded_by=user, slices=2, size=64, seed=900 + i)
            study_enqueue(study)
            studies.append(study.pk)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, failed, cams = progress_poll(studies)
            if failed:
                raise RuntimeError(f"warm-up study failed: {sorted(failed)}")
            if len(cams) == len(studies):
                break
            time.sleep(0.25)
        tasks = tasks_by_worker(started)
        if all(all(t in counts for t in WARM_TASKS) for counts in tasks):
            return time.perf_counter() - t0
    raise RuntimeError(f"a worker never ran every stage during the warm-up: {tasks}")


def throughput_run(args, env, tmp, workers, *, studies_make, n_workers: int, threads: int) -> dict:
    from retrieval.models import StudyJob

    label = f"{n_workers}x{threads}"
    started = workers_start(env, tmp, workers, n=n_workers, threads=threads, label=label)
    warm_s = workers_warm(started, label=label, timeout=args.timeout) if args.warm else None
    # Imported now, not before the warm-up: a study left `uploaded` for
    # ILDREVIEW_UPLOADED_GRACE_S would be queued by the recovery sweep on its own.
    studies = studies_make()
    skip = [len(w.log.read_text(errors="replace")) for w in started]
    cpu0 = [u["cpu_s"] for u in usage(started)]
    ids = [s.pk for s in studies]
    loads = [os.getloadavg()[0]]
    t0 = time.perf_counter()
    for study in studies:
        study_enqueue(study)
    ready_at: dict[int, float] = {}
    cams_at: dict[int, float] = {}
    peak_rss = [0.0] * n_workers
    deadline = time.monotonic() + args.timeout
    last_load = time.monotonic()
    failed: set[int] = set()
    while time.monotonic() < deadline:
        ready, failed, cams = progress_poll(ids)
        now = time.perf_counter() - t0
        for pk in ready:
            ready_at.setdefault(pk, now)
        for pk in cams:
            cams_at.setdefault(pk, now)
        for i, u in enumerate(usage(started)):
            peak_rss[i] = max(peak_rss[i], u["rss_mib"])
        if time.monotonic() - last_load >= 5:
            loads.append(os.getloadavg()[0])
            last_load = time.monotonic()
        if len(cams) + len(failed) >= len(ids) and len(ready) + len(failed) >= len(ids):
            break
        time.sleep(0.25)
    loads.append(os.getloadavg()[0])
    end = usage(started)
    stage_sums = [
        sum(float(v) for v in (job.stage_seconds or {}).values())
        for job in StudyJob.objects.filter(study_id__in=ids)
    ]
    workers_stop(started, workers)
    tasks = tasks_by_worker(started, skip=skip)
    n = len(ids)
    ok = len(ready_at) == n and len(cams_at) == n
    t_ready = max(ready_at.values()) if ok else None
    t_cams = max(cams_at.values()) if ok else None
    return {
        "ok": ok,
        "workers": n_workers,
        "threads": threads,
        "studies": n,
        "failed": sorted(failed),
        "warm_up_seconds": _r(warm_s),
        "seconds_to_all_ready": _r(t_ready),
        "seconds_to_all_cams": _r(t_cams),
        "studies_per_hour_ready": _r(3600 * n / t_ready) if ok else None,
        "studies_per_hour_cams": _r(3600 * n / t_cams) if ok else None,
        "studies_per_hour_per_worker_cams": _r(3600 * n / t_cams / n_workers) if ok else None,
        "latency_ready_median": _r(statistics.median(ready_at.values())) if ready_at else None,
        "latency_ready_p95": _r(_p95(list(ready_at.values()))),
        "latency_cams_median": _r(statistics.median(cams_at.values())) if cams_at else None,
        "latency_cams_p95": _r(_p95(list(cams_at.values()))),
        "stage_seconds_per_study_median": _r(statistics.median(stage_sums)) if stage_sums else None,
        "worker_cpu_seconds": [_r(u["cpu_s"] - c) for u, c in zip(end, cpu0, strict=True)],
        "worker_pool_peak_rss_mib": [_r(v) for v in peak_rss],
        "worker_pool_hwm_mib": [_r(u["hwm_mib"]) for u in end],
        "tasks_by_worker": tasks,
        "load_1min_mean": _r(statistics.mean(loads)),
        "load_1min_max": _r(max(loads)),
    }


def memory_run(args, env, tmp, workers, users, data_root: Path) -> dict:
    big, small = [], []
    if not args.synthetic:
        big = real_sources(data_root=data_root, slices=0, series=[MEMORY_SERIES])
        small = real_sources(data_root=data_root, slices=args.slices)

    def study_next(k: int):
        """Study k, imported just before it is queued, as an upload is: a study left
        `uploaded` for ILDREVIEW_UPLOADED_GRACE_S would be queued by the recovery sweep."""
        if k > 0:
            return studies_import(
                args=args, tmp=tmp, sources=small, tag="m", n=1, users=users, start=k - 1
            )[0]
        if big:
            return studies_import(args=args, tmp=tmp, sources=big, tag="m64", n=1, users=users)[0]
        saved, args.slices = args.slices, 64
        try:
            return studies_import(args=args, tmp=tmp, sources=[], tag="m64", n=1, users=users)[0]
        finally:
            args.slices = saved

    threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    started = workers_start(env, tmp, workers, n=1, threads=threads, label="memory")
    after_start = usage(started)[0]
    rows = []
    ok = True
    for k in range(1 + args.memory_studies):
        study = study_next(k)
        t0 = time.perf_counter()
        study_enqueue(study)
        peak = 0.0
        deadline = time.monotonic() + args.timeout
        done = False
        while time.monotonic() < deadline:
            peak = max(peak, usage(started)[0]["rss_mib"])
            ready, failed, cams = progress_poll([study.pk])
            if failed or cams:
                done = bool(cams)
                break
            time.sleep(0.2)
        u = usage(started)[0]
        row = {
            "study": "64-slice A0001" if k == 0 else k,
            "ok": done,
            "seconds": _r(time.perf_counter() - t0),
            "pool_pids": u["pool_pids"],
            "rss_after_mib": _r(u["rss_mib"]),
            "peak_sampled_mib": _r(peak),
            "hwm_mib": _r(u["hwm_mib"]),
            "load_1min": _r(os.getloadavg()[0]),
        }
        rows.append(row)
        print(
            f"  memory {str(row['study']):>15}: {row['seconds']:6.1f} s, pool RSS after "
            f"{row['rss_after_mib']:7.1f} MiB, sampled peak {row['peak_sampled_mib']:7.1f} MiB, "
            f"VmHWM {row['hwm_mib']:7.1f} MiB, pid {row['pool_pids']}, load {row['load_1min']}",
            flush=True,
        )
        ok = ok and done
        if not done:
            break
    workers_stop(started, workers)
    after = [r["rss_after_mib"] for r in rows[1:]]
    res = {
        "ok": ok,
        "threads": threads,
        "pool_rss_after_worker_ready_mib": _r(after_start["rss_mib"]),
        "rows": rows,
        "peak_64_slice_mib": max(rows[0]["hwm_mib"], rows[0]["peak_sampled_mib"]),
        "rss_after_study": after,
        "same_pool_process": len({tuple(r["pool_pids"]) for r in rows}) == 1,
    }
    if len(after) >= 20:
        res["growth_5_to_20_mib"] = _r(after[19] - after[4])
        res["growth_10_to_20_mib"] = _r(after[19] - after[9])
    print_memory(res)
    return res


# ---------------------------------------------------------------- output


def _r(v):
    return None if v is None else round(float(v), 1)


def _p95(values: list[float]):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def print_head(out: dict) -> None:
    print(f"scale-out benchmark, commit {git_commit()}")
    print(f"  machine: {os.cpu_count()} CPUs, load average before {out['load_before']}")
    print(f"  set-up: {out['setup']}")
    print("  studies: " + "; ".join(out["studies"]), flush=True)


def print_config(res: dict) -> None:
    print(f"configuration {res['config']} (workers x threads): ok={res['ok']}")
    for key, value in res.items():
        if key not in ("config", "ok"):
            print(f"  {key}: {value}")
    sys.stdout.flush()


def print_table(rows: list[dict]) -> None:
    print()
    print(
        "| workers x threads | all ready s | all CAMs s | studies/h (CAMs) | per worker "
        "| latency ready p50/p95 s | latency CAMs p50/p95 s | worker CPU s | load 1-min mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['workers']} x {r['threads']} | {r['seconds_to_all_ready']} "
            f"| {r['seconds_to_all_cams']} | {r['studies_per_hour_cams']} "
            f"| {r['studies_per_hour_per_worker_cams']} "
            f"| {r['latency_ready_median']} / {r['latency_ready_p95']} "
            f"| {r['latency_cams_median']} / {r['latency_cams_p95']} "
            f"| {' + '.join(str(c) for c in r['worker_cpu_seconds'])} | {r['load_1min_mean']} |"
        )


def print_memory(res: dict) -> None:
    print("memory (one worker, pool process):")
    for key in (
        "threads",
        "pool_rss_after_worker_ready_mib",
        "peak_64_slice_mib",
        "rss_after_study",
        "growth_5_to_20_mib",
        "growth_10_to_20_mib",
        "same_pool_process",
        "ok",
    ):
        print(f"  {key}: {res.get(key)}")


if __name__ == "__main__":
    sys.exit(main())
