"""`setup_demo`: demo accounts and, on an empty install, the synthetic demo library."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from cases.models import ReferenceCase, Study
from tests.factories import ReferenceCaseFactory

pytestmark = pytest.mark.django_db

SMALL = {"patients_per_class": 1, "slices": 2, "size": 48}


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
    assert set(refs.values_list("diagnosis__name", flat=True)) == {
        "Normal",
        "Ground-glass",
        "Reticulation/honeycombing",
        "Consolidation",
    }
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
