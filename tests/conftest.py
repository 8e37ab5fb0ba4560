"""Test-wide settings overrides and shared fixtures (the one place for test overrides)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.factories import UserFactory

REAL_DATA = Path(
    os.environ.get(
        "ILDREVIEW_REAL_DATA", Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
    )
)
LUNG_PET_CT_DX = REAL_DATA / "lung-pet-ct-dx"
COVID_CT = REAL_DATA / "covid-ct"


def real_data_or_skip(path: Path) -> Path:
    """Return `path`, or skip the calling test with the reason when the data is absent."""
    if not path.exists():
        pytest.skip(f"real dataset not present at {path} (set ILDREVIEW_REAL_DATA)")
    return path


@pytest.fixture(autouse=True)
def _test_settings(settings, tmp_path_factory):
    """Isolated media folder, fast hashing, eager Celery."""
    settings.MEDIA_ROOT = str(tmp_path_factory.mktemp("media"))
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.CELERY_TASK_ALWAYS_EAGER = True
    settings.SECURE_SSL_REDIRECT = False
    from ildreview.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True


# Users of each role, shared by the tests. Fixed user names, so that a page may be checked for
# the name of who is logged in.
@pytest.fixture
def clinician(db):
    return UserFactory(username="alice", role="Clinician")


@pytest.fixture
def other_clinician(db):
    """A second clinician, who must not see the first one's studies."""
    return UserFactory(username="bob", role="Clinician")


@pytest.fixture
def expert(db):
    return UserFactory(username="erin", role="Expert")


@pytest.fixture
def second_expert(db):
    """A second expert: approval needs an expert other than the proposer."""
    return UserFactory(username="evan", role="Expert")


@pytest.fixture
def admin_user(db):
    """An Admin-group superuser (replaces pytest-django's plain superuser of that name)."""
    return UserFactory(username="root", role="Admin")


@pytest.fixture
def lung_pet_ct_dx() -> Path:
    return real_data_or_skip(LUNG_PET_CT_DX)


@pytest.fixture
def covid_ct() -> Path:
    return real_data_or_skip(COVID_CT)
