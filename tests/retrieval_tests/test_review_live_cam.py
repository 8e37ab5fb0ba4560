"""The review page on a study processed by the real pipeline (eagerly, tiny model), and the
CAM overlays computed on demand for results of a live query that the pipeline did not explain.
"""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse
from PIL import Image

from cases.models import Study
from retrieval.models import SimilarCase
from retrieval.pipeline import enqueue
from retrieval.pipeline.synthetic import synthetic_study_create
from retrieval.services import review_cam_name
from tests.retrieval_tests.pipeline_fixtures import LIBRARY, SIZE

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """torch's thread pool on 2 shared cores is many times slower than one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def processed(library, clinician, active_version, settings, django_capture_on_commit_callbacks):
    # Two stored results (four CAMs in the explain stage) keep this test short; the filtered
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


def _png(response) -> Image.Image:
    body = b"".join(response.streaming_content) if response.streaming else response.content
    return Image.open(io.BytesIO(body))


def test_review_page_of_a_processed_study_with_stored_and_on_demand_cams(
    client, clinician, processed, active_version
):
    """One test (the processing set-up is the costly part): the stored answer with its CAMs
    and radiomics, then a diagnosis filter whose results get CAMs computed once and cached."""
    _stored_results_are_shown(client, clinician, processed)
    _live_filter_results_get_a_cam_computed_once_and_cached(
        client, clinician, processed, active_version
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
    client, clinician, processed, active_version
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
    cached = review_cam_name(
        study_id=processed.pk,
        model_version_id=active_version.pk,
        query_slice_id=found.query_slice_id,
        reference_slice_id=found.reference_slice_id,
        side="reference",
    )
    assert not default_storage.exists(cached)
    first = client.get(found.reference_cam_url)
    assert first.status_code == 200 and _png(first).size == (SIZE, SIZE)
    assert default_storage.exists(cached)
    again = client.get(found.reference_cam_url)
    assert again.content == first.content
