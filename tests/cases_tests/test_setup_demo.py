"""`setup_demo`: demo accounts and, on an empty install, the demo library: the real public
series when the data is present, synthetic phantoms otherwise or on request."""

from __future__ import annotations

import csv
import shutil

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

from cases.models import Diagnosis, ReferenceCase, Study
from tests.conftest import REAL_DATA, real_data_or_skip
from tests.factories import ReferenceCaseFactory

pytestmark = pytest.mark.django_db

SMALL = {"patients_per_class": 1, "slices": 2, "size": 48}
PHANTOM_CLASSES = {"Normal", "Ground-glass", "Reticulation/honeycombing", "Consolidation"}


@pytest.fixture(autouse=True)
def _no_real_data_unless_asked(settings, tmp_path, monkeypatch):
    """Tests see no real data (an empty folder) and no library choice unless they set one."""
    settings.ILDREVIEW_REAL_DATA = tmp_path / "no-real-data"
    monkeypatch.delenv("ILDREVIEW_DEMO_LIBRARY", raising=False)


def _real_subset(root, per_series: int = 3):
    """A small copy of the real datasets in `root`: 4 COVID-CT-MD series (one of them, P002,
    with the invalid UIDs that need repair) and one Lung-PET-CT-Dx series, `per_series` files
    each, with their manifests in the datasets' own format."""
    real_data_or_skip(REAL_DATA / "covid-ct-md")
    real_data_or_skip(REAL_DATA / "lung-pet-ct-dx")
    picks = {
        "covid-ct-md": [
            ("P001", "COVID-19", "P001"),
            ("P002", "COVID-19", "P002"),
            ("cap001", "CAP", "cap001"),
            ("normal001", "Normal", "normal001"),
        ],
        "lung-pet-ct-dx": [("A0002/series-3-B40f", "Adenocarcinoma", "Lung_Dx-A0002")],
    }
    for dataset, rows in picks.items():
        for rel, _, _ in rows:
            files = sorted((REAL_DATA / dataset / rel).glob("*.dcm"))
            middle = len(files) // 2
            (root / dataset / rel).mkdir(parents=True)
            for f in files[middle : middle + per_series]:
                shutil.copy(f, root / dataset / rel / f.name)
        with open(root / dataset / "manifest.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", "label", "patient_id"])
            writer.writerows(rows)
    return root


def _user(name):
    return get_user_model().objects.get(username=name)


