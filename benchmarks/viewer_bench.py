"""Load time of the review page's viewer and the time of one linked scroll step, in Chromium.

    python benchmarks/viewer_bench.py [--loads 5] [--steps 20] [--size 512] [--json OUT]

Sets up a throw-away installation in a temporary folder (SQLite, media; DEBUG off and static
files collected, as `make run` serves the app: WhiteNoise sends the compressed bundle), with
one processed study (64 slices of `--size` px) whose similar cases are 80- and 48-slice
series, CAM overlays stored (tests/browser_tests/viewer_data.py). It starts `manage.py
runserver --noreload` and drives the system Chromium (Playwright) logged in as the study's
clinician:

- review page load, `--loads` times (the first with an empty browser cache, the others with
  the cache warm): time to DOMContentLoaded, to the load event, and to the viewer showing the
  first slice (Cornerstone initialised, pixels fetched and drawn);
- one linked scroll step, `--steps` times `--pause-ms` apart: from the ArrowDown key to both
  viewports showing their new slice (the query one step on, the comparison at the same place
  in its lungs), on slices not seen before ("first pass": the viewer prefetches a few slices
  ahead) and again after scrolling back ("second pass": all in the viewer's cache).

Prints medians and JSON; figures depend on the machine (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = os.environ.get("ILDREVIEW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


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
        OMP_NUM_THREADS="1",
        # The stored answer holds the two similar cases: the page shows them (no worker runs).
        ILDREVIEW_RESULTS_TOP_K="2",
    )
    env.pop("CELERY_BROKER_URL", None)
    return env


def setup_data(*, size: int) -> dict:
    """Inside the temporary installation: the study and its similar cases; a session cookie."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ildreview.settings")
    django.setup()
    from django.test import Client

    from tests.browser_tests.viewer_data import viewer_case_create
    from tests.factories import UserFactory

    clinician = UserFactory(username="bench-reader", role="Clinician")
    expert = UserFactory(username="bench-expert", role="Expert")
    data = viewer_case_create(
        clinician=clinician,
        expert=expert,
        query_slices=64,
        reference_slices=(80, 48),
        size=size,
    )
    client = Client()
    client.force_login(clinician)
    return {"session": client.cookies["sessionid"].value, "study": data["study"]}


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


# In the page: time from the ArrowDown key to both viewports showing a new slice.
STEP_JS = """
async ({ key, steps, pause }) => {
  const v = window.ildViewer;
  const out = [];
  for (let k = 0; k < steps; k++) {
    const t0 = performance.now();
    const shown = (pane) => new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), 5000);
      pane.element.addEventListener("CORNERSTONE_STACK_NEW_IMAGE", () => {
        clearTimeout(timer); resolve(true);
      }, { once: true });
    });
    const both = Promise.all([shown(v.query), shown(v.reference)]);
    document.dispatchEvent(new KeyboardEvent("keydown", { key, bubbles: true }));
    const [q, r] = await both;
    await new Promise((res) => requestAnimationFrame(() => res()));
    if (q && r) out.push(performance.now() - t0);
    if (pause) await new Promise((res) => setTimeout(res, pause));
  }
  return out;
}
"""

LOAD_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  return { dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
           ready: Number(document.getElementById("review-viewer").dataset.readyAt) };
}
"""


def browse(*, base: str, session: str, study: int, loads: int, steps: int, pause: int) -> dict:
    from playwright.sync_api import sync_playwright

    url = f"{base}/studies/{study}/review/"
    out: dict = {"loads": [], "steps_cold_ms": [], "steps_warm_ms": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_cookies([{"name": "sessionid", "value": session, "url": base}])
        page = context.new_page()
        for _ in range(loads):
            page.goto(url)
            page.wait_for_selector("#review-viewer[data-ready-at]", timeout=60_000)
            page.wait_for_load_state("load")
            out["loads"].append(page.evaluate(LOAD_JS))
        page.click(".result-card[data-rank='1'] a.select-result")
        page.wait_for_function("() => window.ildViewer.state().compared === 1")
        page.wait_for_timeout(500)
        step = {"key": "ArrowDown", "steps": steps, "pause": pause}
        out["steps_cold_ms"] = page.evaluate(STEP_JS, step)
        page.evaluate(STEP_JS, {**step, "key": "ArrowUp"})
        out["steps_warm_ms"] = page.evaluate(STEP_JS, step)
        out["bundle_bytes_sent"] = page.evaluate(
            "() => performance.getEntriesByType('resource')"
            ".filter(e => e.name.includes('/viewer/viewer'))"
            ".map(e => ({ name: e.name.split('/').pop(), transfer: e.transferSize,"
            " decoded: e.decodedBodySize }))"
        )
        browser.close()
    return out


def _median(values) -> float:
    return round(statistics.median(values), 1) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument(
        "--pause-ms", type=int, default=100, help="between steps (a reader scrolls ~10/s)"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.setup:
        print(json.dumps(setup_data(size=args.size)))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="viewer-bench-"))
    env = _env(tmp)
    py = sys.executable
    server = None
    try:
        for command in (["migrate"], ["collectstatic"]):
            subprocess.run(
                [py, "manage.py", *command, "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True
            )
        out = subprocess.run(
            [py, __file__, "--setup", "--size", str(args.size)],
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
            [py, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_up(base)
        raw = browse(
            base=base,
            session=data["session"],
            study=data["study"],
            loads=args.loads,
            steps=args.steps,
            pause=args.pause_ms,
        )
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    loads = raw["loads"]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "slice_px": args.size,
        "first_load_ms": {k: round(v, 1) for k, v in loads[0].items()},
        "warm_load_median_ms": {
            k: _median([x[k] for x in loads[1:]]) for k in ("dcl", "load", "ready")
        },
        "linked_step_cold_median_ms": _median(raw["steps_cold_ms"]),
        "linked_step_warm_median_ms": _median(raw["steps_warm_ms"]),
        "linked_step_warm_p90_ms": round(statistics.quantiles(raw["steps_warm_ms"], n=10)[8], 1)
        if len(raw["steps_warm_ms"]) >= 10
        else None,
        "steps_measured": [len(raw["steps_cold_ms"]), len(raw["steps_warm_ms"])],
        "bundle": raw["bundle_bytes_sent"],
    }
    print(
        f"review page, first load (empty cache): DOMContentLoaded "
        f"{summary['first_load_ms']['dcl']} ms, load {summary['first_load_ms']['load']} ms, "
        f"viewer showing the first slice {summary['first_load_ms']['ready']} ms"
    )
    warm = summary["warm_load_median_ms"]
    print(
        f"review page, warm cache (median of {len(loads) - 1}): DOMContentLoaded {warm['dcl']} "
        f"ms, load {warm['load']} ms, viewer showing the first slice {warm['ready']} ms"
    )
    print(
        "linked scroll step (key -> both viewports drawn), median: first pass "
        f"{summary['linked_step_cold_median_ms']} ms, second pass "
        f"{summary['linked_step_warm_median_ms']} ms (p90 {summary['linked_step_warm_p90_ms']} ms)"
    )
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "raw": raw}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
