import pytest
from django.contrib.auth.models import Group

from cases.models import Diagnosis


@pytest.mark.django_db
def test_migration_seeds_the_diagnosis_taxonomy():
    names = set(Diagnosis.objects.values_list("name", flat=True))
    assert {"ASS-ILD", "IPF-ILD", "DM/RP-ILD (anti-MDA5)", "Normal", "Other"} <= names


@pytest.mark.django_db
def test_migration_creates_role_groups_with_permissions():
    groups = {g.name: g for g in Group.objects.all()}
    assert {"Clinician", "Expert", "Admin"} <= set(groups)
    expert_perms = set(groups["Expert"].permissions.values_list("codename", flat=True))
    assert "add_expertlabel" in expert_perms
    clinician_perms = set(groups["Clinician"].permissions.values_list("codename", flat=True))
    assert "add_expertlabel" not in clinician_perms