def test_setup_demo_creates_accounts_and_imports_the_demo_library(
    settings, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("DEMO_PASSWORD", raising=False)
    settings.VAR_DIR = tmp_path / "var"
    call_command("setup_demo", verbosity=0, **SMALL)
    out = capsys.readouterr().out
    for name in ("admin", "clinician", "expert1", "expert2"):
        assert name in out
        assert _user(name).check_password("ildreview-demo")
    assert "ildreview-demo" in out
    admin = _user("admin")
    assert admin.is_superuser and admin.is_staff
    assert set(admin.groups.values_list("name", flat=True)) == {"Admin"}
    assert set(_user("clinician").groups.values_list("name", flat=True)) == {"Clinician"}
    assert set(_user("expert2").groups.values_list("name", flat=True)) == {"Expert"}
    assert not _user("clinician").is_staff

    refs = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
    assert refs.count() == 4
    assert set(refs.values_list("diagnosis__name", flat=True)) == PHANTOM_CLASSES
    assert set(refs.values_list("approved_by__username", flat=True)) == {"admin"}
    assert (tmp_path / "var" / "demo" / "manifest.csv").exists()
    for study in Study.objects.all():
        assert study.series.get().slice_count == 2


def test_setup_demo_is_idempotent_and_keeps_changed_passwords(
    settings, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("DEMO_PASSWORD", "another-demo-pw")
    settings.VAR_DIR = tmp_path / "var"
    call_command("setup_demo", verbosity=0, **SMALL)
    assert _user("expert1").check_password("another-demo-pw")
    expert = _user("expert1")
    expert.set_password("changed-by-user-1")
    expert.save()
    studies = Study.objects.count()
    capsys.readouterr()
    call_command("setup_demo", verbosity=0, **SMALL)
    out = capsys.readouterr().out
    assert "password unchanged" in out and "nothing to seed" in out
    assert _user("expert1").check_password("changed-by-user-1")
    assert get_user_model().objects.filter(username__in=["admin", "expert1"]).count() == 2
    assert Study.objects.count() == studies


def test_setup_demo_does_not_seed_a_library_that_already_has_approved_cases(settings, tmp_path):
    settings.VAR_DIR = tmp_path / "var"
    ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    call_command("setup_demo", verbosity=0, **SMALL)
    assert not (tmp_path / "var" / "demo").exists()
    assert ReferenceCase.objects.count() == 1


def test_setup_demo_builds_the_real_library_through_the_dicom_import_when_the_data_is_present(
    settings, tmp_path, capsys
):
    settings.ILDREVIEW_REAL_DATA = _real_subset(tmp_path / "real")
    settings.VAR_DIR = tmp_path / "var"
    call_command("setup_demo", verbosity=0, **SMALL)
    out = capsys.readouterr().out
    assert "real chest CT" in out and "covid-ct-md/P002: COVID-19 (UIDs repaired" in out

    refs = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
    assert refs.count() == 5
    assert sorted(refs.values_list("diagnosis__name", flat=True)) == [
        "Adenocarcinoma",
        "CAP",
        "COVID-19",
        "COVID-19",
        "Normal",
    ]
    assert set(refs.values_list("approved_by__username", flat=True)) == {"admin"}
    assert Diagnosis.objects.get(code="cap").description == "Community-acquired pneumonia"
    assert not (tmp_path / "var" / "demo").exists()  # no phantoms written
    for study in Study.objects.all():
        assert study.source == Study.Source.REFERENCE_IMPORT
        series = study.series.get()
        assert series.slice_count == 3 and series.rows == 512
        # De-identified like any upload: keyed pseudonyms, never the source identifiers.
        assert study.patient.pseudonym not in {"P001", "P002", "cap001", "normal001"}
        assert not study.study_instance_uid.startswith("1.3.12.2.1107.5.1.4")
    # The JPEG-Lossless slices were decoded to Hounsfield units (air about -1000).
    from retrieval.pipeline.runtime import slice_pixels_load

    study = refs.get(diagnosis__code="cap").study
    px = slice_pixels_load(slice_obj=study.series.get().slices.first())
    assert not px.is_windowed and px.pixels.min() <= -900 and px.pixels.max() >= 0


def test_setup_demo_seeds_phantoms_when_the_real_data_folder_is_empty(settings, tmp_path):
    (tmp_path / "empty").mkdir()
    settings.ILDREVIEW_REAL_DATA = tmp_path / "empty"
    settings.VAR_DIR = tmp_path / "var"
    call_command("setup_demo", verbosity=0, **SMALL)
    refs = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
    assert set(refs.values_list("diagnosis__name", flat=True)) == PHANTOM_CLASSES


def test_setup_demo_seeds_phantoms_on_request_even_when_real_data_is_present(
    settings, tmp_path, monkeypatch
):
    settings.ILDREVIEW_REAL_DATA = _real_subset(tmp_path / "real", per_series=1)
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setenv("ILDREVIEW_DEMO_LIBRARY", "phantoms")
    call_command("setup_demo", verbosity=0, **SMALL)
    refs = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
    assert set(refs.values_list("diagnosis__name", flat=True)) == PHANTOM_CLASSES


def test_setup_demo_refuses_a_real_library_without_the_data_and_seeds_nothing(
    settings, tmp_path, monkeypatch
):
    settings.VAR_DIR = tmp_path / "var"
    monkeypatch.setenv("ILDREVIEW_DEMO_LIBRARY", "real")
    with pytest.raises(CommandError, match="covid-ct-md"):
        call_command("setup_demo", verbosity=0, **SMALL)
    assert not ReferenceCase.objects.exists() and not Study.objects.exists()
    monkeypatch.setenv("ILDREVIEW_DEMO_LIBRARY", "cartoons")
    with pytest.raises(CommandError, match="unknown demo library"):
        call_command("setup_demo", verbosity=0, **SMALL)
