"""The `check --deploy` system check on ILDREVIEW_PSEUDONYM_KEY (cases/checks.py)."""

from __future__ import annotations

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

GOOD_KEY = "k3y-of-a-production-deployment-0123456789abcdef"


def pseudonym_errors() -> list[str]:
    found = checks.run_checks(tags=[checks.Tags.security], include_deployment_checks=True)
    return [m.id for m in found if m.id == "cases.E001"]


@pytest.mark.parametrize(
    ("debug", "key", "expected"),
    [
        (False, None, ["cases.E001"]),  # the development default
        (False, "", ["cases.E001"]),
        (False, "short-key", ["cases.E001"]),
        (False, GOOD_KEY, []),
        (True, None, []),  # development: the default key is fine
    ],
    ids=["default", "empty", "short", "own key", "debug"],
)
def test_pseudonym_key_check(settings, debug, key, expected):
    settings.DEBUG = debug
    if key is not None:
        settings.ILDREVIEW_PSEUDONYM_KEY = key
    else:
        settings.ILDREVIEW_PSEUDONYM_KEY = settings.ILDREVIEW_PSEUDONYM_DEV_KEY
    assert pseudonym_errors() == expected


def test_check_deploy_command_fails_on_the_default_key(settings):
    settings.DEBUG = False
    settings.ILDREVIEW_PSEUDONYM_KEY = settings.ILDREVIEW_PSEUDONYM_DEV_KEY
    with pytest.raises(SystemCheckError, match="ILDREVIEW_PSEUDONYM_KEY"):
        call_command("check", "--deploy", "--tag", "security")


def test_check_is_only_a_deploy_check(settings):
    settings.DEBUG = False
    settings.ILDREVIEW_PSEUDONYM_KEY = ""
    plain = checks.run_checks(tags=[checks.Tags.security])
    assert "cases.E001" not in [m.id for m in plain]
