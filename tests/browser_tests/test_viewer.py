"""The review page's viewer in Chromium (Cornerstone3D, static/viewer/viewer.js): linked
comparison of the query and a similar case, window/level by drag, typed W/L and presets, zoom,
HU probe, CAM legend and opacity, lung outline, the shortcut overlay, and a 390 px phone width
without horizontal overflow. The data are written as the workers write them
(tests/browser_tests/viewer_data.py); no worker runs. Screenshots go to
var/test-artifacts/viewer/.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client

from tests.browser_tests.viewer_data import viewer_case_create
from tests.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "test-artifacts" / "viewer"
# The live server needs committed rows; the seeded groups and diagnoses come back after each
# test's flush.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def viewer_case(live_server):
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
    page.on("pageerror", lambda e: problems.append(f"{e}\n{e.stack}"))
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


def config(page) -> dict:
    return page.evaluate("() => window.ildViewer.config")


def open_comparison(page, rank: int = 1) -> None:
    page.click(f".result-card[data-rank='{rank}'] a.select-result")
    page.wait_for_function(
        f"() => {{ const s = window.ildViewer.state(); return s.compared === {rank} "
        "&& s.reference !== null; }"
    )


def wait_index(page, pane: str, index: int) -> None:
    page.wait_for_function(
        f"() => {{ const s = window.ildViewer.state().{pane}; return s && s.index === {index}; }}",
        timeout=10_000,
    )


def linked_target(cfg: dict, rank: int, query_index: int) -> int:
    """Where linked scrolling must put the reference: the slice nearest the query's position
    within the lungs, shifted by the matched pair's offset."""
    hit = next(r for r in cfg["results"] if r["rank"] == rank)
    q, r = cfg["query"]["positions"], hit["series"]["positions"]
    qi = cfg["query"]["slices"].index(hit["querySlice"])
    ri = hit["series"]["slices"].index(hit["referenceSlice"])
    want = q[query_index] + (r[ri] - q[qi])
    return min(range(len(r)), key=lambda j: (abs(r[j] - want), j))


def test_selecting_a_result_opens_it_beside_the_query_at_the_matched_pair(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case)
    assert page.locator("[data-testid=pane-reference]").is_hidden()
    open_comparison(page, 1)
    ref = viewer_case["references"][0]
    s = state(page)
    assert s["query"]["index"] == viewer_case["query_match"]
    assert s["reference"]["index"] == ref["match"]
    assert page.url.endswith("/review/") or "sel=" in page.url  # no navigation away
    query_box = page.locator("[data-testid=query-element]").bounding_box()
    ref_box = page.locator("[data-testid=reference-element]").bounding_box()
    assert abs(query_box["y"] - ref_box["y"]) < 5 and ref_box["x"] > query_box["x"]  # beside
    assert page.locator("[data-testid=reference-viewport-cam]").is_visible()
    shot(page, "viewer-comparison.png")
    assert page.problems == []


def test_linked_scrolling_follows_the_position_within_the_lungs_and_unlink_stops_it(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case)
    open_comparison(page, 2)  # 52 reference slices against 40: not a 1:1 index mapping
    cfg = config(page)
    assert cfg["query"]["positionsFromLungs"]
    start = viewer_case["query_match"]
    page.locator("[data-testid=query-element]").hover()
    page.mouse.wheel(0, 120)  # one wheel step
    wait_index(page, "query", start + 1)
    wait_index(page, "reference", linked_target(cfg, 2, start + 1))
    page.locator("[data-testid=query-element]").click()
    for _ in range(4):
        page.keyboard.press("ArrowDown")
    wait_index(page, "query", start + 5)
    expected = linked_target(cfg, 2, start + 5)
    wait_index(page, "reference", expected)
    assert expected - viewer_case["references"][1]["match"] > 5  # more slices per lung there

    page.click("[data-testid=link-toggle]")
    assert state(page)["linked"] is False
    page.locator("[data-testid=query-element]").click()
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    wait_index(page, "query", start + 3)
    page.wait_for_timeout(300)
    assert state(page)["reference"]["index"] == expected  # unlinked: the reference stayed
    assert page.problems == []


