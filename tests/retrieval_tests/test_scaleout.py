"""Two real Celery worker processes share the work of one queue (PostgreSQL + Redis).

Drives `benchmarks/scaleout_bench.py` on tiny synthetic studies (a random-init 64 px model,
cold workers): its own new PostgreSQL database (dropped at the end), its own media folder and
Redis db 14. Only what the workers did is asserted, never a time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scaleout_bench.py"

pytestmark = [pytest.mark.worker, pytest.mark.slow]

STAGES = ("study_prepare", "study_embed", "study_retrieve")


def _reachable_or_skip(port: int, what: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        pytest.skip(f"no {what} at 127.0.0.1:{port}")


def test_two_worker_processes_both_process_studies_and_no_stage_runs_twice(tmp_path):
    _reachable_or_skip(6379, "Redis")
    _reachable_or_skip(5432, "PostgreSQL")  # SQLite cannot take two writing workers
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--synthetic",
            "--synthetic-size",
            "64",
            "--size",
            "64",
            "--weights",
            "random",
            "--epochs",
            "1",
            "--studies",
            "4",
            "--slices",
            "3",
            "--top-k",
            "2",
            "--library-per-class",
            "2",
            "--configs",
            "2x1",
            "--no-warm",
            "--redis-url",
            "redis://127.0.0.1:6379/14",
            "--timeout",
            "240",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0 and report["ok"], proc.stdout[-3000:] + proc.stderr[-3000:]
    [config] = report["configs"]
    assert config["workers"] == 2 and config["failed"] == []
    tasks = config["tasks_by_worker"]
    assert len(tasks) == 2
    # Both processes consumed from the shared queues: each ran stages of the studies.
    for counts in tasks:
        assert sum(counts.get(stage, [0])[0] for stage in STAGES) >= 1, tasks
    # Each of the 4 studies ran each stage exactly once over both workers, and each similar
    # case's CAM job once (4 studies x top 2).
    for stage in STAGES:
        assert sum(c.get(stage, [0])[0] for c in tasks) == 4, (stage, tasks)
    assert sum(c.get("similar_case_explain", [0])[0] for c in tasks) == 8, tasks
