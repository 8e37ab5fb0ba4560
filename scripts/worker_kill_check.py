#!/usr/bin/env python
"""Prove that studies survive a worker killed with SIGKILL: a real worker, a real broker, a
real database, no eager mode.

1. A fresh database (a temporary SQLite file, or a new PostgreSQL database that is dropped at
   the end) and a fresh media/var folder; broker Redis (a dedicated db number, flushed) or the
   embedded filesystem transport.
2. A small synthetic reference library (3 diagnoses x 2 approved cases), a tiny bootstrap model
   (random-init backbone, head trained 1 epoch) embedded into the index.
3. N synthetic studies enqueued exactly as an upload does (`study_enqueue_processing`).
4. A worker (`celery -A ildreview worker -Q gpu,cpu`) is started; with --kill, as soon as a
   stage is running it is killed with SIGKILL (its whole process group) and started again
   under the same name.
5. Waits until every study is ready_for_review and every CAM job has stored its overlays (they
   follow the results), then checks: one StudyResult per study, ranks 1..k unique,
   SliceFeatures once per slice, exactly two CAM files per similar case on disk and no other
   file under results/.

Prints a report (and --json FILE); exit status 0 only if every check passed.

    .venv/bin/python scripts/worker_kill_check.py --studies 5 --kill --broker redis
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run as `python scripts/worker_kill_check.py`: this folder is on sys.path.
from worker_process import WorkerProcess

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgres://postgres@127.0.0.1:5432/postgres"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=5)
    p.add_argument("--slices", type=int, default=6, help="lung slices per study")
    p.add_argument("--size", type=int, default=96, help="image size of the tiny model")
    p.add_argument("--kill", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--kill-after", type=int, default=1, help="kill once this many studies are done")
    p.add_argument("--broker", choices=["redis", "filesystem"], default="redis")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for all studies")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    return p.parse_args(argv)


def environment(args, tmp: Path) -> dict[str, str]:
    env = {
        "ILDREVIEW_VAR_DIR": str(tmp / "var"),
        "MEDIA_ROOT": str(tmp / "media"),
        "ILDREVIEW_MODEL_DIR": str(tmp / "var" / "models"),
        "ILDREVIEW_BOOTSTRAP_WEIGHTS": "random",
        "ILDREVIEW_BOOTSTRAP_SIZE": str(args.size),
        "ILDREVIEW_BOOTSTRAP_EPOCHS": "1",
        "ILDREVIEW_RECOVERY_INTERVAL_S": "5",
        # a CAM job the kill took with it comes back within the wait (default 300 s)
        "ILDREVIEW_CAM_RESEND_AFTER_S": "20",
        "ILDREVIEW_RESULTS_TOP_K": "3",
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "DEBUG": "true",
    }
    if args.db == "sqlite":
        env["DATABASE_URL"] = f"sqlite:///{tmp / 'db.sqlite3'}"
    else:
        env["DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + "/" + pg_name(tmp)
    if args.broker == "redis":
        env["CELERY_BROKER_URL"] = args.redis_url
    else:
        env["CELERY_BROKER_URL"] = "filesystem://"
    return env


def pg_name(tmp: Path) -> str:
    return "ildreview_worker_check_" + tmp.name.replace("-", "_").lower()[-20:]


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(sql)


def redis_flush(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


def main(argv=None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="ildreview-kill-"))
    env = environment(args, tmp)
    os.environ.update(env)
    os.environ["DJANGO_SETTINGS_MODULE"] = "ildreview.settings"
    sys.path.insert(0, str(ROOT))
    if args.db == "postgres":
        pg_admin(f'CREATE DATABASE "{pg_name(tmp)}"')
    if args.broker == "redis":
        redis_flush(args.redis_url)
    worker = WorkerProcess(env=env, log=tmp / "worker.log", name=f"killcheck-{os.getpid()}@%h")
    report: dict = {
        "studies": args.studies,
        "kill": args.kill,
        "broker": args.broker,
        "db": args.db,
    }
    try:
        report.update(run(args, worker))
    finally:
        worker.stop()
        from django.db import connections

        connections.close_all()
        if args.db == "postgres":
            pg_admin(f'DROP DATABASE IF EXISTS "{pg_name(tmp)}" WITH (FORCE)')
        if args.broker == "redis":
            redis_flush(args.redis_url)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            report["tmp"] = str(tmp)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report.get("ok") else 1


def run(args, worker: WorkerProcess) -> dict:
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import transaction

    call_command("migrate", verbosity=0)
    from cases.models import Study
    from retrieval.pipeline.enqueue import study_enqueue_processing
    from retrieval.pipeline.reference import model_version_bootstrap
    from retrieval.pipeline.synthetic import (
        LIBRARY_PATTERNS,
        synthetic_library_create,
        synthetic_study_create,
    )

    User = get_user_model()
    expert = User.objects.create(username="expert1")
    approver = User.objects.create(username="expert2")
    clinician = User.objects.create(username="clinician")
    t0 = time.perf_counter()
    synthetic_library_create(
        expert=expert, approver=approver, per_class=2, size=args.size, seed_base=100
    )
    version = model_version_bootstrap()
    setup_s = time.perf_counter() - t0
    studies = []
    for i in range(args.studies):
        study = synthetic_study_create(
            uploaded_by=clinician,
            pattern=list(LIBRARY_PATTERNS.values())[i % 3],
            slices=args.slices,
            size=args.size,
            seed=i,
            empty_slices=2,
        )
        with transaction.atomic():
            study_enqueue_processing(study=study)
        studies.append(study.pk)

    from retrieval.models import StudyJob

    t_start = time.perf_counter()
    worker.start()
    killed = None
    if args.kill:
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and killed is None:
            job = StudyJob.objects.filter(study_id__in=studies, state="running").first()
            done_before = Study.objects.filter(pk__in=studies, status="ready_for_review").count()
            if job is not None and done_before >= min(args.kill_after, args.studies - 1):
                worker.kill9()
                killed = {
                    "study": job.study_id,
                    "stage": job.stage,
                    "studies_done_before_kill": done_before,
                    "after_s": round(time.perf_counter() - t_start, 1),
                }
            time.sleep(0.05)
        if killed is None:
            return {"ok": False, "error": "no stage was seen running; nothing was killed"}
        worker.start()  # same name: it re-enqueues what its dead incarnation was running
    from django.db.models import Q

    from retrieval.models import SimilarCase

    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        statuses = dict(Study.objects.filter(pk__in=studies).values_list("pk", "status"))
        if all(s in ("ready_for_review", "failed") for s in statuses.values()):
            break
        time.sleep(0.5)
    elapsed = time.perf_counter() - t_start
    # CAMs follow the results as jobs of their own: wait for them too.
    while time.monotonic() < deadline:
        missing = SimilarCase.objects.filter(result__study_id__in=studies).filter(
            Q(query_cam="") | Q(reference_cam="")
        )
        if not missing.exists():
            break
        time.sleep(0.5)
    cams_s = time.perf_counter() - t_start
    out = checks(studies=studies, version=version)
    out.update(
        {
            "killed": killed,
            "seconds_to_all_done": round(elapsed, 1),
            "seconds_to_all_cams": round(cams_s, 1),
            "setup_seconds": round(setup_s, 1),
            "attempts": dict(
                StudyJob.objects.filter(study_id__in=studies).values_list("study_id", "attempts")
            ),
        }
    )
    return out


def _stored_keys(folder: str) -> list[str]:
    """Keys of every stored file under `folder`, through the storage API (any backend)."""
    from django.core.files.storage import default_storage

    try:
        dirs, files = default_storage.listdir(folder)
    except FileNotFoundError:
        return []
    keys = [f"{folder}/{name}" for name in files]
    for d in dirs:
        keys.extend(_stored_keys(f"{folder}/{d}"))
    return keys


def checks(*, studies: list[int], version) -> dict:
    from cases.models import Slice, Study
    from retrieval.models import SimilarCase, SliceFeatures, StudyResult

    problems = []
    status = dict(Study.objects.filter(pk__in=studies).values_list("pk", "status"))
    for pk, st in status.items():
        if st != "ready_for_review":
            msg = Study.objects.get(pk=pk).status_message
            problems.append(f"study {pk} is {st} {msg}")
    expected_files = set()
    for pk in studies:
        results = StudyResult.objects.filter(study_id=pk)
        if results.count() != 1:
            problems.append(f"study {pk}: {results.count()} StudyResult rows")
            continue
        cases = list(SimilarCase.objects.filter(result=results[0]).order_by("rank"))
        if [c.rank for c in cases] != list(range(1, len(cases) + 1)) or not cases:
            problems.append(f"study {pk}: ranks {[c.rank for c in cases]}")
        for c in cases:
            if not c.query_cam or not c.reference_cam:
                problems.append(f"study {pk} rank {c.rank}: CAM missing")
            expected_files.update({c.query_cam.name, c.reference_cam.name})
        n_slices = Slice.objects.filter(series__study_id=pk).count()
        n_feat = SliceFeatures.objects.filter(
            slice__series__study_id=pk, model_version=version
        ).count()
        if n_feat != n_slices:
            problems.append(f"study {pk}: {n_feat} SliceFeatures rows for {n_slices} slices")
    on_disk = set(_stored_keys("results"))
    if on_disk != expected_files:
        problems.append(
            f"result files: {len(on_disk)} on disk vs {len(expected_files)} referenced; extra "
            f"{sorted(on_disk - expected_files)[:5]} missing {sorted(expected_files - on_disk)[:5]}"
        )
    return {
        "ok": not problems,
        "problems": problems,
        "ready": sum(1 for s in status.values() if s == "ready_for_review"),
        "result_rows": StudyResult.objects.filter(study_id__in=studies).count(),
        "similar_case_rows": SimilarCase.objects.filter(result__study_id__in=studies).count(),
        "cam_files": len(on_disk),
    }


def print_report(report: dict) -> None:
    print("worker kill check")
    for key, value in report.items():
        print(f"  {key}: {value}")
    print("PASS" if report.get("ok") else "FAIL")


if __name__ == "__main__":
    sys.exit(main())
