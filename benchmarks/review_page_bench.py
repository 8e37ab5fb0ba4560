"""Response time of the review page under 8 concurrent readers, on a real server.

    python benchmarks/review_page_bench.py [--readers 8] [--requests 400] [--slices 64]
                                           [--library 48] [--json OUT]

Sets up a throw-away installation in a temporary folder (SQLite database, media, broker and
index folders; DEBUG off as `make run` serves it), with one processed 64-slice study: slice
embeddings and radiomics, the top-8 result with its CAM overlays, and a worker's stored answer
for one filtered view (k=16 and a diagnosis), all written here in the roles the workers have.
Then it starts `manage.py runserver --noreload` and lets `--readers` threads, each logged in
as the study's clinician, request each URL below `--requests` times in all, and prints p50 /
p95 response time and requests per second per URL:

- the review page (stored top 8);
- the review page with k=16 and a diagnosis filter (answered from the worker's stored file);
- a stored CAM overlay (PNG);
- a CAM overlay no worker has computed yet (202 + placeholder; the job is sent once).

The web process loads no model and builds no index (tests/cases_tests/test_review_page.py
proves it), so these figures are reads only: database queries, storage reads and templates.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=f"sqlite:///{tmp / 'db.sqlite3'}",
        MEDIA_ROOT=str(tmp / "media"),
        STATIC_ROOT=str(tmp / "static"),
        ILDREVIEW_VAR_DIR=str(tmp / "var"),
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(50),
        ILDREVIEW_PSEUDONYM_KEY=secrets.token_urlsafe(32),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        SECURE_HSTS_SECONDS="0",
        ILDREVIEW_INDEX_BACKEND="exact",
        OMP_NUM_THREADS="1",
    )
    env.pop("CELERY_BROKER_URL", None)  # the embedded filesystem broker under the tmp folder
    return env


def _png(size: int, colour: tuple[int, int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def setup_data(*, slices: int, library: int) -> dict:
    """Run inside the temporary installation (Django configured from the environment): the
    database rows and files a processed study has. Returns the URLs and a session cookie."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")
    django.setup()
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from django.db import transaction
    from django.test import Client
    from django.urls import reverse

    from cases.models import Diagnosis, ReferenceCase, Study
    from retrieval.models import (
        ModelVersion,
        ReferenceEmbedding,
        SimilarCase,
        SliceFeatures,
        StudyResult,
    )
    from retrieval.pipeline.index_store import index_query
    from retrieval.pipeline.stages import cam_name
    from retrieval.pipeline.synthetic import synthetic_reference_create, synthetic_study_create
    from retrieval.services import study_live_query_run

    rng = np.random.default_rng(0)
    dim = 128
    features = [
        "original_firstorder_Mean",
        "original_firstorder_Entropy",
        "original_glcm_Contrast",
        "original_glcm_Correlation",
        "original_glrlm_RunEntropy",
        "original_ngtdm_Coarseness",
    ]

    def unit(v):
        return (v / np.linalg.norm(v)).astype(np.float32)

    user_model = get_user_model()
    clinician = user_model.objects.create_user("reader", password=secrets.token_urlsafe(12))
    clinician.groups.add(Group.objects.get(name="Clinician"))
    expert = user_model.objects.create_user("expert", password=secrets.token_urlsafe(12))
    expert.groups.add(Group.objects.get(name="Expert"))
    version = ModelVersion.objects.create(
        name="bench", artefact_dir="unused", backbone="efficientnet_lite0", is_active=True
    )
    diagnoses = list(Diagnosis.objects.order_by("pk")[:4])
    centres = {d.pk: unit(rng.normal(size=dim)) for d in diagnoses}
    with transaction.atomic():
        for n in range(library):
            dx = diagnoses[n % len(diagnoses)]
            rc = synthetic_reference_create(
                expert=expert, approver=expert, diagnosis=dx, pattern="normal", slices=2, seed=n
            )
            for s in rc.study.series.get().slices.all():
                vec = unit(centres[dx.pk] + 0.5 * rng.normal(size=dim))
                ReferenceEmbedding.objects.create(
                    model_version=version,
                    reference_case=rc,
                    slice=s,
                    vector=vec.tobytes(),
                    lung_fraction=0.4,
                )
                SliceFeatures.objects.create(
                    slice=s,
                    model_version=version,
                    lung_fraction=0.4,
                    usable=True,
                    radiomics_main={f: float(rng.normal()) for f in features},
                )
        study = synthetic_study_create(uploaded_by=clinician, pattern="normal", slices=slices)
        query_slices = list(study.series.get().slices.order_by("index"))
        target = centres[diagnoses[0].pk]
        vectors = []
        for s in query_slices:
            vec = unit(target + 0.6 * rng.normal(size=dim))
            vectors.append(vec)
            SliceFeatures.objects.create(
                slice=s,
                model_version=version,
                lung_fraction=0.5,
                usable=True,
                embedding=vec.tobytes(),
                radiomics_main={f: float(rng.normal()) for f in features},
            )
    # The retrieve stage's result and the explain jobs' CAM files (as the workers write them).
    own = set(ReferenceCase.objects.filter(study=study).values_list("id", flat=True))
    result, meta = index_query(
        model_version=version, query_vectors=np.vstack(vectors), k_cases=8, exclude_case_ids=own
    )
    codes = {d.code: d for d in diagnoses}
    sr = StudyResult.objects.create(
        study=study,
        model_version=version,
        suggested_diagnosis=codes.get(result.suggested_label),
        votes={str(k): float(v) for k, v in result.votes.items()},
        key_slice_id=query_slices[result.cases[0].query_slice_index].pk,
        query_slice_count=len(query_slices),
    )
    overlay = _png(224, (255, 0, 0, 120))
    for rank, hit in enumerate(result.cases, start=1):
        case = SimilarCase.objects.create(
            result=sr,
            rank=rank,
            reference_case_id=hit.case_id,
            score=float(hit.score),
            n_hits=int(hit.n_hits),
            query_slice_id=query_slices[hit.query_slice_index].pk,
            reference_slice_id=meta[hit.best_slice_id][2],
        )
        names = {}
        for side in ("query", "reference"):
            name = cam_name(study_id=study.pk, model_version_id=version.pk, rank=rank, side=side)
            names[side] = default_storage.save(name, ContentFile(overlay))
        SimilarCase.objects.filter(pk=case.pk).update(
            query_cam=names["query"], reference_cam=names["reference"]
        )
    Study.objects.filter(pk=study.pk).update(status=Study.Status.READY_FOR_REVIEW)
    code = diagnoses[1].code
    study_live_query_run(study_id=study.pk, model_version_id=version.pk, k=16, diagnosis_code=code)
    first = sr.cases.order_by("rank").first()
    pending_pair = (query_slices[-1].pk, first.reference_slice_id)
    client = Client()
    client.force_login(clinician)
    review = reverse("cases:study_review", args=[study.pk])
    return {
        "session": client.cookies["sessionid"].value,
        "urls": {
            "review page (stored top 8)": review,
            "review page, k=16 + diagnosis filter": f"{review}?k=16&diagnosis={code}",
            "CAM overlay, stored (PNG)": reverse(
                "cases:review_cam",
                args=[study.pk, first.query_slice_id, first.reference_slice_id, "reference"],
            ),
            "CAM overlay, not computed yet (202)": reverse(
                "cases:review_cam", args=[study.pk, *pending_pair, "reference"]
            ),
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(base: str, timeout: float = 60.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(base + "/accounts/login/", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.3)
    raise RuntimeError("the server did not start")


def _check_pages(*, base: str, session: str, urls: dict[str, str]) -> None:
    """The pages measured show what they should: results (not the "computing" notice)."""
    import requests

    s = requests.Session()
    s.cookies.set("sessionid", session, domain="127.0.0.1")
    for label, url in urls.items():
        if "page" not in label:
            continue
        html = s.get(base + url, timeout=60).text
        shown = html.count('data-testid="result"')
        if 'data-testid="results-computing"' in html or not shown:
            raise RuntimeError(f"{label}: no results shown")
        print(f"{label}: {shown} results shown")


def measure(*, base: str, session: str, url: str, readers: int, total: int) -> dict:
    """`total` GETs of `url` by `readers` threads at once; latencies and throughput."""
    import requests

    latencies: list[float] = []
    statuses: set[int] = set()
    lock = threading.Lock()
    per_reader = max(1, total // readers)
    start_gate = threading.Barrier(readers + 1)

    def reader():
        s = requests.Session()
        s.cookies.set("sessionid", session, domain="127.0.0.1")
        s.get(base + url, timeout=60)  # warm this connection's thread
        start_gate.wait()
        for _ in range(per_reader):
            t0 = time.perf_counter()
            r = s.get(base + url, timeout=60)
            _ = r.content
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                statuses.add(r.status_code)

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": len(latencies),
        "status": sorted(statuses),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p95_ms": round(1000 * q[94], 1),
        "rps": round(len(latencies) / wall, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readers", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="per URL, all readers")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--library", type=int, default=48, help="reference cases")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:  # the child that writes the data inside the temporary installation
        print(json.dumps(setup_data(slices=args.slices, library=args.library)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="review-bench-"))
    env = _env(tmp)
    py = sys.executable
    server = None
    try:
        for command in (["migrate"], ["collectstatic"]):  # as `make run` serves the app
            subprocess.run(
                [py, "manage.py", *command, "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
            )
        out = subprocess.run(
            [py, __file__, "--setup", "--slices", str(args.slices), "--library", str(args.library)],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        data = json.loads(out.strip().splitlines()[-1])
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        server = subprocess.Popen(
            [py, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_up(base)
        _check_pages(base=base, session=data["session"], urls=data["urls"])
        print(
            f"review page bench: {args.readers} concurrent readers, {args.requests} requests per"
            f" URL; runserver --noreload (threaded), SQLite, DEBUG off; study of {args.slices}"
            f" slices, library of {args.library} cases"
        )
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
            f" Python {platform.python_version()}"
        )
        print(f"{'URL':42s} {'status':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'req/s':>8s}")
        rows = {}
        for label, url in data["urls"].items():
            row = measure(
                base=base,
                session=data["session"],
                url=url,
                readers=args.readers,
                total=args.requests,
            )
            rows[label] = row
            status = ",".join(str(s) for s in row["status"])
            print(
                f"{label:42s} {status:>8s} {row['p50_ms']:8.1f} {row['p95_ms']:8.1f}"
                f" {row['rps']:8.1f}"
            )
        if any(s >= 500 for row in rows.values() for s in row["status"]):
            print("server errors: the figures above are not valid")
            return 1
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "rows": rows}))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
