"""The review page on a study processed by the real pipeline (eagerly, tiny model): results
first and CAMs after (each a worker job, shown as "computing" until stored), and the CAM
overlays of live-query results that the pipeline did not explain, computed by a worker job that
the CAM URL sends (it answers 202 with a placeholder meanwhile).
"""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.files.storage import default_storage
from django.urls import reverse
from django.utils import timezone
from PIL import Image

from cases.models import Study
from retrieval import tasks
from retrieval.models import SimilarCase, StudyResult
from retrieval.pipeline import enqueue
from retrieval.pipeline import stages as pipeline_stages
from retrieval.pipeline.synthetic import synthetic_study_create
from retrieval.services import review_cam_name
from tests.retrieval_tests.pipeline_fixtures import LIBRARY, SIZE

pytestmark = [pytest.mark.django_db, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def processed(library, clinician, active_version, settings, django_capture_on_commit_callbacks):
    # Two stored results (four CAMs in the explain jobs) keep this test short; the filtered
    # queries below then return pairs the pipeline did not explain.
    settings.ILDREVIEW_RESULTS_TOP_K = 2
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=3, size=SIZE
    )
    with django_capture_on_commit_callbacks(execute=True):
        enqueue.study_enqueue_processing(study=study)
    study.refresh_from_db()
    assert study.status == Study.Status.READY_FOR_REVIEW
    return study


@pytest.fixture
def sent(monkeypatch):
    """Jobs the web side sends, recorded instead of run (a broker with no worker yet); call
    `run_all()` to run them as a worker would."""
    jobs = SentJobs()

    def record(short, *args):
        jobs.append((short, args))

    monkeypatch.setattr(enqueue, "task_publish", record)
    monkeypatch.setattr(pipeline_stages, "task_publish", record)
    return jobs


class SentJobs(list):
    """(task short name, args) of the jobs sent, in order."""

    def run_all(self) -> None:
        while self:
            short, args = self.pop(0)
            getattr(tasks, short).apply(args=args).get()


def _png(response) -> Image.Image:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return Image.open(io.BytesIO(body))


def test_review_page_of_a_processed_study_with_stored_and_on_demand_cams(
    client, clinician, processed, active_version, monkeypatch
):
    """One test (the processing set-up is the costly part): the stored answer with its CAMs
    and radiomics, then a diagnosis filter whose results get CAMs computed once and cached."""
    _stored_results_are_shown(client, clinician, processed)
    _live_filter_results_get_a_cam_computed_once_and_cached(
        client, clinician, processed, active_version, monkeypatch
    )


def _stored_results_are_shown(client, clinician, processed):
    client.force_login(clinician)
    response = client.get(reverse("cases:study_review", args=[processed.pk]))
    assert response.status_code == 200
    stored = list(SimilarCase.objects.filter(result__study=processed).order_by("rank"))
    hits = response.context["hits"]
    assert [h.reference_case.pk for h in hits] == [c.reference_case_id for c in stored]
    # Radiomics of both slices were stored by the pipeline: the table has values on both sides.
    rows = response.context["selected"].radiomics
    assert rows and all(r.query is not None and r.result is not None for r in rows)
    image = _png(client.get(hits[0].reference_cam_url))
    assert image.format == "PNG" and image.size == (SIZE, SIZE)


