"""The class-first (hierarchical) search where users choose how to search: the live-query
service, the review page's `mode=hierarchical` and its worker answer."""

from __future__ import annotations

import json

import pytest
from django.core.files.storage import default_storage
from django.urls import reverse

from cases.models import ReferenceCase, Study
from retrieval.pipeline import enqueue
from retrieval.pipeline import stages as pipeline_stages
from retrieval.pipeline.synthetic import synthetic_study_create
from retrieval.services import study_live_query_request, study_live_query_run
from tests.retrieval_tests.pipeline_fixtures import SIZE

pytestmark = pytest.mark.django_db


@pytest.fixture
def processed_study(library, clinician, active_version):
    from retrieval.selectors import model_version_active

    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=2, size=SIZE
    )
    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    run_id = enqueue.job_new_run(study_id=study.pk, model_version=model_version_active()).run_id
    for stage in ("prepare", "embed", "retrieve"):
        assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=run_id)
    study.refresh_from_db()
    return study


def _answer(study, version, *, k: int, mode: str) -> dict:
    name = study_live_query_run(
        study_id=study.pk, model_version_id=version.pk, k=k, diagnosis_code="", mode=mode
    )
    with default_storage.open(name, "rb") as fh:
        return json.loads(fh.read())


def _codes(answer: dict) -> list[str]:
    cases = ReferenceCase.objects.select_related("diagnosis").in_bulk(
        [row[0] for row in answer["cases"]]
    )
    return [cases[row[0]].diagnosis.code for row in answer["cases"]]


def test_class_first_search_returns_only_cases_of_the_predicted_class(
    processed_study, active_version
):
    similar = _answer(processed_study, active_version, k=5, mode="similar")
    class_first = _answer(processed_study, active_version, k=5, mode="hierarchical")

    predicted = class_first["predicted_class"]
    assert predicted is not None and class_first["mode"] == "hierarchical"
    assert len(set(_codes(similar))) > 1 and len(similar["cases"]) == 5
    # The library has two cases of each class: class first returns exactly those two.
    assert _codes(class_first) == [predicted, predicted]
    assert class_first["votes"] == {predicted: 1.0}
    assert similar["predicted_class"] is None
    for key in ("abstained", "abstain_reason", "top_similarity", "vote_margin"):
        assert key in similar and key in class_first


def test_an_unknown_search_mode_is_refused_and_nothing_is_stored(processed_study, active_version):
    with pytest.raises(ValueError, match="mode must be one of"):
        study_live_query_request(
            study=processed_study,
            model_version=active_version,
            k=4,
            diagnosis_code=None,
            mode="everything",
        )
    with pytest.raises(ValueError, match="mode must be one of"):
        study_live_query_run(
            study_id=processed_study.pk,
            model_version_id=active_version.pk,
            k=4,
            mode="everything",
        )


def test_the_review_page_searches_class_first_with_mode_hierarchical(
    client, expert, processed_study
):
    client.force_login(expert)
    url = reverse("cases:study_review", args=[processed_study.pk])

    page = client.get(url, {"mode": "hierarchical", "k": 4})
    default = client.get(url, {"k": 4})

    assert page.status_code == 200
    results = page.context["results"]
    assert results.mode == "hierarchical" and results.predicted_class
    assert {h.diagnosis.code for h in results.hits} == {results.predicted_class}
    assert '<option value="hierarchical" selected>' in page.content.decode()
    assert "searched within the predicted class" in page.content.decode()
    assert default.context["results"].mode == "similar"
    assert len({h.diagnosis.code for h in default.context["results"].hits}) > 1
    # The suggestion stays the similar-case vote's in either mode.
    assert results.suggested == default.context["results"].suggested


def test_the_results_api_answers_class_first_with_mode_hierarchical(
    client, expert, processed_study
):
    client.force_login(expert)
    url = reverse("api-study-results", args=[processed_study.pk])

    default = client.get(url).json()
    class_first = client.get(url, {"mode": "hierarchical", "k": 4}).json()
    bad = client.get(url, {"mode": "everything"})

    assert default["abstained"] is False and "vote_margin" in default
    assert "predicted_class" not in default
    predicted = class_first["predicted_class"]
    assert class_first["mode"] == "hierarchical" and class_first["k"] == 4
    assert [c["diagnosis"]["code"] for c in class_first["similar_cases"]] == [predicted] * 2
    assert class_first["votes"] == default["votes"]  # the stored suggestion is unchanged
    assert bad.status_code == 400 and "mode must be one of" in bad.json()["detail"]
