"""A real Celery worker (`celery -A ildreview worker -Q gpu,cpu`) as a subprocess in its own
process group, logging to a file. Shared by the scripts that run a worker
(`scripts/worker_kill_check.py`, `scripts/upload_to_results.py`,
`benchmarks/scaleout_bench.py`) and the browser tests; no Django, so that it can be imported
before settings are configured. The /proc readers below (Linux) let a benchmark sample the
memory and CPU time of a worker's pool processes, which do the work.
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

    def pool_pids(self) -> list[int]:
        """Process ids of the worker's pool processes (the children of its main process)."""
        return child_pids(self.proc.pid) if self.alive() else []

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


def child_pids(pid: int) -> list[int]:
    """Ids of the processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        # The command name (2nd field) may hold spaces; the parent id is 2 fields after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (peak resident) of `pid` in KiB; {} once it has ended."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (0.0 once it has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), i.e. 11 and 12 after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
