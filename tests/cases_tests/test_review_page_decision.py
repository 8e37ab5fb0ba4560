"""The review page's decision, abstain state, quality warnings, progress text and explained
numbers (issue 9 items 4-7), against the real page with stored results."""

from __future__ import annotations

import re

import numpy as np
import pytest
from django.urls import reverse

from cases.models import ExpertLabel, ReadingSession, Study
from retrieval.models import StudyJob, StudyResult
from retrieval.selectors.review_explain import library_radiomics_stats
from tests.cases_tests import test_review_page as review_page
from tests.factories import StudyFactory, diagnosis

# The stored-result fixtures of the review page tests.
index_env = review_page.index_env
version = review_page.version
library = review_page.library
query_study = review_page.query_study
review = review_page.review

pytestmark = pytest.mark.django_db


def _html(client, study, **params) -> str:
    response = review(client, study, **params)
    assert response.status_code == 200
    return response.content.decode()


def _label_url(study) -> str:
    return reverse("review:label_set", args=[study.pk])


# --- 4. the decision ------------------------------------------------------------------------


def test_confirm_suggestion_is_one_click_and_records_the_suggested_label(
    client, expert, query_study
):
    client.force_login(expert)
    html = _html(client, query_study)
    normal = diagnosis("Normal")
    assert 'data-testid="confirm-suggestion"' in html
    assert "Confirm suggestion: Normal" in html
    confirm = re.search(r'<form[^>]*class="confirm-form".*?</form>', html, re.S).group(0)
    assert f'name="diagnosis" value="{normal.pk}"' in confirm
    response = client.post(
        _label_url(query_study), {"diagnosis": normal.pk, "action": "confirm", "comment": ""}
    )
    assert response.status_code == 302
    assert ExpertLabel.objects.get(study=query_study).diagnosis == normal


def test_correction_list_starts_blank_and_leaves_out_the_suggestion(client, expert, query_study):
    client.force_login(expert)
    html = _html(client, query_study)
    form = re.search(r'<form[^>]*class="label-form".*?</form>', html, re.S).group(0)
    select = re.search(r"<select.*?</select>", form, re.S).group(0)
    first = re.search(r"<option([^>]*)>", select).group(1)
    assert 'value=""' in first and "selected" in first
    assert "required" in select
    assert f'value="{diagnosis("Normal").pk}"' not in select
    assert f'value="{diagnosis("IPF-ILD").pk}"' in select


def test_correcting_to_the_suggested_label_or_to_nothing_saves_nothing(client, expert, query_study):
    client.force_login(expert)
    normal = diagnosis("Normal")
    for data in (
        {"diagnosis": normal.pk, "action": "correct", "suggested": normal.pk},
        {"diagnosis": "", "action": "correct", "suggested": normal.pk},
        {"diagnosis": ""},
    ):
        response = client.post(_label_url(query_study), data, follow=True)
        assert response.status_code == 200
    assert not ExpertLabel.objects.filter(study=query_study).exists()
    texts = [str(m) for m in response.context["messages"]]
    assert any("Choose a diagnosis" in t for t in texts), texts


def test_correcting_to_another_label_records_it(client, expert, query_study):
    client.force_login(expert)
    ipf = diagnosis("IPF-ILD")
    client.post(
        _label_url(query_study),
        {"diagnosis": ipf.pk, "action": "correct", "suggested": diagnosis("Normal").pk},
    )
    assert ExpertLabel.objects.get(study=query_study).diagnosis == ipf


def test_without_a_suggestion_the_form_is_blank_and_required(client, expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    client.force_login(expert)
    html = _html(client, study)
    assert 'data-testid="confirm-suggestion"' not in html
    select = re.search(r'<select name="diagnosis" required[^>]*>(.*?)</select>', html, re.S)
    assert select is not None
    assert re.match(r'\s*<option value="" selected>', select.group(1))


# --- abstain ----------------------------------------------------------------------------------


def test_abstained_result_shows_no_close_match_with_the_reason_and_no_confirm_button(
    client, expert, query_study
):
    StudyResult.objects.filter(study=query_study).update(
        abstained=True,
        abstain_reason="best similarity 0.41 below 0.55",
        suggested_diagnosis=None,
        top_similarity=0.41,
        vote_margin=0.05,
    )
    client.force_login(expert)
    html = _html(client, query_study)
    assert re.search(r'data-testid="suggested" data-abstained="1">No close match<', html)
    assert "best similarity 0.41 below 0.55" in html
    assert 'data-testid="confirm-suggestion"' not in html
    assert "Best case similarity 0.41" in html


def test_result_without_gate_keys_is_not_abstained(client, clinician, query_study):
    client.force_login(clinician)
    html = _html(client, query_study)
    assert "No close match" not in html
    assert re.search(r'data-testid="suggested">Normal<', html)


# --- 5. quality warnings ----------------------------------------------------------------------


def test_quality_warnings_name_thick_slices_non_chest_contrast_and_few_lung_slices(
    client, clinician, query_study
):
    series = query_study.series.get()
    series.slice_thickness = 5.0
    series.body_part = "ABDOMEN"
    series.contrast_enhanced = True
    series.save()
    client.force_login(clinician)
    html = _html(client, query_study)
    warnings = re.search(r'data-testid="quality-warnings">(.*?)</ul>', html, re.S).group(1)
    codes = re.findall(r'data-warning="([\w-]+)"', warnings)
    assert codes == ["thick-slices", "not-chest", "contrast", "few-lung-slices"]
    assert "5 mm slices: not HRCT" in warnings
    assert "Only 3 slices with lung" in warnings


def test_thin_chest_non_contrast_series_gets_no_warning_but_few_lung_slices(
    client, clinician, query_study
):
    series = query_study.series.get()
    series.slice_thickness = 1.0
    series.body_part = "CHEST"
    series.contrast_enhanced = False
    series.save()
    StudyResult.objects.filter(study=query_study).update(query_slice_count=120)
    client.force_login(clinician)
    assert 'data-testid="quality-warnings"' not in _html(client, query_study)


# --- 6. honest progress -----------------------------------------------------------------------


def test_a_queued_study_says_its_queue_position_and_estimate_and_moves_the_bar(
    client, clinician, version
):
    ahead = StudyFactory(uploaded_by=clinician, status=Study.Status.PROCESSING)
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="embed",
        progress_percent=74,
    )
    for s in (ahead, study):
        StudyJob.objects.create(study=s, run_id=f"r{s.pk}", state=StudyJob.State.WAITING)
    client.force_login(clinician)
    data = client.get(reverse("cases:study_progress", args=[study.pk])).json()
    assert data["text"] == "Waiting in queue (position 2 of 2, wait unknown)"
    assert data["waiting"] is True and data["percent"] == 0
    html = _html(client, study)
    assert "Waiting in queue (position 2 of 2" in html
    assert 'class="progress progress-large waiting"' in html
    assert "embed 74" not in html