def drag(page, testid: str, *, dx: float, dy: float, button: str = "left") -> None:
    box = page.locator(f"[data-testid={testid}]").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button=button)
    for k in range(1, 11):
        page.mouse.move(x + dx * k / 10, y + dy * k / 10)
    page.mouse.up(button=button)


def test_window_level_drag_changes_the_displayed_window_and_typed_values_and_presets_set_it(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case)
    readout = page.locator("[data-testid=query-wl]")
    assert readout.inner_text() == "W 1500 L -600"
    page.click("[data-mode=wl]")
    drag(page, "query-element", dx=80, dy=60)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=query-wl]').textContent !== 'W 1500 L -600'"
    )
    width, level = state(page)["query"]["window"]
    assert (width, level) != (1500, -600)
    assert readout.inner_text() == f"W {width} L {level}"
    assert page.input_value("[data-testid=query-ww]") == str(width)
    # The chosen window stays on the next slice (and a new drag starts from it).
    page.keyboard.press("ArrowDown")
    wait_index(page, "query", viewer_case["query_match"] + 1)
    assert state(page)["query"]["window"] == [width, level]
    assert readout.inner_text() == f"W {width} L {level}"

    page.fill("[data-testid=query-ww]", "400")
    page.fill("[data-testid=query-wc]", "40")
    page.press("[data-testid=query-wc]", "Enter")
    assert state(page)["query"]["window"] == [400, 40]
    assert readout.inner_text() == "W 400 L 40"
    page.click("[data-testid=pane-query] [data-preset=bone]")
    assert state(page)["query"]["window"] == [1800, 400]
    page.locator("[data-testid=query-element]").click()
    page.keyboard.press("1")
    assert state(page)["query"]["window"] == [1500, -600]
    shot(page, "viewer-window.png")
    assert page.problems == []


def test_zoom_changes_the_scale_and_reset_restores_it(browser, live_server, viewer_case):
    page = open_review(browser, live_server, viewer_case)
    zoom = page.locator("[data-testid=query-zoom]")
    assert zoom.inner_text() == "1.00×"
    page.click("[data-mode=zoom]")
    drag(page, "query-element", dx=0, dy=-120)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=query-zoom]').textContent !== '1.00×'"
    )
    scale = state(page)["query"]["zoom"]
    assert abs(scale - 1.0) > 0.05
    # The CAM overlay follows the image: it is scaled with it.
    cam_box = page.locator("#viewer-cam").bounding_box()
    stage = page.locator("[data-testid=query-element]").bounding_box()
    assert cam_box["width"] == pytest.approx(stage["width"] * scale, rel=0.05)
    drag(page, "query-element", dx=0, dy=80, button="right")
    page.click("#viewer-reset")
    page.wait_for_function(
        "() => document.querySelector('[data-testid=query-zoom]').textContent === '1.00×'"
    )
    assert page.problems == []


