"""The review page's viewer in Chromium (Cornerstone3D, static/viewer/viewer.js): linked
comparison of the query and a similar case, window/level by drag, typed W/L and presets, zoom,
HU probe, CAM legend and opacity, lung outline, the shortcut overlay, and a 390 px phone width
without horizontal overflow. The data are written as the workers write them
(tests/browser_tests/viewer_data.py); no worker runs. Screenshots go to
var/test-artifacts/viewer/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from tests.browser_tests.viewer_data import viewer_case_create
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "test-artifacts" / "viewer"


@pytest.fixture
def viewer_case(transactional_db):
    clinician = UserFactory(username="vclin", role="Clinician")
    expert = UserFactory(username="vexp", role="Expert")
    data = viewer_case_create(clinician=clinician, expert=expert)
    client = Client()
    client.force_login(clinician)
    data["session"] = client.cookies["sessionid"].value
    return data


def open_review(browser, live_server, viewer_case, *, width=1400, height=1000):
    context = browser.new_context(viewport={"width": width, "height": height})
    context.add_cookies(
        [{"name": "sessionid", "value": viewer_case["session"], "url": live_server.url}]
    )
    page = context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and "favicon" not in (m.location or {}).get("url", "")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live_server.url}/studies/{viewer_case['study']}/review/")
    page.wait_for_selector("#review-viewer[data-ready='1'], #review-viewer[data-error]")
    error = page.get_attribute("#review-viewer", "data-error")
    assert error is None, f"viewer failed: {error}; console: {problems}"
    page.problems = problems
    return page


def state(page) -> dict:
    return page.evaluate("() => window.ildViewer.state()")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def test_viewer_starts_at_the_selected_match_with_the_lung_window(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case)
    s = state(page)
    assert s["query"]["index"] == viewer_case["query_match"]
    assert s["query"]["window"] == [1500, -600]
    assert s["reference"] is None
    shot(page, "viewer-start.png")
    assert page.problems == []
