"""A real Celery worker (`celery -A ildreview worker -Q gpu,cpu`) as a subprocess in its own
process group, logging to a file. Shared by the scripts that run a worker
(`scripts/worker_kill_check.py`, `scripts/upload_to_results.py`) and the browser tests; no
Django, so that it can be imported before settings are configured.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One worker named `name` (`%h` is the host name), its environment `env` over ours."""

    def __init__(self, *, env: dict[str, str], log: Path, name: str):
        self.env, self.log, self.name = env, log, name
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [
            str(ROOT / ".venv" / "bin" / "celery"),
            "-A",
            "ildreview",
            "worker",
            "-Q",
            "gpu,cpu",
            "--concurrency",
            "1",
            "-n",
            self.name,
            "--without-gossip",
            "--without-mingle",
            "--loglevel",
            "INFO",
        ]
        fh = open(self.log, "ab")  # noqa: SIM115 (the child writes to it until it stops)
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and its pool), as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
