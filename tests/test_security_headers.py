"""Headers, sessions and error pages: a strict Content-Security-Policy everywhere, nothing but
static files kept in a cache, idle sessions ending, and friendly pages instead of debug pages."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone
from django.views.defaults import server_error

from tests.factories import SliceFactory, UserFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clinician():
    return UserFactory(username="carla", role="Clinician")


@pytest.fixture
def slice_(clinician):
    return SliceFactory(series__study__uploaded_by=clinician)


@pytest.fixture
def carla(client, clinician):
    client.force_login(clinician)
    return client


def csp_directives(response) -> dict[str, set[str]]:
    header = response["Content-Security-Policy"]
    return {
        name: set(values)
        for name, *values in (part.split() for part in header.split(";") if part.strip())
    }


def test_pages_send_a_strict_content_security_policy(carla):
    csp = csp_directives(carla.get(reverse("cases:worklist")))
    assert csp["default-src"] == {"'self'"}
    assert csp["script-src"] == {"'self'"}
    assert csp["style-src"] == {"'self'"}
    assert csp["object-src"] == {"'none'"}
    assert csp["frame-ancestors"] == {"'none'"}


def test_api_docs_relax_styles_only_and_load_no_inline_script(carla):
    response = carla.get(reverse("api-docs"))
    assert response.status_code == 200
    csp = csp_directives(response)
    assert csp["script-src"] == {"'self'"}
    assert "'unsafe-inline'" in csp["style-src"]
    scripts = re.findall(r"<script([^>]*)>", response.content.decode())
    assert scripts and all("src=" in attributes for attributes in scripts)
    script = carla.get(reverse("api-docs") + "?script=")
    assert script.status_code == 200
    assert script["Content-Type"].startswith("application/javascript")


INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\sstyle=|<style|\son[a-z]+=", re.IGNORECASE)


def test_templates_have_no_inline_script_style_or_event_handler():
    offenders = [
        f"{path.relative_to(ROOT)}: {match.group(0).strip()}"
        for path in (ROOT / "templates").rglob("*.html")
        for match in INLINE.finditer(path.read_text())
    ]
    assert offenders == []


def _patient_data_urls(slice_) -> list[str]:
    study = slice_.series.study
    return [
        reverse("cases:worklist"),
        reverse("cases:study_detail", args=[study.pk]),
        reverse("cases:study_review", args=[study.pk]),
        reverse("cases:slice_png", args=[slice_.pk]),
        reverse("api-study-list"),
        reverse("api-study-detail", args=[study.pk]),
        reverse("api-file-slice-npy", args=[slice_.pk]),
    ]


def test_patient_data_is_never_stored_in_a_cache(carla, slice_):
    for url in _patient_data_urls(slice_):
        response = carla.get(url)
        assert response.status_code == 200, url
        assert "no-store" in response["Cache-Control"], url
        assert response["Pragma"] == "no-cache", url
        assert "Content-Security-Policy" in response, url


def test_error_and_login_responses_are_not_cached_either(carla):
    for response in (carla.get("/no-such-page/"), Client().get(reverse("login"))):
        assert "no-store" in response["Cache-Control"]


@override_settings(WHITENOISE_USE_FINDERS=True)
def test_static_files_may_be_cached():
    response = Client().get("/static/ildreview.css")
    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")
    assert "Pragma" not in response


def test_sessions_expire_after_eight_idle_hours_by_default(settings):
    assert settings.SESSION_COOKIE_AGE == 8 * 3600
    assert settings.SESSION_SAVE_EVERY_REQUEST is True


def test_each_request_renews_the_session_and_an_idle_one_ends(carla):
    url = reverse("cases:worklist")
    response = carla.get(url)
    assert response.cookies["sessionid"]["max-age"] == 8 * 3600
    session = Session.objects.get()
    # Seven hours pass: the next request moves the expiry 8 h past it again.
    session.expire_date = timezone.now() + datetime.timedelta(hours=1)
    session.save()
    assert carla.get(url).status_code == 200
    renewed = Session.objects.get().expire_date - timezone.now()
    assert renewed > datetime.timedelta(hours=7, minutes=59)
    # Eight idle hours pass: the session has ended.
    Session.objects.update(expire_date=timezone.now() - datetime.timedelta(seconds=1))
    response = carla.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_idle_hours_come_from_the_environment():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update(SESSION_IDLE_HOURS="1.5", DJANGO_SETTINGS_MODULE="ildreview.settings")
    code = "import django; django.setup(); from django.conf import settings as s; "
    code += "print(s.SESSION_COOKIE_AGE)"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip().splitlines()[-1] == "5400", proc.stderr


DEBUG_MARKERS = ("Traceback", "URLconf", "Django tried these URL patterns", "DEBUG = True")


def _friendly(response, title: str) -> str:
    html = response.content.decode()
    assert title in html
    assert 'class="topbar"' in html  # the site's own layout
    assert not any(marker in html for marker in DEBUG_MARKERS)
    return html


@override_settings(DEBUG=False)
def test_missing_page_is_a_friendly_404(carla):
    response = carla.get("/studies/999999/")
    assert response.status_code == 404
    assert "404.html" in [t.name for t in response.templates]
    html = _friendly(response, "Not found")
    assert "carla" in html  # the layout knows who is logged in


@override_settings(DEBUG=False)
def test_forbidden_page_is_a_friendly_403(carla):
    response = carla.get(reverse("review:approvals"))
    assert response.status_code == 403
    assert "403.html" in [t.name for t in response.templates]
    _friendly(response, "Not allowed")


@override_settings(DEBUG=False)
def test_bad_host_is_a_friendly_400(carla):
    response = carla.get(reverse("cases:worklist"), HTTP_HOST="evil.example")
    assert response.status_code == 400
    _friendly(response, "Bad request")


@override_settings(DEBUG=False)
def test_expired_form_is_a_friendly_403(clinician):
    client = Client(enforce_csrf_checks=True)
    client.force_login(clinician)
    response = client.post(reverse("logout"))
    assert response.status_code == 403
    _friendly(response, "Form expired")


@override_settings(DEBUG=False)
def test_server_error_page_needs_neither_context_nor_database(rf, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = server_error(rf.get("/"))
    assert response.status_code == 500
    _friendly(response, "Something went wrong")