def _live_filter_results_get_a_cam_computed_once_and_cached(
    client, clinician, processed, active_version, monkeypatch
):
    stored_pairs = set(
        SimilarCase.objects.filter(result__study=processed).values_list(
            "query_slice_id", "reference_slice_id"
        )
    )
    client.force_login(clinician)
    found = None
    for name in LIBRARY:  # a diagnosis whose best pair was not explained by the pipeline
        code = {"Normal": "normal", "IPF-ILD": "ipf-ild", "ASS-ILD": "ass-ild"}[name]
        response = client.get(
            reverse("cases:study_review", args=[processed.pk]), {"diagnosis": code, "k": 2}
        )
        hits = response.context["hits"]
        assert len(hits) == 2 and all(h.diagnosis.code == code for h in hits)
        found = next(
            (h for h in hits if (h.query_slice_id, h.reference_slice_id) not in stored_pairs),
            found,
        )
    assert found is not None, "every filtered result was among the stored ones"
    assert not found.cam_ready
    cached = review_cam_name(
        study_id=processed.pk,
        model_version_id=active_version.pk,
        query_slice_id=found.query_slice_id,
        reference_slice_id=found.reference_slice_id,
        side="reference",
    )
    assert not default_storage.exists(cached)
    # No worker has answered yet: a placeholder (a valid PNG, no broken image) and one job.
    with monkeypatch.context() as m:
        jobs = []
        m.setattr(enqueue, "task_publish", lambda short, *args: jobs.append((short, args)))
        pending = client.get(found.reference_cam_url)
        assert pending.status_code == 202 and _png(pending).format == "PNG"
        assert "no-store" in pending["Cache-Control"]
        assert [j[0] for j in jobs] == ["review_cam_compute"]
        assert not default_storage.exists(cached)
        # The worker runs the job: the overlay is stored and served from then on.
        tasks.review_cam_compute.apply(args=jobs[0][1]).get()
    assert default_storage.exists(cached)
    first = client.get(found.reference_cam_url)
    assert first.status_code == 200 and _png(first).size == (SIZE, SIZE)
    again = client.get(found.reference_cam_url)
    assert again.status_code == 200
    assert b"".join(again.streaming_content) == b"".join(
        client.get(found.reference_cam_url).streaming_content
    )


def test_results_are_ready_before_their_cams_which_workers_add_one_by_one(
    library, clinician, active_version, sent, django_capture_on_commit_callbacks, client, settings
):
    """The study is ready after the retrieve stage; one CAM job per result, best rank first;
    the page and the API say "computing" until each is stored."""
    settings.ILDREVIEW_RESULTS_TOP_K = 2
    study = synthetic_study_create(uploaded_by=clinician, pattern="normal", slices=3, size=SIZE)
    with django_capture_on_commit_callbacks(execute=True):
        enqueue.study_enqueue_processing(study=study)
    # The chain ran (eager run_publish is not patched); only the CAM jobs wait for a worker.
    study.refresh_from_db()
    assert study.status == Study.Status.READY_FOR_REVIEW
    cases = list(SimilarCase.objects.filter(result__study=study).order_by("rank"))
    assert len(cases) == 2 and not any(c.query_cam or c.reference_cam for c in cases)
    assert sent == [("similar_case_explain", (c.pk,)) for c in cases]

    client.force_login(clinician)
    page = client.get(reverse("cases:study_review", args=[study.pk]))
    html = page.content.decode()
    assert html.count('data-testid="cam-computing"') == 2
    assert [h["camReady"] for h in page.context["review_config"]["hits"]] == [False, False]
    api = client.get(reverse("api-study-results", args=[study.pk])).json()
    assert [c["cam_status"] for c in api["similar_cases"]] == ["computing", "computing"]
    assert api["similar_cases"][0]["query_cam_url"] is None

    # Jobs lost by the broker are sent again by the recovery sweep, once per period.
    cache.clear()
    sent.clear()
    assert pipeline_stages.cams_missing_resend(older_than_s=3600) == []  # not overdue yet
    StudyResult.objects.filter(study=study).update(created_at=timezone.now() - timedelta(hours=2))
    assert pipeline_stages.cams_missing_resend(older_than_s=3600) == [c.pk for c in cases]
    assert pipeline_stages.cams_missing_resend(older_than_s=3600) == []  # sent this period
    assert sent == [("similar_case_explain", (c.pk,)) for c in cases]

    # The first job runs: result 1's CAMs are shown, result 2 still computing.
    short, args = sent.pop(0)
    getattr(tasks, short).apply(args=args).get()
    page = client.get(reverse("cases:study_review", args=[study.pk]))
    assert page.content.decode().count('data-testid="cam-computing"') == 1
    hit = page.context["hits"][0]
    assert client.get(hit.query_cam_url).status_code == 200
    # A still missing CAM: 202 and its job sent again (the broker may have lost the first).
    second = page.context["hits"][1]
    assert client.get(second.reference_cam_url).status_code == 202
    assert sent[-1] == ("similar_case_explain", (cases[1].pk,))
    sent.run_all()
    api = client.get(reverse("api-study-results", args=[study.pk])).json()
    assert [c["cam_status"] for c in api["similar_cases"]] == ["ready", "ready"]
    page = client.get(reverse("cases:study_review", args=[study.pk]))
    assert 'data-testid="cam-computing"' not in page.content.decode()
