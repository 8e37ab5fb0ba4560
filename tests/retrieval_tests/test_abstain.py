"""Decisions a reader can trust: class-balanced similarity-weighted votes and the "no close
match" state, in the engine (`rank_cases`) and as the retrieve stage stores them."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.engine.index import build_index
from retrieval.engine.query import abstain_thresholds, class_prior, rank_cases

DIM = 8


def _unit(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for axis, value in pairs:
        v[axis] = value
    return v / np.linalg.norm(v)


def _library(slices):
    index = build_index("exact", dim=DIM)
    index.add(np.array([s[0] for s in slices]), np.vstack([s[3] for s in slices]))
    return index, {s[0]: (s[1], s[2]) for s in slices}


@pytest.fixture
def near_and_far():
    """Case 1 (A) at cosine 0.8 to the query, case 2 (B) at 0.6."""
    slices = [
        (1, 1, "A", _unit((0, 0.8), (1, 0.6))),
        (2, 2, "B", _unit((0, 0.6), (2, 0.8))),
    ]
    return _library(slices), _unit((0, 1.0))


def test_without_thresholds_a_query_never_abstains(near_and_far):
    (index, meta), q = near_and_far
    result = rank_cases(query_vectors=q, index=index, slice_meta=meta, k_cases=2)

    assert not result.abstained and result.abstain_reason == ""
    assert result.suggested_label == "A"
    assert result.top_similarity == pytest.approx(0.8, abs=1e-5)
    assert result.vote_margin == pytest.approx((0.8 - 0.6) / 1.4, abs=1e-5)


def test_a_best_similarity_below_the_threshold_abstains_and_above_it_does_not(near_and_far):
    (index, meta), q = near_and_far
    below = rank_cases(
        query_vectors=q,
        index=index,
        slice_meta=meta,
        k_cases=2,
        abstain={"min_top_similarity": 0.85},
    )
    above = rank_cases(
        query_vectors=q,
        index=index,
        slice_meta=meta,
        k_cases=2,
        abstain={"min_top_similarity": 0.75},
    )

    assert below.abstained and below.suggested_label is None
    assert "best similarity 0.800" in below.abstain_reason
    assert below.voted_label == "A" and below.votes  # the votes stay, for display
    assert not above.abstained and above.suggested_label == "A"


def test_a_vote_margin_below_the_threshold_abstains_and_above_it_does_not(near_and_far):
    (index, meta), q = near_and_far
    margin = (0.8 - 0.6) / 1.4
    below = rank_cases(
        query_vectors=q,
        index=index,
        slice_meta=meta,
        k_cases=2,
        abstain={"min_vote_margin": margin + 0.01},
    )
    above = rank_cases(
        query_vectors=q,
        index=index,
        slice_meta=meta,
        k_cases=2,
        abstain={"min_vote_margin": margin - 0.01},
    )

    assert below.abstained and "vote margin" in below.abstain_reason
    assert not above.abstained


def test_thresholds_are_read_from_the_model_config_then_its_metrics_with_safe_defaults():
    assert abstain_thresholds({}, None) == {"min_top_similarity": None, "min_vote_margin": None}
    assert abstain_thresholds({"abstain": "junk"}, {"abstain": {"min_vote_margin": 0.2}}) == {
        "min_top_similarity": None,
        "min_vote_margin": 0.2,
    }
    both = abstain_thresholds(
        {"abstain": {"min_top_similarity": 0.5, "min_vote_margin": float("nan")}},
        {"abstain": {"min_vote_margin": 0.9}},
    )
    assert both == {"min_top_similarity": 0.5, "min_vote_margin": None}
    # The calibration's own names (metrics.calibrate_abstain), as the recipe stores them.
    calibrated = {"abstain": {"min_similarity": 0.31, "min_margin": 0.12, "coverage": 0.9}}
    assert abstain_thresholds(calibrated) == {"min_top_similarity": 0.31, "min_vote_margin": 0.12}


def test_class_balance_correction_turns_a_vote_won_by_numbers_alone():
    """Library: 9 cases of 'common', 1 of 'rare'. The query's top 4 cases: 3 'common' at 0.5
    and the 'rare' case at 0.9. Raw votes: common 1.5 > rare 0.9; divided by the library
    shares (0.9 and 0.1): common 1.67 < rare 9."""
    slices = []
    for case in range(9):
        sim = 0.5 if case < 3 else 0.1
        slices.append((case, case, "common", _unit((0, sim), (1 + case % 6, np.sqrt(1 - sim**2)))))
    slices.append((99, 99, "rare", _unit((0, 0.9), (7, np.sqrt(1 - 0.81)))))
    index, meta = _library(slices)
    q = _unit((0, 1.0))

    raw = rank_cases(query_vectors=q, index=index, slice_meta=meta, k_cases=4, balance=False)
    balanced = rank_cases(query_vectors=q, index=index, slice_meta=meta, k_cases=4)

    assert class_prior(meta) == {"common": pytest.approx(0.9), "rare": pytest.approx(0.1)}
    assert raw.suggested_label == "common"
    assert balanced.suggested_label == "rare"
    assert balanced.votes["rare"] == pytest.approx(9.0 / (9.0 + 1.5 / 0.9), abs=1e-4)


# --- the retrieve stage stores the decision -------------------------------------------------


def _process(study):
    from cases.models import Study
    from retrieval.pipeline import enqueue
    from retrieval.pipeline import stages as pipeline_stages
    from retrieval.selectors import model_version_active

    Study.objects.filter(pk=study.pk).update(status=Study.Status.PROCESSING)
    run_id = enqueue.job_new_run(study_id=study.pk, model_version=model_version_active()).run_id
    for stage in ("prepare", "embed", "retrieve"):
        assert pipeline_stages.STAGE_SERVICES[stage](study_id=study.pk, run_id=run_id)


@pytest.mark.django_db
@pytest.mark.parametrize("threshold, abstains", [(1.01, True), (-1.0, False)])
def test_the_retrieve_stage_stores_the_abstain_state_from_the_model_thresholds(
    library, clinician, active_version, threshold, abstains
):
    from retrieval.models import StudyResult
    from retrieval.pipeline.synthetic import synthetic_study_create
    from tests.retrieval_tests.pipeline_fixtures import SIZE

    active_version.config = {"abstain": {"min_top_similarity": threshold}}
    active_version.save(update_fields=["config"])
    study = synthetic_study_create(
        uploaded_by=clinician, pattern="reticulation", slices=2, size=SIZE
    )

    _process(study)

    result = StudyResult.objects.get(study=study, model_version=active_version)
    assert result.abstained is abstains
    assert -1.0 <= result.top_similarity <= 1.0 and 0.0 <= result.vote_margin <= 1.0
    assert sum(result.votes.values()) == pytest.approx(1.0)  # the old keys stay
    if abstains:
        assert result.suggested_diagnosis is None
        assert "below the threshold 1.010" in result.abstain_reason
    else:
        assert result.suggested_diagnosis is not None and result.abstain_reason == ""
