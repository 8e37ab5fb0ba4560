"""The review page around the viewer, and the pages next to it, in Chromium: one-click
confirm of the suggestion, the abstain state, the queue position while a study waits, approval
with evidence, and every page at 390 px without sideways scrolling. The data are written as
the workers write them (tests/browser_tests/viewer_data.py); no worker runs. Screenshots go to
var/test-artifacts/review/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client

from cases.models import ExpertLabel, ReferenceCase, Study
from retrieval.models import StudyJob, StudyResult
from tests.browser_tests.viewer_data import viewer_case_create
from tests.factories import ReferenceCaseFactory, StudyFactory, UserFactory

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "test-artifacts" / "review"
PHONE = {"width": 390, "height": 844}
# The live server needs committed rows; the seeded groups and diagnoses come back after each
# test's flush.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


@pytest.fixture
def case(live_server):
    clinician = UserFactory(username="rclin", role="Clinician")
    expert = UserFactory(username="rexp", role="Expert")
    second = UserFactory(username="rexp2", role="Expert")
    data = viewer_case_create(clinician=clinician, expert=expert, query_slices=24)
    data.update(clinician=clinician, expert=expert, second=second, url=live_server.url)
    return data


def session_page(browser, case, user, *, viewport=None):
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
    context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": case["url"]}]
    )
    return context.new_page()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / name), full_page=True)


def no_sideways_scroll(page) -> tuple[int, int]:
    return page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )


def test_confirm_suggestion_is_one_click(browser, case):
    page = session_page(browser, case, case["expert"])
    page.goto(f"{case['url']}/studies/{case['study']}/review/")
    suggested = StudyResult.objects.get(study_id=case["study"]).suggested_diagnosis
    button = page.locator("[data-testid=confirm-suggestion]")
    assert button.inner_text() == f"Confirm suggestion: {suggested.name}"
    # The correction list starts blank: its submit alone records nothing.
    assert page.locator("[data-testid=diagnosis-select]").input_value() == ""
    page.click("form.label-form button[type=submit]")
    assert not ExpertLabel.objects.filter(study_id=case["study"]).exists()
    shot(page, "review-decision.png")
    with page.expect_navigation():
        button.click()
    assert page.locator("[data-testid=current-label]").inner_text() == suggested.name
    assert ExpertLabel.objects.get(study_id=case["study"]).diagnosis == suggested
    page.context.close()


def test_abstained_study_shows_no_close_match(browser, case):
    StudyResult.objects.filter(study_id=case["study"]).update(
        abstained=True,
        abstain_reason="best similarity 0.38 is below 0.50",
        suggested_diagnosis=None,
        top_similarity=0.38,
    )
    page = session_page(browser, case, case["expert"])
    page.goto(f"{case['url']}/studies/{case['study']}/review/")
    assert page.locator("[data-testid=suggested]").inner_text() == "No close match"
    assert "below 0.50" in page.locator("[data-testid=abstain-reason]").inner_text()
    assert page.locator("[data-testid=confirm-suggestion]").count() == 0
    assert page.locator("[data-testid=diagnosis-select]").get_attribute("required") is not None
    shot(page, "review-abstained.png")
    page.context.close()


def test_queued_study_shows_its_position_and_a_moving_bar(browser, case):
    clinician = case["clinician"]
    ahead = StudyFactory(uploaded_by=clinician, status=Study.Status.PROCESSING)
    waiting = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="embed",
        progress_percent=74,
    )
    for s in (ahead, waiting):
        StudyJob.objects.create(study=s, run_id=f"r{s.pk}", state=StudyJob.State.WAITING)
    page = session_page(browser, case, clinician)
    page.goto(f"{case['url']}/studies/{waiting.pk}/review/")
    text = page.locator("[data-testid=progress-text]")
    assert text.inner_text().startswith("Waiting in queue (position 2 of 2")
    assert "waiting" in page.locator(".progress-large").get_attribute("class")
    assert page.locator(".progress-large").get_attribute("aria-valuenow") is None
    # The first study is taken by a worker: the waiting one moves up, as the page polls.
    StudyJob.objects.filter(study=ahead).update(state=StudyJob.State.RUNNING)
    Study.objects.filter(pk=ahead.pk).update(status=Study.Status.READY_FOR_REVIEW)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=progress-text]').textContent"
        ".startsWith('Waiting in queue (position 1 of 1')",
        timeout=10_000,
    )
    shot(page, "review-queued.png")
    page.context.close()


def test_approval_shows_evidence_and_asks_before_approving_unopened(browser, case):
    reference = ReferenceCaseFactory(study_id=case["study"], proposed_by=case["expert"])
    page = session_page(browser, case, case["second"])
    page.goto(f"{case['url']}/approvals/")
    card = page.locator(f"#reference-{reference.pk}")
    thumb = card.locator("[data-testid=approval-thumbnail]")
    thumb.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumb.element_handle()
    )
    suggested = StudyResult.objects.get(study_id=case["study"]).suggested_diagnosis
    assert card.locator("[data-testid=proposed-label]").inner_text() == reference.diagnosis.name
    assert suggested.name in card.locator("[data-testid=approval-suggestion]").inner_text()
    assert card.locator("[data-testid=not-opened]").count() == 1
    shot(page, "approvals-evidence.png")
    # Approve without having opened the review: the browser asks for the tick first.
    card.locator("button[name=approve]").click()
    page.wait_for_timeout(300)
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    # Opening the review from the card records it; back in the queue, one click approves.
    with page.expect_navigation():
        card.locator("[data-testid=open-review]").click()
    assert f"/studies/{case['study']}/review/" in page.url
    page.goto(f"{case['url']}/approvals/")
    assert card.locator("[data-testid=opened]").count() == 1
    with page.expect_navigation():
        card.locator("button[name=approve]").click()
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.APPROVED
    page.context.close()


@pytest.mark.parametrize(
    ("name", "path", "who"),
    [
        ("worklist", "/", "clinician"),
        ("study", "/studies/{study}/", "expert"),
        ("approvals", "/approvals/", "second"),
        ("library", "/library/", "clinician"),
        ("upload", "/upload/", "clinician"),
    ],
)
def test_pages_fit_a_390_px_phone_without_sideways_scrolling(browser, case, name, path, who):
    ReferenceCaseFactory(study_id=case["study"], proposed_by=case["expert"])
    StudyFactory(
        uploaded_by=case["clinician"],
        status=Study.Status.PROCESSING,
        description="CT chest HRCT with a rather long description for a phone",
        progress_stage="embed",
        progress_percent=30,
    )
    page = session_page(browser, case, case[who], viewport=PHONE)
    page.goto(case["url"] + path.format(study=case["study"]))
    page.wait_for_load_state("load")
    scroll, client = no_sideways_scroll(page)
    shot(page, f"phone-{name}.png")
    assert scroll <= client, f"{name}: content {scroll} px wide in a {client} px screen"
    # The top bar's links are all on screen.
    for box in page.eval_on_selector_all(
        ".topbar a, .topbar button", "els => els.map(e => e.getBoundingClientRect().right)"
    ):
        assert box <= client + 0.5
    page.context.close()


def test_opening_similar_cases_is_counted_for_the_reading_time(browser, case):
    from cases.models import ReadingSession

    page = session_page(browser, case, case["expert"])
    page.goto(f"{case['url']}/studies/{case['study']}/review/")
    cards = page.locator("[data-testid=result] a.select-result")
    assert cards.count() >= 2
    cards.nth(1).click()
    cards.nth(0).click()
    cards.nth(1).click()

    def counted():
        session = ReadingSession.objects.filter(study_id=case["study"]).first()
        return session is not None and session.results_opened == 2

    deadline = 50  # the posts are asynchronous: up to 5 s
    while not counted() and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    session = ReadingSession.objects.get(study_id=case["study"], expert=case["expert"])
    assert (session.results_opened, sorted(session.opened_ranks)) == (2, [1, 2])
    with page.expect_navigation():
        page.click("[data-testid=confirm-suggestion]")
    session.refresh_from_db()
    assert session.decided_at is not None and session.reading_seconds > 0
    page.context.close()
