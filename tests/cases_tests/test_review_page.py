"""The review page: stored and live similar cases, diagnosis filter, votes, radiomics table,
CAM images, the progress endpoint, Retry, and the same visibility rules as the study page.

The results are built directly (factories + hand-made embeddings), so the page is tested
without running the network: the query slices' embeddings are stored in `SliceFeatures`, the
library's in `ReferenceEmbedding`, and the live index (`exact` backend) is synchronised from
them exactly as in production.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image

from cases.models import AuditEvent, ReferenceCase, Study
from retrieval.engine.case_similarity import case_score, per_slice_best
from retrieval.models import (
    ModelVersion,
    ReferenceEmbedding,
    SimilarCase,
    SliceFeatures,
    StudyJob,
    StudyResult,
)
from retrieval.pipeline import index_store
from tests.factories import (
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db

DIM = 8
STORED_K = 4
N_NORMAL, N_IPF = 5, 3


def unit(*values: float) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def index_env(settings, tmp_path):
    """Exact index, snapshots under a per-test VAR_DIR, no in-memory index left over."""
    settings.VAR_DIR = tmp_path / "var"
    settings.ILDREVIEW_INDEX_BACKEND = "exact"
    settings.ILDREVIEW_MIN_LUNG_FRACTION = 0.05
    settings.ILDREVIEW_RESULTS_TOP_K = STORED_K
    index_store.index_forget()
    yield
    index_store.index_forget()


@pytest.fixture
def version(index_env):
    return ModelVersion.objects.create(
        name="v-review", artefact_dir="unused", backbone="test", is_active=True
    )


def _reference(*, version, name: str, vector: np.ndarray, n: int) -> ReferenceCase:
    """An approved reference case with one embedded slice and its radiomics."""
    rc = ReferenceCaseFactory(
        diagnosis=diagnosis(name),
        state=ReferenceCase.State.APPROVED,
        study=StudyFactory(source=Study.Source.REFERENCE_IMPORT),
    )
    slice_ = SliceFactory(series=SeriesFactory(study=rc.study), index=0)
    ReferenceEmbedding.objects.create(
        model_version=version,
        reference_case=rc,
        slice=slice_,
        vector=vector.tobytes(),
        lung_fraction=0.4,
    )
    SliceFeatures.objects.create(
        slice=slice_,
        model_version=version,
        lung_fraction=0.4,
        usable=True,
        radiomics_main={"original_firstorder_Mean": 100.0 + n, "original_glcm_Contrast": 2.0},
    )
    return rc


@pytest.fixture
def library(version):
    """5 Normal cases near the query (scores decreasing with n), 3 IPF-ILD cases further."""
    normal = [
        _reference(version=version, name="Normal", vector=unit(1.0, 0.1 * (n + 1)), n=n)
        for n in range(N_NORMAL)
    ]
    ipf = [
        _reference(version=version, name="IPF-ILD", vector=unit(0.3, 1.0, 0.1 * n), n=10 + n)
        for n in range(N_IPF)
    ]
    return normal, ipf


@pytest.fixture
def query_study(clinician, version, library):
    """A processed study of alice: three slices (the middle one matches best), embeddings,
    radiomics, and a stored result of the top STORED_K cases with CAM files."""
    normal, _ipf = library
    study = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    series = SeriesFactory(study=study)
    slices = [SliceFactory(series=series, index=i) for i in range(3)]
    vectors = [unit(1.0, 0.3), unit(1.0, 0.0), unit(0.0, 0.0, 1.0)]
    for i, (s, v) in enumerate(zip(slices, vectors, strict=True)):
        SliceFeatures.objects.create(
            slice=s,
            model_version=version,
            lung_fraction=0.5,
            usable=True,
            embedding=v.tobytes(),
            radiomics_main={
                "original_firstorder_Mean": -700.0 - i,
                "original_glcm_Contrast": 5.5,
                "original_ngtdm_Coarseness": 0.25,
            },
        )
    result = StudyResult.objects.create(
        study=study,
        model_version=version,
        suggested_diagnosis=diagnosis("Normal"),
        votes={"normal": 1.0},
        key_slice=slices[1],
        query_slice_count=3,
    )
    for rank, rc in enumerate(normal[:STORED_K], start=1):
        ref_slice = rc.study.series.get().slices.get()
        case = SimilarCase.objects.create(
            result=result,
            rank=rank,
            reference_case=rc,
            score=0.99 - 0.01 * rank,
            n_hits=2,
            query_slice=slices[1],
            reference_slice=ref_slice,
        )
        q = default_storage.save(
            f"results/{study.pk}/{version.pk}/rank{rank:02d}-query.png",
            ContentFile(png((255, 0, 0))),
        )
        r = default_storage.save(
            f"results/{study.pk}/{version.pk}/rank{rank:02d}-reference.png",
            ContentFile(png((0, 0, 255))),
        )
        SimilarCase.objects.filter(pk=case.pk).update(query_cam=q, reference_cam=r)
    study.slices = slices
    return study


def review(client, study, **params):
    return client.get(reverse("cases:study_review", args=[study.pk]), params)


def test_review_page_lists_the_stored_similar_cases_with_diagnosis_score_and_cam_urls(
    client, clinician, query_study, library
):
    client.force_login(clinician)
    response = review(client, query_study)
    assert response.status_code == 200
    hits = response.context["hits"]
    normal, _ = library
    assert [h.reference_case.pk for h in hits] == [rc.pk for rc in normal[:STORED_K]]
    assert not response.context["results"].live
    html = response.content.decode()
    assert html.count('data-testid="result"') == STORED_K
    assert html.count('class="cam-overlay ref-cam"') == STORED_K  # one per result card
    for h in hits:
        cam = reverse(
            "cases:review_cam",
            args=[query_study.pk, h.query_slice_id, h.reference_slice_id, "reference"],
        )
        assert cam in html
        assert reverse("cases:study_detail", args=[h.reference_case.study_id]) in html
    # Rank 1's case similarity: per query slice its best cosine to the case, averaged.
    query = np.vstack([unit(1.0, 0.3), unit(1.0, 0.0), unit(0.0, 0.0, 1.0)])
    exact = case_score(per_slice_best(query, unit(1.0, 0.1)[None, :]))
    assert f"similarity {exact:.2f}<" in html


def test_review_page_shows_the_suggested_diagnosis_and_vote_bars(client, clinician, query_study):
    StudyResult.objects.filter(study=query_study).update(votes={"normal": 0.75, "ipf-ild": 0.25})
    client.force_login(clinician)
    response = review(client, query_study)
    bars = response.context["results"].votes
    assert [(b.name, b.percent) for b in bars] == [("Normal", 75.0), ("IPF-ILD", 25.0)]
    html = response.content.decode()
    assert 'data-testid="suggested">Normal<' in html
    assert 'data-width="75.0"' in html and 'data-width="25.0"' in html


def test_viewer_opens_at_the_key_slice(client, clinician, query_study):
    client.force_login(clinician)
    response = review(client, query_study)
    config = response.context["viewer_config"]
    key = StudyResult.objects.get(study=query_study).key_slice_id
    assert config["slices"] == [s.pk for s in query_study.slices]
    assert config["slices"][config["index"]] == key
    assert response.context["review_config"]["hits"][0]["querySlice"] == key


def test_diagnosis_filter_returns_k_cases_of_that_diagnosis_when_enough_exist(
    client, clinician, query_study, library
):
    _, ipf = library
    client.force_login(clinician)
    response = review(client, query_study, diagnosis="ipf-ild", k=N_IPF)
    results = response.context["results"]
    assert results.live
    assert len(results.hits) == N_IPF
    assert {h.reference_case.pk for h in results.hits} == {rc.pk for rc in ipf}
    assert all(h.diagnosis.code == "ipf-ild" for h in results.hits)
    # Unfiltered votes stay those of the stored answer.
    assert results.suggested.code == "normal"


def test_diagnosis_filter_says_when_the_library_has_fewer_than_k(
    client, clinician, query_study, library
):
    client.force_login(clinician)
    response = review(client, query_study, diagnosis="ipf-ild", k=8)
    results = response.context["results"]
    assert len(results.hits) == N_IPF and results.library_count == N_IPF
    assert "the library has 3 approved IPF-ILD cases" in response.content.decode()


def test_a_larger_k_than_stored_queries_the_index_again(client, clinician, query_study):
    client.force_login(clinician)
    response = review(client, query_study, k=8)
    results = response.context["results"]
    assert results.live and len(results.hits) == N_NORMAL + N_IPF
    assert [h.rank for h in results.hits] == list(range(1, 9))
    codes = [h.diagnosis.code for h in results.hits]
    assert codes[:N_NORMAL] == ["normal"] * N_NORMAL
    # Votes of a live unfiltered query are recomputed over its k cases.
    assert {b.code for b in results.votes} == {"normal", "ipf-ild"}


def test_a_case_approved_after_processing_is_found_by_a_live_query(
    client, clinician, query_study, version
):
    new = _reference(version=version, name="DM/RP-ILD (anti-MDA5)", vector=unit(1.0), n=99)
    client.force_login(clinician)
    response = review(client, query_study, diagnosis="dm-rp-ild", k=4)
    assert [h.reference_case.pk for h in response.context["hits"]] == [new.pk]


def test_retired_cases_disappear_from_live_queries(client, clinician, query_study, library):
    _, ipf = library
    ReferenceCase.objects.filter(pk=ipf[0].pk).update(state=ReferenceCase.State.RETIRED)
    ReferenceEmbedding.objects.filter(reference_case=ipf[0]).delete()
    client.force_login(clinician)
    response = review(client, query_study, diagnosis="ipf-ild", k=4)
    assert {h.reference_case.pk for h in response.context["hits"]} == {rc.pk for rc in ipf[1:]}


def test_radiomics_table_puts_query_and_result_values_side_by_side(
    client, clinician, query_study, library
):
    client.force_login(clinician)
    response = review(client, query_study, sel=2)
    selected = response.context["selected"]
    assert selected.rank == 2
    rows = {r.feature: r for r in selected.radiomics}
    normal, _ = library
    assert rows["original_firstorder_Mean"].query == -701.0  # the key slice (index 1)
    assert rows["original_firstorder_Mean"].result == 101.0  # normal[1]
    assert rows["original_ngtdm_Coarseness"].result is None
    assert rows["original_glcm_Contrast"].label == "GLCM · Contrast"
    html = response.content.decode()
    # Every result has its table; only the selected one is visible without JavaScript.
    assert html.count('data-testid="radiomics-table"') == STORED_K
    assert 'data-rank="2" aria-label="Radiomics of result 2">' in html
    assert 'data-rank="1" aria-label="Radiomics of result 1" hidden>' in html
    assert "-701" in html and "101" in html


def test_stored_cam_overlays_are_served_for_the_result_pairs(client, clinician, query_study):
    client.force_login(clinician)
    case = SimilarCase.objects.get(result__study=query_study, rank=1)
    for side, colour in (("query", (255, 0, 0)), ("reference", (0, 0, 255))):
        url = reverse(
            "cases:review_cam",
            args=[query_study.pk, case.query_slice_id, case.reference_slice_id, side],
        )
        response = client.get(url)
        assert response.status_code == 200 and response["Content-Type"] == "image/png"
        image = Image.open(io.BytesIO(b"".join(response.streaming_content)))
        assert image.getpixel((0, 0)) == colour


def test_cam_endpoint_refuses_slices_of_other_studies_and_unknown_sides(
    client, clinician, other_clinician, query_study
):
    case = SimilarCase.objects.get(result__study=query_study, rank=1)
    foreign = SliceFactory(series=SeriesFactory(study=StudyFactory(uploaded_by=other_clinician)))
    client.force_login(clinician)
    url = "cases:review_cam"
    args = [query_study.pk, case.query_slice_id, case.reference_slice_id]
    assert client.get(reverse(url, args=[*args[:2], foreign.pk, "query"])).status_code == 404
    assert client.get(reverse(url, args=[args[0], foreign.pk, args[2], "query"])).status_code == 404
    assert client.get(reverse(url, args=[*args, "other"])).status_code == 404


def test_a_clinician_cannot_open_another_clinicians_review_page_progress_or_cams(
    client, other_clinician, query_study
):
    case = SimilarCase.objects.get(result__study=query_study, rank=1)
    client.force_login(other_clinician)
    assert review(client, query_study).status_code == 404
    assert client.get(reverse("cases:study_progress", args=[query_study.pk])).status_code == 404
    cam = reverse(
        "cases:review_cam",
        args=[query_study.pk, case.query_slice_id, case.reference_slice_id, "query"],
    )
    assert client.get(cam).status_code == 404


def test_experts_see_every_review_page_with_the_expert_actions(client, expert, query_study):
    client.force_login(expert)
    response = review(client, query_study)
    assert response.status_code == 200
    html = response.content.decode()
    assert reverse("review:label_set", args=[query_study.pk]) in html
    assert 'id="expert-actions"' in html


def test_clinicians_see_the_diagnosis_but_no_expert_forms(client, clinician, query_study):
    client.force_login(clinician)
    html = review(client, query_study).content.decode()
    assert 'data-testid="current-label"' in html
    assert reverse("review:label_set", args=[query_study.pk]) not in html


def test_processing_study_shows_a_live_progress_bar_and_no_results(client, clinician):
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="embed",
        progress_percent=55,
    )
    client.force_login(clinician)
    response = review(client, study)
    assert response.status_code == 200
    html = response.content.decode()
    progress_url = reverse("cases:study_progress", args=[study.pk])
    assert f'data-progress-url="{progress_url}"' in html
    assert 'aria-valuenow="55"' in html and "Running: embed (55%)" in html
    assert 'data-testid="no-results"' in html and 'data-testid="retry"' not in html


def test_progress_endpoint_reports_status_stage_and_percent(client, clinician):
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="prepare",
        progress_percent=12,
    )
    client.force_login(clinician)
    data = client.get(reverse("cases:study_progress", args=[study.pk])).json()
    assert data["status"] == "processing" and data["stage"] == "prepare"
    assert data["percent"] == 12 and not data["finished"] and not data["failed"]
    Study.objects.filter(pk=study.pk).update(
        status=Study.Status.READY_FOR_REVIEW, progress_stage="done", progress_percent=100
    )
    data = client.get(reverse("cases:study_progress", args=[study.pk])).json()
    assert data["finished"] and data["percent"] == 100
    assert data["review_url"] == reverse("cases:study_review", args=[study.pk])


def test_failed_study_shows_the_reason_and_only_experts_may_retry(client, clinician, expert):
    study = StudyFactory(
        uploaded_by=clinician, status=Study.Status.FAILED, status_message="no lung found"
    )
    client.force_login(clinician)
    html = review(client, study).content.decode()
    assert "no lung found" in html and 'data-testid="retry"' not in html
    assert not client.get(reverse("cases:study_progress", args=[study.pk])).json()["can_retry"]
    assert client.post(reverse("cases:study_retry", args=[study.pk])).status_code == 403
    assert Study.objects.get(pk=study.pk).status == Study.Status.FAILED

    client.force_login(expert)
    html = review(client, study).content.decode()
    assert 'data-testid="retry"' in html
    assert client.get(reverse("cases:study_progress", args=[study.pk])).json()["can_retry"]


def test_retry_requeues_a_failed_study_with_an_audit_event(client, clinician, expert):
    study = StudyFactory(
        uploaded_by=clinician, status=Study.Status.FAILED, status_message="worker died"
    )
    client.force_login(expert)
    response = client.post(reverse("cases:study_retry", args=[study.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("cases:study_review", args=[study.pk])
    study.refresh_from_db()
    assert study.status == Study.Status.PROCESSING and study.status_message == ""
    assert StudyJob.objects.get(study=study).attempts == 1
    event = AuditEvent.objects.get(verb="study.retry")
    assert event.actor == expert and event.detail == {"previous_error": "worker died"}


def test_retry_of_a_finished_study_changes_nothing(client, clinician, expert, query_study):
    client.force_login(expert)
    response = client.post(reverse("cases:study_retry", args=[query_study.pk]), follow=True)
    assert "only failed or unprocessed studies can be retried" in response.content.decode()
    assert Study.objects.get(pk=query_study.pk).status == Study.Status.READY_FOR_REVIEW
    assert not StudyJob.objects.filter(study=query_study).exists()
    assert not AuditEvent.objects.filter(verb="study.retry").exists()


def test_retry_needs_post(client, expert):
    client.force_login(expert)
    study = StudyFactory(status=Study.Status.FAILED)
    assert client.get(reverse("cases:study_retry", args=[study.pk])).status_code == 405


def test_review_config_lists_each_result_with_its_query_cam(client, clinician, query_study):
    client.force_login(clinician)
    response = review(client, query_study)
    html = response.content.decode()
    start = html.index('<script id="review-config" type="application/json">')
    payload = html[start:].split(">", 1)[1].split("</script>", 1)[0]
    config = json.loads(payload)
    assert [h["rank"] for h in config["hits"]] == list(range(1, STORED_K + 1))
    assert config["progressUrl"] == reverse("cases:study_progress", args=[query_study.pk])
    assert all(h["queryCam"].endswith("-query.png") for h in config["hits"])


def test_study_page_and_worklist_link_to_the_review_page_and_poll_progress(
    client, clinician, query_study
):
    processing = StudyFactory(uploaded_by=clinician, status=Study.Status.PROCESSING)
    fresh = StudyFactory(uploaded_by=clinician, status=Study.Status.UPLOADED)
    client.force_login(clinician)
    review_url = reverse("cases:study_review", args=[query_study.pk])
    detail = client.get(reverse("cases:study_detail", args=[query_study.pk])).content.decode()
    assert f'href="{review_url}" data-testid="open-review">Review similar cases' in detail
    detail = client.get(reverse("cases:study_detail", args=[processing.pk])).content.decode()
    assert "Processing status" in detail
    assert f'data-progress-url="{reverse("cases:study_progress", args=[processing.pk])}"' in detail
    detail = client.get(reverse("cases:study_detail", args=[fresh.pk])).content.decode()
    assert 'data-testid="open-review"' not in detail

    worklist = client.get(reverse("cases:worklist")).content.decode()
    assert f'href="{review_url}" data-testid="review-link"' in worklist
    assert worklist.count('data-testid="review-link"') == 1  # only the study with results
    # Only the studies on their way poll (a finished one shows no empty bar).
    assert worklist.count("data-progress-url=") == 2
    assert "progress.js" in worklist


def test_web_requests_load_no_model_and_build_no_index(
    client, clinician, query_study, library, monkeypatch
):
    """The review page, a filtered view with another k, its status poll and the CAM URLs all
    answer with every model loader and index builder made to fail: the web side only reads
    what workers stored and sends jobs (recorded here, as a broker with no worker would)."""
    from retrieval.engine import index as engine_index
    from retrieval.engine.artefact import RetrievalModel
    from retrieval.pipeline import enqueue, runtime

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or an index in a web request")

    monkeypatch.setattr(runtime, "model_load", forbidden)
    monkeypatch.setattr(RetrievalModel, "load", forbidden)
    monkeypatch.setattr(index_store, "index_sync", forbidden)
    monkeypatch.setattr(engine_index, "build_index", forbidden)
    monkeypatch.setattr(engine_index, "load_index", forbidden)
    jobs = []
    monkeypatch.setattr(enqueue, "task_publish", lambda short, *args: jobs.append(short))
    client.force_login(clinician)

    assert review(client, query_study).status_code == 200
    filtered = review(client, query_study, diagnosis="ipf-ild", k=8)
    assert filtered.status_code == 200
    assert filtered.context["results"].pending and not filtered.context["hits"]
    assert 'data-testid="results-computing"' in filtered.content.decode()
    assert filtered.context["review_config"]["liveStatusUrl"]
    poll = client.get(
        reverse("cases:review_live_status", args=[query_study.pk]), {"diagnosis": "ipf-ild", "k": 8}
    )
    assert poll.json() == {"ready": False}

    stored = SimilarCase.objects.get(result__study=query_study, rank=1)
    SimilarCase.objects.filter(result__study=query_study, rank=2).update(
        query_cam="", reference_cam=""
    )
    missing = SimilarCase.objects.get(result__study=query_study, rank=2)
    _normal, ipf = library
    other_pair = (query_study.slices[0].pk, ipf[0].study.series.get().slices.get().pk)
    pairs = [
        (stored.query_slice_id, stored.reference_slice_id, 200),
        (missing.query_slice_id, missing.reference_slice_id, 202),
        (*other_pair, 202),
    ]
    for q, r, expected in pairs:
        url = reverse("cases:review_cam", args=[query_study.pk, q, r, "reference"])
        assert client.get(url).status_code == expected
    assert set(jobs) == {"study_live_query", "similar_case_explain", "review_cam_compute"}