def test_cam_legend_opacity_toggle_and_lung_outline(browser, live_server, viewer_case):
    page = open_review(browser, live_server, viewer_case)
    legend = page.locator("[data-testid=cam-legend]")
    assert legend.is_visible()
    assert "contribution to the match" in legend.inner_text()
    cam = page.locator("#viewer-cam")
    page.wait_for_function(
        "() => { const i = document.getElementById('viewer-cam');"
        " return !i.hidden && i.complete && i.naturalWidth > 0; }"
    )
    page.locator("[data-testid=cam-opacity]").fill("20")
    assert cam.evaluate("e => getComputedStyle(e).opacity") == "0.2"
    page.locator("[data-testid=cam-opacity]").fill("90")
    assert cam.evaluate("e => getComputedStyle(e).opacity") == "0.9"
    page.uncheck("#cam-toggle")
    assert cam.is_hidden()
    page.check("#cam-toggle")
    assert cam.is_visible()
    # The CAM belongs to the matched slice: one slice further it is not drawn.
    page.locator("[data-testid=query-element]").click()
    page.keyboard.press("ArrowDown")
    wait_index(page, "query", viewer_case["query_match"] + 1)
    assert cam.is_hidden()
    assert (
        "CAM on slice" in page.locator("[data-testid=pane-query] [data-role=cam-hint]").inner_text()
    )
    page.keyboard.press("g")
    wait_index(page, "query", viewer_case["query_match"])
    assert cam.is_visible()

    outline = page.locator("[data-testid=pane-query] [data-role=outline]")
    assert outline.is_hidden()
    page.check("[data-testid=outline-toggle]")
    assert outline.is_visible()
    drawn = (
        "e => e.getContext('2d').getImageData(0, 0, e.width, e.height).data"
        ".filter((v, i) => i % 4 === 3 && v > 0).length"
    )
    assert outline.evaluate(drawn) > 50
    page.locator("[data-testid=query-element]").click()
    page.keyboard.press("Home")  # slice 1: body, no lungs
    wait_index(page, "query", 0)
    assert outline.evaluate(drawn) == 0
    shot(page, "viewer-outline.png")
    assert page.problems == []


def test_hu_probe_reads_the_lung_and_the_help_overlay_lists_the_shortcuts(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case)
    box = page.locator("[data-testid=query-element]").bounding_box()
    # The synthetic lungs are ellipses centred at 30 % and 70 % of the width (about -850 HU);
    # the body between them is soft tissue (about 40 HU).
    page.mouse.move(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
    text = page.locator("[data-testid=query-probe]").inner_text()
    hu = int(re.match(r"HU (-?\d+)", text).group(1))
    assert -950 < hu < -750, text
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    text = page.locator("[data-testid=query-probe]").inner_text()
    assert -60 < int(re.match(r"HU (-?\d+)", text).group(1)) < 140, text

    help_ = page.locator("[data-testid=viewer-help]")
    assert help_.is_hidden()
    page.locator("[data-testid=query-element]").click()
    page.keyboard.press("?")
    assert help_.is_visible()
    for words in ("Page Up", "Left drag", "lung, mediastinum, bone", "unlink"):
        assert words in help_.inner_text()
    shot(page, "viewer-help.png")
    page.keyboard.press("Escape")
    assert help_.is_hidden()
    assert page.problems == []


def test_phone_width_stacks_the_viewports_without_horizontal_overflow(
    browser, live_server, viewer_case
):
    page = open_review(browser, live_server, viewer_case, width=390, height=844)
    open_comparison(page, 1)
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 390 px"
    query_box = page.locator("[data-testid=query-element]").bounding_box()
    ref_box = page.locator("[data-testid=reference-element]").bounding_box()
    assert query_box["width"] <= 390 and ref_box["width"] <= 390
    assert ref_box["y"] >= query_box["y"] + query_box["height"]  # stacked
    wide = page.evaluate(
        "() => [...document.querySelectorAll('#review-viewer *')]"
        ".filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)"
        ".map(e => e.tagName + '.' + e.className).slice(0, 5)"
    )
    assert wide == []
    shot(page, "viewer-phone-390.png")
    assert page.problems == []


def test_on_a_touch_screen_a_swipe_scrolls_the_stack(browser, live_server, viewer_case):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True
    )
    context.add_cookies(
        [{"name": "sessionid", "value": viewer_case["session"], "url": live_server.url}]
    )
    page = context.new_page()
    page.goto(f"{live_server.url}/studies/{viewer_case['study']}/review/")
    page.wait_for_selector("#review-viewer[data-ready='1']")
    # A coarse pointer starts in Scroll mode: one finger scrolls, it does not change the window.
    assert page.get_attribute("[data-mode=scroll]", "aria-pressed") == "true"
    before = state(page)["query"]["window"]
    page.locator("[data-testid=query-element]").scroll_into_view_if_needed()
    box = page.locator("[data-testid=query-element]").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3
    cdp = context.new_cdp_session(page)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    for k in range(1, 13):
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchMove", "touchPoints": [{"x": x, "y": y + 15 * k}]},
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    page.wait_for_function(
        f"() => window.ildViewer.state().query.index !== {viewer_case['query_match']}"
    )
    assert state(page)["query"]["window"] == before, before
    context.close()


