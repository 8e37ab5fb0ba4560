"""8 clients uploading and reading at once against a real server: no 5xx, nothing lost, nothing
saved for a client that got an error, every saved upload queued exactly once.

The server is `manage.py runserver` (README command 1's web server, threaded, DEBUG off) in its
own process with its own database: a SQLite file in a temporary folder (always), and a fresh
PostgreSQL database `ildreview_concurrency` when the suite runs on PostgreSQL
(DATABASE_URL=postgres://...). Celery is not eager and no worker runs: the broker is the
embedded filesystem transport in the temporary folder, so the messages the uploads sent stay
there to be counted.

Each client mixes fresh uploads (API and upload page), uploads of studies from a shared pool
that other clients upload too (same user: 200, another user: 400), uploads with a corrupt file
(400, nothing saved, even for the valid study sent along), and reads of the worklist, study
pages and the API. The run lasts ILDREVIEW_CONCURRENCY_SECONDS (60 by default, as in CI).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests
from pydicom.uid import generate_uid

from tests.dicomgen import chest_phantom, ct_dataset, dataset_bytes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DURATION_S = float(os.environ.get("ILDREVIEW_CONCURRENCY_SECONDS", "60"))
CLIENTS = 8
USERS = 4  # two clients per account, so that a shared study is re-sent by its own uploader too
SHARED_STUDIES = 12
PASSWORD = "concurrency-pw-123"
PG_DATABASE = "ildreview_concurrency"


# ---------------------------------------------------------------- generated studies


def study_files(*, patient_id: str, seed: int, slices: int = 2, corrupt: bool = False):
    """One small CT study (one series) as (file name, bytes); with `corrupt`, its last file
    loses the end of its pixel data."""
    study_uid, series_uid = generate_uid(), generate_uid()
    files = []
    for k in range(slices):
        ds = ct_dataset(
            hu=chest_phantom(size=16, seed=seed * 10 + k),
            study_uid=study_uid,
            series_uid=series_uid,
            position=(-50.0, -60.0, -100.0 + 2.5 * k),
            instance_number=k + 1,
            patient_id=patient_id,
        )
        files.append((f"{seed}-{k:02d}.dcm", dataset_bytes(ds)))
    if corrupt:
        name, data = files[-1]
        files[-1] = (name, data[: len(data) - 200])
    return files


# ---------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/postgres"))


def _pg_execute(url: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(_pg_admin_url(url), autocommit=True) as conn:
        conn.execute(sql)


@dataclass
class Server:
    env: dict[str, str]
    tmp: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def manage(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    def start(self) -> None:
        self.log = open(self.tmp / "server.log", "wb")  # noqa: SIM115 (the child's lifetime)
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if requests.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise AssertionError("server did not start:\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def log_tail(self) -> str:
        path = self.tmp / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


SETUP = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
import json
tokens = {}
for i in range(%(users)d):
    user = get_user_model().objects.create_user(f"clin{i}", password=%(password)r)
    user.groups.add(Group.objects.get(name="Clinician"))
    tokens[user.username] = Token.objects.create(user=user).key
print("TOKENS" + json.dumps(tokens))
"""

INSPECT = """
import json
from cases.models import Slice, Study
from retrieval.models import StudyJob
print("STATE" + json.dumps({
    "studies": {s.pk: s.status for s in Study.objects.all()},
    "jobs": [
        {
            "study": j.study_id,
            "state": j.state,
            "run_id": j.run_id,
            "attempts": j.attempts,
            "user": j.study.uploaded_by_id,
        }
        for j in StudyJob.objects.select_related("study")
    ],
    "slices": Slice.objects.count(),
}))
"""


def _marked_json(output: str, marker: str) -> dict:
    line = next(x for x in output.splitlines() if x.startswith(marker))
    return json.loads(line[len(marker) :])