def test_a_running_study_names_its_stage_and_percent(client, clinician, version):
    study = StudyFactory(
        uploaded_by=clinician,
        status=Study.Status.PROCESSING,
        progress_stage="embed",
        progress_percent=40,
    )
    StudyJob.objects.create(study=study, run_id="r1", state=StudyJob.State.RUNNING)
    client.force_login(clinician)
    data = client.get(reverse("cases:study_progress", args=[study.pk])).json()
    assert data["text"] == "Running: embed (40%)" and data["waiting"] is False


# --- 7. explained numbers ---------------------------------------------------------------------


def test_radiomics_are_z_scores_against_the_library_with_units_and_meaning(
    client, clinician, query_study, version
):
    stats = library_radiomics_stats(model_version=version)
    mean, sd = stats["original_firstorder_Mean"]
    values = [100.0 + n for n in (0, 1, 2, 3, 4, 10, 11, 12)]
    assert mean == pytest.approx(np.mean(values)) and sd == pytest.approx(np.std(values, ddof=1))
    client.force_login(clinician)
    response = review(client, query_study)
    hit = response.context["hits"][0]
    row = next(r for r in hit.radiomics_z if r.feature == "original_firstorder_Mean")
    assert row.result_z == pytest.approx(round((hit.radiomics[0].result - mean) / sd, 2))
    assert row.unit == "grey level 0–255 (lung window)" and row.meaning
    assert row.query_bar["neg"] == 100.0  # far below the library: the bar is full, left
    html = response.content.decode()
    assert "Mean density" in html and "z-score" in html


def test_matched_slices_replace_raw_hit_counts(client, clinician, query_study):
    client.force_login(clinician)
    response = review(client, query_study)
    html = response.content.decode()
    assert "slice hit" not in html
    hits = response.context["hits"]
    assert all(h.query_slices == 3 for h in hits)
    # Each query slice's closest case among the top cases is counted once.
    assert sum(h.matched for h in hits) >= 3
    assert re.search(r"matched on \d of 3 slices", html)


def test_a_case_has_the_same_score_with_and_without_the_diagnosis_filter(
    client, clinician, query_study
):
    client.force_login(clinician)
    unfiltered = {
        h.reference_case.pk: h.shown_score for h in review(client, query_study).context["hits"]
    }
    filtered = review(client, query_study, diagnosis="normal", k=4).context["hits"]
    assert filtered, "the filtered query returned nothing"
    for hit in filtered:
        if hit.reference_case.pk in unfiltered:
            assert hit.shown_score == pytest.approx(unfiltered[hit.reference_case.pk])
            assert hit.similarity is not None


# --- reading sessions start on the page -------------------------------------------------------


def test_an_expert_opening_the_review_starts_one_reading_and_a_reload_continues_it(
    client, expert, clinician, query_study
):
    client.force_login(expert)
    _html(client, query_study)
    _html(client, query_study)
    assert ReadingSession.objects.filter(study=query_study, expert=expert).count() == 1
    client.force_login(clinician)
    _html(client, query_study)
    assert not ReadingSession.objects.filter(expert=clinician).exists()


def test_cases_are_listed_best_first_by_the_similarity_shown(client, clinician, query_study):
    client.force_login(clinician)
    for params in ({}, {"k": 8}, {"diagnosis": "normal", "k": 4}):
        hits = review(client, query_study, **params).context["hits"]
        scores = [h.shown_score for h in hits]
        assert scores == sorted(scores, reverse=True), params
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
