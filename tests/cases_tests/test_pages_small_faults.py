"""Smaller faults of issue 9 item 10, the friendly error pages (with DEBUG off, as the tests
run), and the DICOM header values behind the quality warnings filled at import."""

from __future__ import annotations

import re

import pydicom
import pytest
from django.conf import settings
from django.urls import reverse
from pydicom.dataset import Dataset

from cases.dicom.quality_tags import body_part_examined, contrast_enhanced
from cases.models import Series, Study
from cases.services.ingestion import study_import_paths
from tests.dicomgen import ct_series_write
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


def test_tests_run_with_debug_off():
    assert settings.DEBUG is False


def test_another_users_study_is_a_friendly_404(client, clinician, other_clinician):
    study = StudyFactory(uploaded_by=other_clinician)
    client.force_login(clinician)
    for name in ("cases:study_detail", "cases:study_review"):
        response = client.get(reverse(name, args=[study.pk]))
        assert response.status_code == 404
        html = response.content.decode()
        assert "<h1>Not found</h1>" in html and 'href="/"' in html
        assert "Traceback" not in html and "URLconf" not in html
        assert 'class="topbar"' in html  # the app's own page, with its navigation


def test_a_clinician_on_the_approvals_page_gets_a_friendly_403(client, clinician):
    client.force_login(clinician)
    response = client.get(reverse("review:approvals"))
    assert response.status_code == 403
    html = response.content.decode()
    assert "<h1>Not allowed</h1>" in html and "Traceback" not in html


def test_study_page_has_no_repeated_headings(client, expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    ExpertLabelFactory(study=study)
    ReferenceCaseFactory(study=study, proposed_by=UserFactory(role="Expert"))
    client.force_login(expert)
    html = client.get(reverse("cases:study_detail", args=[study.pk])).content.decode()
    headings = [
        re.sub(r"<[^>]+>", "", h).strip()
        for h in re.findall(r"<h[1-3][^>]*>(.*?)</h[1-3]>", html, re.S)
    ]
    assert len(headings) == len(set(headings)), headings


def test_library_cases_show_no_empty_progress(client, clinician):
    study = StudyFactory(source=Study.Source.REFERENCE_IMPORT, status=Study.Status.REVIEWED)
    client.force_login(clinician)
    html = client.get(reverse("cases:study_detail", args=[study.pk])).content.decode()
    assert "Progress" not in html and "0%" not in html


def test_no_article_before_diagnosis_names(client, expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("Other"))
    client.force_login(expert)
    html = client.get(reverse("cases:study_review", args=[study.pk])).content.decode()
    assert "Propose as a reference case of Other" in html
    response = client.post(reverse("review:propose", args=[study.pk]), follow=True)
    text = response.content.decode()
    assert "a Other" not in text and "reference case of Other" in text


def test_a_wrong_password_is_reported_once(client):
    UserFactory(username="bob", role="Clinician")
    response = client.post(reverse("login"), {"username": "bob", "password": "wrong-pw"})
    html = response.content.decode()
    assert html.count("Wrong username or password") == 1


def test_long_diagnosis_names_are_not_truncated_in_the_worklist(client, expert):
    study = StudyFactory()
    ExpertLabelFactory(study=study, diagnosis=diagnosis("DM/RP-ILD (anti-MDA5)"))
    client.force_login(expert)
    html = client.get(reverse("cases:worklist")).content.decode()
    assert ">DM/RP-ILD (anti-MDA5)</td>" in html


# --- header values of the quality warnings ----------------------------------------------------


def test_body_part_and_contrast_are_read_from_the_header():
    ds = Dataset()
    assert (body_part_examined(ds), contrast_enhanced(ds)) == ("", None)
    ds.BodyPartExamined = "chest"
    ds.ContrastBolusAgent = "Omnipaque 350"
    assert (body_part_examined(ds), contrast_enhanced(ds)) == ("CHEST", True)
    ds.ContrastBolusAgent = "NONE"
    assert contrast_enhanced(ds) is False
    del ds.ContrastBolusAgent
    ds.ContrastBolusVolume = "80"
    assert contrast_enhanced(ds) is True
    ds.BodyPartExamined = "ABD<script>"
    assert body_part_examined(ds) == "ABDSCRIPT"


def test_import_stores_body_part_and_contrast_of_each_series(tmp_path):
    user = UserFactory(role="Clinician")
    plain = ct_series_write(folder=tmp_path / "plain", slices=3, seed=1)
    enhanced = ct_series_write(
        folder=tmp_path / "enhanced", slices=3, seed=2, series_number=2, study_uid=plain.study_uid
    )
    for path in plain.paths:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = "CHEST"
        ds.save_as(path)
    for path in enhanced.paths:
        ds = pydicom.dcmread(path)
        ds.ContrastBolusAgent = "Iomeron 400"
        ds.BodyPartExamined = "ABDOMEN"
        ds.save_as(path)
    study_import_paths(paths=[tmp_path], uploader=user)
    rows = {s.series_number: s for s in Series.objects.all()}
    assert (rows[1].body_part, rows[1].contrast_enhanced) == ("CHEST", None)
    assert (rows[2].body_part, rows[2].contrast_enhanced) == ("ABDOMEN", True)
