"""The whole review workflow in a real browser, against the live server and a real worker.

A clinician logs in and uploads a real chest CT series (Lung-PET-CT-Dx A0001; a generated
DICOM series when the dataset is absent), watches the progress bar finish and sees similar
cases with CAM overlays; an expert corrects the diagnosis and proposes the study as a
reference case; a second expert approves it; a new upload of the other patient (A0002) then
lists the approved case among its similar cases. Screenshots of the review page go to
`test-artefacts/`.

Speed (2 CPU cores): the demo library is small (2 patients x 4 classes, 4 slices of 128 px) and
the model is the pretrained EfficientNet-Lite0 backbone with a head trained for 1 epoch at an
input size of 192 px (`ILDREVIEW_BOOTSTRAP_SIZE`), so the 64 real 512-px slices are processed
at 192 px: lung masks, radiomics, embeddings and CAMs all work on 192 x 192 images (at 160 px
and below the engine's lung mask loses the demo phantoms' lungs). The worker and this process
run torch with one thread (see conftest).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from cases.models import ReferenceCase, Study
from retrieval.models import ReferenceEmbedding
from tests.browser_tests.conftest import ARTEFACTS, wait_until
from tests.conftest import LUNG_PET_CT_DX

# serialized_rollback like the other browser modules: on PostgreSQL a plain transactional flush
# recreates content types under new ids, and the next module's serialized restore then collides
# with them; an inhibited flush before this module would leave it without the migrated rows.
pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

PASSWORD = "browser-test-pw-1"
CORRECTED = "DM/RP-ILD (anti-MDA5)"
PROCESSING_TIMEOUT_S = 240
TIMINGS: dict[str, float] = {}


def study_files(tmp: Path, patient: str, series: str) -> tuple[list[Path], str]:
    """DICOM files of one real series, or of a generated one when the dataset is absent (the
    `real_data_or_skip` check, falling back instead of skipping). Returns (files, source)."""
    folder = LUNG_PET_CT_DX / patient / series
    if folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file())
        if files:
            return files, f"lung-pet-ct-dx {patient}/{series}"
    from tests.dicomgen import ct_series_write

    generated = ct_series_write(
        folder=tmp / f"generated-{patient}",
        slices=16,
        size=128,
        seed=1 if patient == "A0001" else 2,
        patient_id=f"GEN-{patient}",
        patient_name=f"Generated^{patient}",
    )
    return generated.paths, f"generated DICOM series for {patient} (dataset absent)"


def library_and_model(tmp: Path) -> None:
    """Demo accounts, the demo reference library (small) and a bootstrap model on it."""
    from cases.demo_data import MANIFEST_NAME, demo_dataset_write
    from cases.management.commands.setup_demo import demo_accounts_ensure

    demo_accounts_ensure(password=PASSWORD)
    outdir = tmp / "demo"
    demo_dataset_write(outdir=outdir, patients_per_class=2, slices=4, size=128, seed=0)
    call_command("import_reference", str(outdir / MANIFEST_NAME), admin="admin", verbosity=0)
    call_command("bootstrap_model", verbosity=0)


def login(page, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("section.login button[type=submit]")
    page.wait_for_selector(f"header .who:text-is('{username}')")


def logout(page) -> None:
    page.click("header form.logout button")
    page.wait_for_selector("#id_username")


def upload(page, base: str, files: list[Path]) -> int:
    page.goto(f"{base}/upload/")
    page.set_input_files("#id_files", [str(f) for f in files])
    with page.expect_navigation(timeout=120_000):
        page.click("#upload-submit")
    match = re.search(r"/studies/(\d+)/", page.url)
    assert match, f"upload did not lead to a study page: {page.url}\n{page.content()[:2000]}"
    return int(match.group(1))


def wait_for_results(page, stack, study_pk: int) -> float:
    """From the study page to the review page; wait (the page polls and reloads itself) until
    the similar cases are shown. Returns the seconds waited."""
    started = time.perf_counter()
    page.click("[data-testid=open-review]")
    page.wait_for_url(re.compile(rf"/studies/{study_pk}/review/"))
    deadline = time.monotonic() + PROCESSING_TIMEOUT_S
    while time.monotonic() < deadline:
        if page.locator("[data-testid=result]").count():
            break
        failure = page.locator("[data-testid=failure]")
        if failure.count():
            pytest.fail(f"processing failed: {failure.inner_text()}\n{stack.worker.log_tail()}")
        if not stack.worker.alive():
            pytest.fail(f"the worker died:\n{stack.worker.log_tail()}")
        page.wait_for_timeout(1000)
    else:
        status = Study.objects.get(pk=study_pk)
        pytest.fail(
            f"no results after {PROCESSING_TIMEOUT_S} s (study {status.status} "
            f"{status.progress_stage} {status.progress_percent}%)\n{stack.worker.log_tail()}"
        )
    return time.perf_counter() - started


def assert_cam_images_load(page) -> int:
    """Every result's CAM overlay and the query's CAM overlay are loaded images. CAMs follow
    the results (worker jobs): a "computing" placeholder (data-cam-pending) is not enough."""
    page.wait_for_function(
        """() => {
          const imgs = [...document.querySelectorAll('img[data-testid=reference-cam]')];
          const q = document.getElementById('viewer-cam');
          return imgs.length > 0
            && imgs.every(i => !i.hasAttribute('data-cam-pending') && i.complete
                               && i.naturalWidth > 8)
            && q && !q.hidden && q.complete && q.naturalWidth > 0;
        }""",
        timeout=60_000,
    )
    return page.locator("img[data-testid=reference-cam]").count()


def screenshot(page, name: str) -> Path:
    ARTEFACTS.mkdir(exist_ok=True)
    path = ARTEFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_clinician_upload_expert_review_approval_and_retrieval_of_the_approved_case(
    stack, browser, settings
):
    t0 = time.perf_counter()
    settings.ILDREVIEW_BOOTSTRAP_WEIGHTS = "imagenet"
    settings.ILDREVIEW_BOOTSTRAP_SIZE = 192
    settings.ILDREVIEW_BOOTSTRAP_EPOCHS = 1
    library_and_model(stack.tmp)
    TIMINGS["library_and_model_s"] = time.perf_counter() - t0
    first_files, first_source = study_files(stack.tmp, "A0001", "series-2-5mm")
    second_files, second_source = study_files(stack.tmp, "A0002", "series-2-B70f")

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    base = stack.url
    # The Content-Security-Policy forbids inline code; a violation is a part of a page that broke.
    csp_violations: list[str] = []
    page.on(
        "console",
        lambda m: csp_violations.append(m.text) if "Content Security Policy" in m.text else None,
    )

    # 1. A clinician uploads the first study and watches it being processed.
    login(page, base, "clinician")
    t_upload = time.perf_counter()
    first = upload(page, base, first_files)
    TIMINGS["upload_first_s"] = time.perf_counter() - t_upload
    TIMINGS["results_first_s"] = wait_for_results(page, stack, first)
    TIMINGS["upload_to_results_first_s"] = time.perf_counter() - t_upload
    n_cams = assert_cam_images_load(page)
    assert n_cams == 8, f"expected the default k=8 similar cases, got {n_cams}"
    assert page.locator("[data-testid=suggested]").inner_text().strip() not in ("", "—")
    assert page.locator("[data-testid=radiomics-table]:visible").count() == 1
    assert page.locator("[data-testid=vote]").count() >= 1
    # Vote bars get their width from data-width through static/page.js (no inline style).
    widths = page.eval_on_selector_all("[data-width]", "els => els.map(e => e.style.width)")
    assert widths and all(w.endswith("%") for w in widths), widths
    screenshot(page, "review-clinician-A0001.png")
    logout(page)

    # 2. An expert corrects the diagnosis and proposes the study as a reference case.
    login(page, base, "expert1")
    page.goto(f"{base}/studies/{first}/review/")
    page.select_option("form.label-form select[name=diagnosis]", label=CORRECTED)
    page.fill("form.label-form textarea[name=comment]", "Anti-MDA5 positive; corrected.")
    with page.expect_navigation():
        page.click("form.label-form button[type=submit]")
    assert page.locator("[data-testid=current-label]").inner_text() == CORRECTED
    with page.expect_navigation():
        page.click("form.propose-form button[type=submit]")
    assert "Proposed" in page.locator("[data-testid=reference-state]").inner_text()
    logout(page)

    # 3. A second expert looks at the evidence (the review, opened from the queue's card) and
    # approves it; the worker embeds it into the index.
    login(page, base, "expert2")
    page.goto(f"{base}/approvals/")
    reference = ReferenceCase.objects.get(study_id=first, state=ReferenceCase.State.PROPOSED)
    with page.expect_navigation():
        page.click(f"#reference-{reference.pk} [data-testid=open-review]")
    page.goto(f"{base}/approvals/")
    with page.expect_navigation():
        page.click(f"#reference-{reference.pk} button[name=approve]")
    assert page.locator(f"#approved-{reference.pk}").count() == 1
    t_embed = time.perf_counter()
    wait_until(
        lambda: ReferenceEmbedding.objects.filter(reference_case=reference).exists(),
        timeout=PROCESSING_TIMEOUT_S,
        what="the approved case to be embedded into the index",
        worker=stack.worker,
    )
    TIMINGS["approval_to_indexed_s"] = time.perf_counter() - t_embed
    logout(page)

    # 4. The clinician uploads the other patient: the approved case is among its results.
    login(page, base, "clinician")
    t_upload = time.perf_counter()
    second = upload(page, base, second_files)
    wait_for_results(page, stack, second)
    TIMINGS["upload_to_results_second_s"] = time.perf_counter() - t_upload
    assert_cam_images_load(page)
    approved = page.locator(f"[data-testid=open-case][data-reference-case='{reference.pk}']")
    assert approved.count() == 1, "the approved case is not among the similar cases"
    card = page.locator("[data-testid=result]", has=approved)
    assert card.locator("[data-testid=result-diagnosis]").inner_text() == CORRECTED
    screenshot(page, "review-clinician-A0002.png")

    # The diagnosis filter returns the approved case alone (the only case of its diagnosis).
    page.select_option("#filter-diagnosis", label=CORRECTED)
    page.wait_for_url(re.compile(r"diagnosis=dm-rp-ild"))
    # A worker answers the filtered query; the page shows "computing" and reloads when ready.
    page.wait_for_selector("[data-testid=result]", timeout=60_000)
    assert page.locator("[data-testid=result]").count() == 1
    assert page.locator(f"[data-reference-case='{reference.pk}']").count() == 1
    assert_cam_images_load(page)  # a worker job when the pair was not stored
    screenshot(page, "review-clinician-A0002-filtered.png")
    assert csp_violations == []
    context.close()
    TIMINGS["total_s"] = time.perf_counter() - t0
    summary = ", ".join(f"{k}={v:.1f}" for k, v in TIMINGS.items())
    (ARTEFACTS / "browser-timings.txt").write_text(f"{first_source}; {second_source}\n{summary}\n")
    print(f"\nbrowser flow timings: {summary}")
