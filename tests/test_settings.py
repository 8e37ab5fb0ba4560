"""Settings behave as documented in .env.example (checked in fresh interpreter processes)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    # DJANGO_ALLOW_ASYNC_UNSAFE is set by the browser tests for Playwright; a deployment never
    # has it (and check --deploy rightly flags it).
    dropped = {"DEBUG", "SECRET_KEY", "DJANGO_ALLOW_ASYNC_UNSAFE", "ILDREVIEW_PSEUDONYM_KEY"}
    full_env = {k: v for k, v in os.environ.items() if k not in dropped}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_with_production_like_settings():
    proc = _manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="false",
        SECRET_KEY="x" * 20 + "production-like-secret-key-with-enough-entropy-0123456789",
        ALLOWED_HOSTS="ildreview.example.org",
        ILDREVIEW_PSEUDONYM_KEY="a-production-pseudonym-key-of-enough-length-0123456789",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


def test_secret_key_is_required_when_debug_is_off():
    proc = _manage("check", DEBUG="false", ALLOWED_HOSTS="ildreview.example.org")
    assert proc.returncode != 0
    assert "SECRET_KEY must be set" in proc.stderr


def test_check_deploy_fails_without_a_pseudonym_key():
    proc = _manage(
        "check",
        "--deploy",
        DEBUG="false",
        SECRET_KEY="x" * 20 + "production-like-secret-key-with-enough-entropy-0123456789",
        ALLOWED_HOSTS="ildreview.example.org",
    )
    assert proc.returncode != 0
    assert "cases.E001" in proc.stderr and "ILDREVIEW_PSEUDONYM_KEY" in proc.stderr