def test_a_cam_still_being_computed_shows_computing_then_appears_without_a_broken_image(
    browser, live_server, viewer_case, settings, tmp_path
):
    """The CAM URL answers 202 while a worker computes the overlay (jobs go to a broker no
    worker reads here); the viewport says "CAM computing…", polls, and shows the overlay once
    the worker's file exists."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from ildreview.broker import filesystem_transport_options
    from retrieval.models import SimilarCase
    from retrieval.selectors.review import review_cam_name
    from tests.browser_tests.conftest import _celery_point_at, _celery_restore
    from tests.browser_tests.viewer_data import cam_png

    case = SimilarCase.objects.select_related("result").get(
        result__study_id=viewer_case["study"], rank=1
    )
    for field in ("query_cam", "reference_cam"):
        default_storage.delete(getattr(case, field).name)
    SimilarCase.objects.filter(pk=case.pk).update(query_cam="", reference_cam="")
    settings.CELERY_TASK_ALWAYS_EAGER = False
    settings.ILDREVIEW_RESULTS_TOP_K = 2  # the stored answer (no live query for the worker)
    previous = _celery_point_at(
        broker_url="filesystem://",
        transport_options=filesystem_transport_options(folder=tmp_path / "broker"),
    )
    try:
        page = open_review(browser, live_server, viewer_case)
        status = page.locator("[data-testid=query-cam-status]")
        page.wait_for_function(
            "() => !document.querySelector('[data-testid=query-cam-status]').hidden"
        )
        assert status.inner_text() == "CAM computing…"
        assert page.locator("#viewer-cam").is_hidden()
        shot(page, "viewer-cam-computing.png")
        for side in ("query", "reference"):
            default_storage.save(
                review_cam_name(
                    study_id=viewer_case["study"],
                    model_version_id=case.result.model_version_id,
                    query_slice_id=case.query_slice_id,
                    reference_slice_id=case.reference_slice_id,
                    side=side,
                ),
                ContentFile(cam_png(128, cx=0.3, cy=0.5)),
            )
        page.wait_for_function(
            "() => { const i = document.getElementById('viewer-cam');"
            " const s = document.querySelector('[data-testid=query-cam-status]');"
            " return !i.hidden && i.complete && i.naturalWidth === 128 && s.hidden; }",
            timeout=15_000,
        )
        assert page.problems == []
    finally:
        _celery_restore(previous)


def test_an_8_bit_reference_image_is_shown_as_stored_beside_a_hu_query(browser, live_server):
    """2-D references imported from PNG/JPEG carry grey levels, not HU: the comparison shows
    them with the grey window, no HU presets, and the probe says "grey"."""
    clinician = UserFactory(username="wclin", role="Clinician")
    expert = UserFactory(username="wexp", role="Expert")
    data = viewer_case_create(clinician=clinician, expert=expert, windowed_ranks=(1,))
    client = Client()
    client.force_login(clinician)
    data["session"] = client.cookies["sessionid"].value
    page = open_review(browser, live_server, data)
    open_comparison(page, 1)
    s = state(page)
    assert s["reference"]["window"] == [256, 128]
    assert s["query"]["window"] == [1500, -600]
    assert page.locator("[data-testid=pane-reference] [data-preset=lung]").is_hidden()
    assert page.locator("[data-testid=pane-query] [data-preset=lung]").is_visible()
    box = page.locator("[data-testid=reference-element]").bounding_box()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    assert page.locator("[data-testid=reference-probe]").inner_text().startswith("grey ")
    shot(page, "viewer-8bit-reference.png")
    assert page.problems == []