@pytest.fixture(params=["sqlite", "postgres"])
def server(request, tmp_path):
    database_url = os.environ.get("DATABASE_URL", "")
    if request.param == "postgres":
        if not database_url.startswith("postgres"):
            pytest.skip("PostgreSQL variant: the suite runs on SQLite (DATABASE_URL unset)")
        url = urlunsplit(urlsplit(database_url)._replace(path=f"/{PG_DATABASE}"))
        _pg_execute(url, f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        _pg_execute(url, f'CREATE DATABASE "{PG_DATABASE}"')
    else:
        url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DJANGO_"))}
    env.update(
        {
            "DATABASE_URL": url,
            "DEBUG": "false",
            "SECRET_KEY": "concurrency-test-" + "x" * 40,
            "ILDREVIEW_PSEUDONYM_SALT": "concurrency-test-salt-" + "y" * 20,
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "SECURE_SSL_REDIRECT": "false",
            "SESSION_COOKIE_SECURE": "false",
            "CSRF_COOKIE_SECURE": "false",
            "SECURE_HSTS_SECONDS": "0",
            "MEDIA_ROOT": str(tmp_path / "media"),
            "STATIC_ROOT": str(tmp_path / "static"),
            "ILDREVIEW_VAR_DIR": str(tmp_path / "var"),
            "CELERY_BROKER_URL": "filesystem://",
            "CELERY_TASK_ALWAYS_EAGER": "false",
            "LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": "1",
        }
    )
    srv = Server(env=env, tmp=tmp_path)
    srv.kind = request.param
    try:
        srv.manage("migrate", "--noinput")
        srv.manage("collectstatic", "--noinput")
        srv.tokens = _marked_json(
            srv.manage("shell", "-c", SETUP % {"users": USERS, "password": PASSWORD}), "TOKENS"
        )
        srv.start()
        yield srv
    finally:
        srv.stop()
        if request.param == "postgres":
            _pg_execute(url, f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        for folder in ("media", "static"):
            shutil.rmtree(tmp_path / folder, ignore_errors=True)


# ---------------------------------------------------------------- clients


@dataclass
class Outcome:
    kind: str
    status: int  # 0: no HTTP answer (connection error)
    seconds: float
    created: list[int] = field(default_factory=list)  # study ids a success reported created
    present: list[int] = field(default_factory=list)  # ids of a 200 "nothing new"
    shared: int | None = None  # index in the shared pool
    detail: str = ""


class Client(threading.Thread):
    def __init__(self, *, n: int, server: Server, shared: list, deadline: float, out: list):
        super().__init__(name=f"client-{n}")
        self.n, self.server, self.shared, self.deadline, self.out = n, server, shared, deadline, out
        self.username = f"clin{n % USERS}"
        self.rng = random.Random(n)
        self.http = requests.Session()
        self.http.headers["Referer"] = server.base + "/"
        # The API client sends only its token: with the session cookie, DRF's session
        # authentication would come first and ask for a CSRF token.
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"Token {server.tokens[self.username]}"
        self.mine: list[int] = []
        self.seq = 0
        self.error: BaseException | None = None

    def url(self, path: str) -> str:
        return self.server.base + path

    def run(self) -> None:
        try:
            self.login()
            while time.monotonic() < self.deadline:
                self.step()
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc

    def login(self) -> None:
        self.http.get(self.url("/accounts/login/"), timeout=30)
        r = self.http.post(
            self.url("/accounts/login/"),
            data={
                "username": self.username,
                "password": PASSWORD,
                "csrfmiddlewaretoken": self.http.cookies["csrftoken"],
            },
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302, (r.status_code, r.text[:500])

    def record(self, kind: str, started: float, response, **kwargs) -> Outcome:
        status = response.status_code if response is not None else 0
        detail = "" if response is None or status < 300 else response.text[:300]
        outcome = Outcome(kind, status, time.monotonic() - started, detail=detail, **kwargs)
        self.out.append(outcome)
        return outcome

    def request(self, method: str, path: str, **kwargs):
        http = self.api if path.startswith("/api/") else self.http
        try:
            return http.request(method, self.url(path), timeout=120, **kwargs)
        except requests.RequestException:
            return None

    def new_study(self, **kwargs):
        self.seq += 1
        seed = self.n * 100000 + self.seq
        return study_files(patient_id=f"PAT-{self.n}-{self.seq}", seed=seed, **kwargs)

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.30:
            self.upload_api("fresh-api", self.new_study())
        elif roll < 0.40:
            self.upload_page(self.new_study())
        elif roll < 0.52:
            index = self.rng.randrange(len(self.shared))
            self.upload_api("shared", self.shared[index], shared=index)
        elif roll < 0.58:
            corrupt = self.new_study(corrupt=True)
            with_valid = self.new_study() + corrupt if self.rng.random() < 0.5 else corrupt
            self.upload_api("corrupt", with_valid)
        else:
            self.read()

    def upload_api(self, kind: str, files, shared: int | None = None) -> None:
        started = time.monotonic()
        r = self.request(
            "POST",
            "/api/studies/",
            files=[("files", (name, data, "application/dicom")) for name, data in files],
        )
        created, present = [], []
        if r is not None and r.status_code in (200, 201):
            body = r.json()
            ids = [s["id"] for s in body["studies"]]
            (created if r.status_code == 201 else present).extend(ids)
            self.mine.extend(ids)
        self.record(kind, started, r, created=created, present=present, shared=shared)

    def upload_page(self, files) -> None:
        started = time.monotonic()
        r = self.request(
            "POST",
            "/upload/",
            data={"csrfmiddlewaretoken": self.http.cookies.get("csrftoken", "")},
            files=[("files", (name, data, "application/dicom")) for name, data in files],
            allow_redirects=False,
        )
        created = []
        if r is not None and r.status_code == 302:
            match = re.search(r"/studies/(\d+)/$", r.headers.get("Location", ""))
            assert match, r.headers.get("Location")
            created.append(int(match.group(1)))
            self.mine.extend(created)
        self.record("fresh-page", started, r, created=created)

    def read(self) -> None:
        pk = self.rng.choice(self.mine) if self.mine else None
        choices = ["/", "/api/studies/"]
        if pk is not None:
            choices += [f"/studies/{pk}/", f"/api/studies/{pk}/"]
        path = self.rng.choice(choices)
        started = time.monotonic()
        r = self.request("GET", path)
        self.record("read", started, r)


# ---------------------------------------------------------------- checks


def broker_messages(var_dir: Path) -> list[tuple[int, str]]:
    """(study id, run id) of every message waiting in the filesystem broker."""
    found = []
    for path in (var_dir / "broker" / "in").glob("*.msg"):
        message = json.loads(path.read_text())
        assert message["headers"]["task"] == "retrieval.tasks.study_prepare", message["headers"]
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        found.append((int(args[0]), str(args[1])))
    return found


def media_counts(media: Path) -> Counter:
    return Counter(p.suffix for p in media.rglob("*") if p.is_file())


def _percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def latency_report(outcomes: list[Outcome]) -> str:
    lines = [f"{'kind':<11} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}  statuses"]
    by_kind: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_kind[o.kind].append(o)
    for kind, items in sorted(by_kind.items()):
        ms = sorted(o.seconds * 1000 for o in items)
        statuses = dict(sorted(Counter(o.status for o in items).items()))
        lines.append(
            f"{kind:<11} {len(items):>5} {_percentile(ms, 0.5):>8.0f} "
            f"{_percentile(ms, 0.95):>8.0f} {ms[-1]:>8.0f}  {statuses}"
        )
    return "\n".join(lines)


def test_eight_clients_for_a_minute_get_no_5xx_and_every_upload_is_saved_once_or_not_at_all(
    server,
):
    shared = [study_files(patient_id=f"SHARED-{i}", seed=900000 + i) for i in range(SHARED_STUDIES)]
    outcomes: list[Outcome] = []
    deadline = time.monotonic() + DURATION_S
    clients = [
        Client(n=n, server=server, shared=shared, deadline=deadline, out=outcomes)
        for n in range(CLIENTS)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=DURATION_S + 600)
    server.stop()  # every request answered, every on-commit publish done

    report = latency_report(outcomes)
    print(f"\n[{server.kind}] {len(outcomes)} requests in {DURATION_S:.0f} s\n{report}")
    assert all(c.error is None for c in clients), [repr(c.error) for c in clients if c.error]
    assert not any(c.is_alive() for c in clients)

    # 0 x 5xx and every request answered.
    failures = [o for o in outcomes if o.status == 0 or o.status >= 500]
    assert failures == [], (failures[:5], server.log_tail())
    # Each kind got the answer it must get.
    expected = {
        "fresh-api": {201},
        "fresh-page": {302},
        "shared": {200, 201, 400},
        "corrupt": {400},
        "read": {200},
    }
    wrong = [o for o in outcomes if o.status not in expected[o.kind]]
    assert wrong == [], wrong[:5]
    assert {o.kind for o in outcomes} >= {"fresh-api", "fresh-page", "shared", "corrupt"}

    # Each study was created by exactly one successful response...
    created = Counter(pk for o in outcomes for pk in o.created)
    assert created and max(created.values()) == 1
    for o in outcomes:
        if o.kind != "read" and o.status in (201, 302):
            assert len(o.created) == 1, o
    # ...a shared study at most once, and "already present" only names a created study.
    shared_created = Counter(o.shared for o in outcomes if o.kind == "shared" and o.created)
    assert not shared_created or max(shared_created.values()) == 1
    assert {pk for o in outcomes for pk in o.present} <= set(created)

    # The database holds exactly the studies the clients were told about: none lost, none
    # saved for a client that got an error.
    state = _marked_json(server.manage("shell", "-c", INSPECT), "STATE")
    stored = {int(pk): status for pk, status in state["studies"].items()}
    assert set(stored) == set(created)
    # Each queued exactly once: one job of one run. The fair queue sends one run per user
    # (ILDREVIEW_QUEUE_PER_USER) to the broker: that run has exactly one broker message; the
    # user's other runs wait in the database with none (they are sent when a run ends).
    jobs = {job["study"]: job for job in state["jobs"]}
    assert set(jobs) == set(stored)
    assert all(status == "processing" for status in stored.values()), Counter(stored.values())
    assert all(j["state"] in ("queued", "waiting") and j["attempts"] == 1 for j in jobs.values())
    sent = {pk: job for pk, job in jobs.items() if job["state"] == "queued"}
    assert Counter(job["user"] for job in sent.values()) == dict.fromkeys(
        {job["user"] for job in jobs.values()}, 1
    )
    messages = broker_messages(Path(server.env["ILDREVIEW_VAR_DIR"]))
    assert sorted(messages) == sorted((pk, job["run_id"]) for pk, job in sent.items())
    # No file left behind by a refused upload: one pixel array and one DICOM copy per slice.
    files = media_counts(Path(server.env["MEDIA_ROOT"]))
    assert files[".npy"] == files[".dcm"] == state["slices"], (files, state["slices"])
    print(
        f"[{server.kind}] studies {len(stored)}, broker messages {len(messages)} (one per "
        f"user, the others waiting), 5xx 0, lost 0, duplicated 0"
    )
