"""A real Celery worker process against the Redis on 127.0.0.1:6379 (dedicated db numbers).

Both tests drive `scripts/worker_kill_check.py`, which uses its own fresh database (a SQLite
file, or a new PostgreSQL database when the suite runs on PostgreSQL) so that the worker
process and the test see the same committed data, its own media folder and broker db.
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
SCRIPT = ROOT / "scripts" / "worker_kill_check.py"

pytestmark = [pytest.mark.worker, pytest.mark.slow]


def _redis_or_skip() -> None:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        pytest.skip("no Redis at 127.0.0.1:6379")


def _db_kind() -> str:
    return "postgres" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite"


def _run(tmp_path, *args: str) -> dict:
    _redis_or_skip()
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--db", _db_kind(), "--json", str(out), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return report


def test_a_real_worker_processes_a_study_end_to_end(tmp_path):
    report = _run(
        tmp_path, "--studies", "1", "--no-kill", "--redis-url", "redis://127.0.0.1:6379/13"
    )
    assert report["ok"], report["problems"]
    assert report["ready"] == 1 and report["result_rows"] == 1
    assert report["cam_files"] == 2 * report["similar_case_rows"] > 0


def test_a_worker_killed_with_sigkill_leaves_all_five_studies_completed_without_duplicates(
    tmp_path,
):
    report = _run(tmp_path, "--studies", "5", "--kill", "--redis-url", "redis://127.0.0.1:6379/14")
    assert report["killed"] is not None, "the worker was never killed mid-stage"
    assert report["ok"], report["problems"]
    assert report["ready"] == 5 and report["result_rows"] == 5
    assert report["cam_files"] == 2 * report["similar_case_rows"]
    # The study whose stage was killed was re-enqueued (a second run), not lost.
    assert report["attempts"][str(report["killed"]["study"])] >= 2
