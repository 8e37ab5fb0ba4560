"""Fixtures of the browser tests: Chromium through Playwright, a real Celery worker process
sharing the live server's database, media and broker, a demo library and a small model.

Loading this conftest (it is collected with the rest of the suite) switches a SQLite test
database from memory to a file, because the worker is another process that must see the same
committed data as Django's live server; PostgreSQL test databases are shared anyway.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from ildreview.broker import filesystem_transport_options
from scripts.worker_process import WorkerProcess

# Playwright's sync API runs an event loop in this thread; the test's own ORM calls (set-up,
# waiting for the worker) are plain synchronous code, which Django would otherwise refuse.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "test-artefacts"
CHROMIUM = os.environ.get("ILDREVIEW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Broker of the test's worker: a Redis db of its own (the worker integration tests use 13, 14).
REDIS_URL = os.environ.get("ILDREVIEW_BROWSER_TEST_REDIS", "redis://127.0.0.1:6379/12")


def _sqlite_test_database_on_disk() -> None:
    """Give a SQLite test database a file name (mutating the settings dict that the database
    connection shares), before pytest-django creates it; no effect on PostgreSQL."""
    db = django_settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.sqlite3":
        return
    test = db.setdefault("TEST", {})
    name = test.get("NAME")
    if not name or name == ":memory:" or str(name).startswith("file:memorydb"):
        test["NAME"] = str(Path(tempfile.gettempdir()) / f"ildreview-test-{os.getpid()}.sqlite3")
        options = db.setdefault("OPTIONS", {})
        # WAL: the live server's reads never wait for the worker's writes (and the reverse);
        # no fsync: a test database need not survive a power cut, and the suite stays as fast
        # as in memory; a generous busy timeout for the moments two processes write at once.
        commands = [c for c in options.get("init_command", "").split(";") if c.strip()]
        options["init_command"] = ";".join(
            [*commands, "PRAGMA journal_mode=WAL", "PRAGMA synchronous=OFF"]
        )
        options.setdefault("timeout", 30)


_sqlite_test_database_on_disk()


def redis_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


def use_redis() -> bool:
    """Redis in CI or when one answers on 127.0.0.1:6379, else kombu's filesystem transport;
    ILDREVIEW_BROWSER_TEST_BROKER=redis|filesystem forces one."""
    forced = os.environ.get("ILDREVIEW_BROWSER_TEST_BROKER")
    if forced in ("redis", "filesystem"):
        return forced == "redis"
    return os.environ.get("CI") == "true" or redis_reachable()


def database_url() -> str:
    """DATABASE_URL of the test database this process uses (for the worker process)."""
    from django.db import connection

    sd = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(sd['NAME']).resolve()}"
    if connection.vendor == "postgresql":
        auth = sd.get("USER") or ""
        if sd.get("PASSWORD"):
            auth += f":{sd['PASSWORD']}"
        host = sd.get("HOST") or "127.0.0.1"
        port = sd.get("PORT") or 5432
        return f"postgres://{auth}@{host}:{port}/{sd['NAME']}"
    raise RuntimeError(f"browser tests do not support the {connection.vendor} database")


@dataclass
class Stack:
    """Everything a browser test talks to."""

    url: str  # live server
    tmp: Path
    worker: WorkerProcess


def _celery_point_at(*, broker_url: str, transport_options: dict) -> dict:
    """Make this process's Celery app publish to the worker's broker (not eagerly); returns
    the previous configuration for `_celery_restore`."""
    from ildreview.celery import app

    previous = {
        "task_always_eager": app.conf.task_always_eager,
        "broker_url": app.conf.broker_url,
        "broker_transport_options": dict(app.conf.broker_transport_options or {}),
    }
    app.conf.task_always_eager = False
    app.conf.broker_url = broker_url
    app.conf.broker_transport_options = transport_options
    _celery_pool_reset(app)
    return previous


def _celery_restore(previous: dict) -> None:
    from ildreview.celery import app

    for key, value in previous.items():
        setattr(app.conf, key, value)
    _celery_pool_reset(app)


def _celery_pool_reset(app) -> None:
    # Connections made for the old broker must not be reused for the new one. kombu also
    # keeps producer pools in a process-wide registry (and Celery caches one on `app.amqp`);
    # both would hand back a pool closed here ("Acquire on closed pool").
    from kombu import pools

    if app._pool is not None:
        app._pool.force_close_all()
        app._pool = None
    app.amqp._producer_pool = None
    pools.reset()


@pytest.fixture
def browser():
    """Headless system Chromium (Playwright's own browser download does not work here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run `make test` (scripts/ensure_chromium.sh) or "
            "apt-get install chromium"
        )
    from django.db import connections
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
            # Database connections opened while Playwright ran belong to its context (Django's
            # connection handler is context-local): close them here, or PostgreSQL refuses to
            # drop the test database at the end of the session.
            connections.close_all()


@pytest.fixture
def stack(live_server, transactional_db, settings, tmp_path):
    """Live server + a real worker on the same database, media folder, var folder and broker.

    The worker is started first so that its start-up overlaps the test's own set-up; it is
    stopped before the database is flushed.
    """
    import torch

    var = tmp_path / "var"
    models = var / "models"
    models.mkdir(parents=True)
    settings.VAR_DIR = var
    settings.ILDREVIEW_MODEL_DIR = models
    settings.CELERY_TASK_ALWAYS_EAGER = False
    env = {
        "DATABASE_URL": database_url(),
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "ILDREVIEW_VAR_DIR": str(var),
        "ILDREVIEW_MODEL_DIR": str(models),
        "CELERY_TASK_ALWAYS_EAGER": "false",
        "ILDREVIEW_RECOVERY_INTERVAL_S": "3600",
        "DEBUG": "true",
        "PYTHONUNBUFFERED": "1",
        # One intra-op thread: on 2 shared cores torch's thread pool spins against the live
        # server, the browser and this process, and gets many times slower, not faster.
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    redis_broker = use_redis()
    if redis_broker:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        env["CELERY_BROKER_URL"] = REDIS_URL
        previous = _celery_point_at(
            broker_url=REDIS_URL, transport_options={"visibility_timeout": 7200}
        )
    else:
        env["CELERY_BROKER_URL"] = "filesystem://"
        previous = _celery_point_at(
            broker_url="filesystem://",
            transport_options=filesystem_transport_options(folder=var / "broker"),
        )
    worker = WorkerProcess(
        env=env, log=tmp_path / "worker.log", name=f"browsertest-{os.getpid()}@%h"
    )
    threads = torch.get_num_threads()
    try:
        worker.start()
        torch.set_num_threads(1)  # this process trains the model and may compute CAMs on demand
        yield Stack(url=live_server.url, tmp=tmp_path, worker=worker)
    finally:
        worker.stop()
        torch.set_num_threads(threads)
        _celery_restore(previous)
        if redis_broker:
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
        log = tmp_path / "worker.log"
        if log.exists():
            ARTEFACTS.mkdir(exist_ok=True)
            shutil.copy(log, ARTEFACTS / "browser-worker.log")


def wait_until(predicate, *, timeout: float, what: str, worker: WorkerProcess, step=0.5):
    """Poll `predicate` until it is truthy; fail with the worker's log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if not worker.alive():
            pytest.fail(f"the worker died while waiting for {what}:\n{worker.log_tail()}")
        time.sleep(step)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{worker.log_tail()}")
