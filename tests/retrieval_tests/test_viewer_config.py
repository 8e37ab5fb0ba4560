"""The review viewer's config (retrieval/selectors/viewer.py): positions within the lungs for
linked scrolling, the comparisons a user may open, and the config on the review page."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from cases.models import ReferenceCase
from retrieval.models import SimilarCase
from retrieval.selectors.viewer import lung_positions
from tests.browser_tests.viewer_data import viewer_case_create
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_lung_positions_map_the_first_and_last_lung_slice_to_0_and_1():
    fractions = [0.0, 0.0, 0.02, 0.2, 0.3, 0.2, 0.01, 0.0]
    positions, by_lungs = lung_positions(fractions=fractions)
    assert by_lungs
    # 10 % of the largest fraction (0.03) is the lung bound: slices 3..5 are the lungs.
    assert positions[3] == 0.0 and positions[5] == 1.0 and positions[4] == 0.5
    assert positions[0] < 0 and positions[7] > 1  # beyond the lungs, linearly
    assert positions == sorted(positions)


def test_lung_positions_fall_back_to_the_index_fraction_without_fractions():
    assert lung_positions(fractions=[None, 0.3, None]) == ([0.0, 0.5, 1.0], False)
    assert lung_positions(fractions=[0.0, 0.0, 0.0]) == ([0.0, 0.5, 1.0], False)
    assert lung_positions(fractions=[0.4]) == ([0.5], False)
    assert lung_positions(fractions=[]) == ([], False)


@pytest.fixture
def case():
    clinician = UserFactory(username="cfgclin", role="Clinician")
    expert = UserFactory(username="cfgexp", role="Expert")
    data = viewer_case_create(
        clinician=clinician, expert=expert, query_slices=12, reference_slices=(9, 14), size=64
    )
    data["clinician"] = clinician
    return data


def _config(client, user, study_id) -> dict:
    client.force_login(user)
    response = client.get(reverse("cases:study_review", args=[study_id]))
    assert response.status_code == 200
    html = response.content.decode()
    raw = html.split('<script id="review-viewer-config" type="application/json">')[1]
    return json.loads(raw.split("</script>")[0])


def test_the_review_page_carries_the_query_series_and_each_results_matched_pair(client, case):
    cfg = _config(client, case["clinician"], case["study"])
    assert cfg["query"]["slices"] == case["query_slices"]
    assert cfg["query"]["index"] == case["query_match"]
    assert cfg["query"]["windowed"] is False and cfg["greyWindow"] == [128.0, 256.0]
    assert cfg["query"]["positionsFromLungs"]
    first, last = case["query_lungs"]
    assert cfg["query"]["positions"][first] == 0.0 and cfg["query"]["positions"][last] == 1.0
    assert cfg["preset"] == "lung" and cfg["presets"]["bone"] == [400.0, 1800.0]
    assert [r["rank"] for r in cfg["results"]] == [1, 2]
    for r, ref in zip(cfg["results"], case["references"], strict=True):
        assert r["series"]["slices"] == ref["slices"]
        assert r["referenceSlice"] == ref["slices"][ref["match"]]
        assert r["querySlice"] == case["query_slices"][case["query_match"]]
        assert r["camReady"] is True
        assert r["queryCam"].endswith("-query.png") and r["referenceCam"].endswith("-reference.png")
    assert cfg["pixelsUrl"] == "/api/files/slices/{pk}.npy"
    assert cfg["selected"] == 1


def test_a_result_whose_case_the_user_may_not_see_is_not_offered_for_comparison(client, case):
    retired = SimilarCase.objects.get(result__study_id=case["study"], rank=2).reference_case
    ReferenceCase.objects.filter(pk=retired.pk).update(state=ReferenceCase.State.RETIRED)
    cfg = _config(client, case["clinician"], case["study"])
    assert [r["rank"] for r in cfg["results"]] == [1]
    expert = UserFactory(username="cfgexp2", role="Expert")
    assert [r["rank"] for r in _config(client, expert, case["study"])["results"]] == [1, 2]


def test_the_cam_legend_shows_the_colours_the_engine_draws():
    """static/viewer/viewer.css's colour bar is the engine's colour map from its threshold up."""
    import re
    from pathlib import Path

    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    from retrieval.engine.cam import CAM_COLORMAP, CAM_THRESHOLD

    css = (Path(__file__).resolve().parents[2] / "static" / "viewer" / "viewer.css").read_text()
    scale = re.search(r"--cam-scale:linear-gradient\(90deg, ([^)]*)\)", css).group(1)
    stops = [part.split() for part in scale.split(", ")]
    cmap = colormaps[CAM_COLORMAP]
    for colour, percent in stops:
        heat = CAM_THRESHOLD + (1 - CAM_THRESHOLD) * float(percent.rstrip("%")) / 100
        # Stops are whole percents: allow the colour of a heat up to 0.005 away.
        drawn = [round(255 * c) for c in cmap(heat)[:3]]
        shown = [round(255 * c) for c in to_rgb(colour)]
        assert max(abs(a - b) for a, b in zip(drawn, shown, strict=True)) <= 4, (colour, percent)
    assert len(stops) >= 5
