"""The study page (slice viewer, series, read-only history) and the slice PNG endpoint."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.urls import reverse
from PIL import Image

from cases.models import ReferenceCase
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
    hu_npy_bytes,
)

pytestmark = pytest.mark.django_db


def half_air_half_soft_tissue() -> ContentFile:
    hu = np.full((32, 32), -1000)
    hu[:, 16:] = 40
    return ContentFile(hu_npy_bytes(hu), name="slice.npy")


def series_with_slices(study, n: int = 5, **series_kwargs):
    series = SeriesFactory(study=study, **series_kwargs)
    for index in range(n):
        SliceFactory(series=series, index=index, pixels=half_air_half_soft_tissue())
    series.slice_count = n
    series.save()
    return series


def png(response) -> np.ndarray:
    assert response.status_code == 200, response.content[:200]
    assert response["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def test_owner_sees_viewer_on_the_middle_slice_with_presets(client, clinician):
    study = StudyFactory(uploaded_by=clinician, description="HRCT supine")
    series = series_with_slices(study, n=5, description="Lung B70f", convolution_kernel="B70f")
    client.force_login(clinician)

    response = client.get(reverse("cases:study_detail", args=[study.pk]))

    assert response.status_code == 200
    html = response.content.decode()
    slice_ids = list(series.slices.order_by("index").values_list("pk", flat=True))
    assert response.context["slice_index"] == 2
    assert f'src="{reverse("cases:slice_png", args=[slice_ids[2]])}?preset=lung"' in html
    assert "Slice 3 / 5" in html
    assert 'data-preset="lung"' in html and 'data-preset="mediastinal"' in html
    assert "Lung B70f" in html and "B70f" in html and study.patient.display_id in html
    assert 'src="/static/viewer.js"' in html
    config = json.loads(
        html.split('<script id="viewer-config" type="application/json">')[1].split("</script>")[0]
    )
    assert config["slices"] == slice_ids and config["index"] == 2
    assert config["urlTemplate"].replace("{pk}", str(slice_ids[0])) == reverse(
        "cases:slice_png", args=[slice_ids[0]]
    )


def test_slice_and_preset_parameters_choose_the_image_without_javascript(client, clinician):
    study = StudyFactory(uploaded_by=clinician)
    series = series_with_slices(study, n=5)
    client.force_login(clinician)

    response = client.get(
        reverse("cases:study_detail", args=[study.pk]), {"slice": "4", "preset": "mediastinal"}
    )

    last = series.slices.get(index=4)
    assert f"{reverse('cases:slice_png', args=[last.pk])}?preset=mediastinal" in (
        response.content.decode()
    )
    # Out-of-range indexes are clamped rather than failing.
    response = client.get(reverse("cases:study_detail", args=[study.pk]), {"slice": "99"})
    assert response.context["slice_index"] == 4


def test_series_parameter_switches_the_viewer_to_that_series(client, clinician):
    study = StudyFactory(uploaded_by=clinician)
    series_with_slices(study, n=3, series_number=1)
    second = series_with_slices(study, n=2, series_number=2)
    client.force_login(clinician)

    response = client.get(reverse("cases:study_detail", args=[study.pk]), {"series": second.pk})

    assert response.context["current_series"] == second
    assert response.context["slice_ids"] == list(
        second.slices.order_by("index").values_list("pk", flat=True)
    )


def test_study_without_images_renders_without_viewer(client, clinician):
    study = StudyFactory(uploaded_by=clinician)
    client.force_login(clinician)
    response = client.get(reverse("cases:study_detail", args=[study.pk]))
    assert response.status_code == 200
    assert 'id="viewer-image"' not in response.content.decode()


def test_page_shows_label_history_and_reference_state_read_only(client, clinician):
    study = StudyFactory(uploaded_by=clinician)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("IPF-ILD"), comment="first look")
    ExpertLabelFactory(study=study, diagnosis=diagnosis("ASS-ILD"), comment="anti-Jo-1 positive")
    ReferenceCaseFactory(study=study, state=ReferenceCase.State.PROPOSED)
    client.force_login(clinician)

    html = client.get(reverse("cases:study_detail", args=[study.pk])).content.decode()

    assert html.index("ASS-ILD") < html.index("IPF-ILD")  # newest first
    assert "anti-Jo-1 positive" in html and "first look" in html
    assert 'data-state="proposed"' in html
    # Read-only for a clinician: no forms other than the logout button.
    assert html.count("<form") == 1


def test_clinician_gets_404_for_another_clinicians_study_and_its_slices(
    client, clinician, other_clinician
):
    study = StudyFactory(uploaded_by=other_clinician)
    series = series_with_slices(study, n=1)
    client.force_login(clinician)

    assert client.get(reverse("cases:study_detail", args=[study.pk])).status_code == 404
    slice_pk = series.slices.get().pk
    assert client.get(reverse("cases:slice_png", args=[slice_pk])).status_code == 404


def test_clinician_may_open_an_approved_reference_case_but_not_a_proposed_one(
    client, clinician, other_clinician
):
    approved = StudyFactory(uploaded_by=other_clinician)
    approved_slice = series_with_slices(approved, n=1).slices.get()
    ReferenceCaseFactory(study=approved, state=ReferenceCase.State.APPROVED)
    proposed = StudyFactory(uploaded_by=other_clinician)
    ReferenceCaseFactory(study=proposed, state=ReferenceCase.State.PROPOSED)
    client.force_login(clinician)

    assert client.get(reverse("cases:study_detail", args=[approved.pk])).status_code == 200
    assert client.get(reverse("cases:slice_png", args=[approved_slice.pk])).status_code == 200
    assert client.get(reverse("cases:study_detail", args=[proposed.pk])).status_code == 404


def test_expert_sees_any_study(client, other_clinician):
    study = StudyFactory(uploaded_by=other_clinician)
    client.force_login(UserFactory(role="Expert"))
    assert client.get(reverse("cases:study_detail", args=[study.pk])).status_code == 200


def test_slice_png_applies_the_chosen_window(client, clinician):
    slice_ = SliceFactory(series__study__uploaded_by=clinician, pixels=half_air_half_soft_tissue())
    client.force_login(clinician)
    url = reverse("cases:slice_png", args=[slice_.pk])

    lung = png(client.get(url, {"preset": "lung"}))
    mediastinal = png(client.get(url, {"preset": "mediastinal"}))
    custom = png(client.get(url, {"level": "40", "width": "2"}))

    assert lung.shape == (32, 32)
    assert (lung[0, 0], lung[0, 31]) == (60, 236)
    assert (mediastinal[0, 0], mediastinal[0, 31]) == (0, 128)
    assert (custom[0, 0], custom[0, 31]) == (0, 128)


def test_slice_png_default_is_lung_window_and_size_bounds_thumbnails(client, clinician):
    slice_ = SliceFactory(series__study__uploaded_by=clinician, pixels=half_air_half_soft_tissue())
    client.force_login(clinician)
    url = reverse("cases:slice_png", args=[slice_.pk])
    response = client.get(url)
    assert png(response)[0, 0] == 60
    assert "private" in response["Cache-Control"]
    assert png(client.get(url, {"size": "16"})).shape == (16, 16)


def test_slice_png_shows_prewindowed_images_as_stored(client, clinician):
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    buf = io.BytesIO()
    np.save(buf, grey, allow_pickle=False)
    slice_ = SliceFactory(
        series__study__uploaded_by=clinician,
        is_windowed=True,
        pixels=ContentFile(buf.getvalue(), name="slice.npy"),
    )
    client.force_login(clinician)
    pixels = png(client.get(reverse("cases:slice_png", args=[slice_.pk]), {"preset": "lung"}))
    assert np.array_equal(pixels, grey)


@pytest.mark.parametrize("params", [{"preset": "bone"}, {"width": "-5", "level": "0"}])
def test_slice_png_rejects_bad_window_parameters(client, clinician, params):
    slice_ = SliceFactory(series__study__uploaded_by=clinician)
    client.force_login(clinician)
    response = client.get(reverse("cases:slice_png", args=[slice_.pk]), params)
    assert response.status_code == 400


def test_expert_sees_label_and_propose_forms_but_clinician_does_not(client, clinician):
    study = StudyFactory(uploaded_by=clinician)
    client.force_login(UserFactory(role="Expert"))
    page = client.get(reverse("cases:study_detail", args=[study.pk])).content.decode()
    assert reverse("review:label_set", args=[study.pk]) in page
    client.force_login(clinician)
    page = client.get(reverse("cases:study_detail", args=[study.pk])).content.decode()
    assert reverse("review:label_set", args=[study.pk]) not in page
