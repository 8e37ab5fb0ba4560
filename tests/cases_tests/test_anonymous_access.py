"""An anonymous request to every URL of the project gets no data.

The URLs are not listed by hand: the test walks the project's resolver, so URLs that are added
later (REST API, retrieval pages, ...) are covered automatically. Path parameters are filled
with the primary key that one object of every model shares (or an existing media file), so an
unprotected view would find data to leak.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
from django.conf import settings
from django.http import HttpResponse
from django.urls import URLPattern, URLResolver, get_resolver, include, path, resolve, reverse
from django.urls.exceptions import Resolver404
from django.utils.regex_helper import normalize

from cases.models import (
    AuditEvent,
    Diagnosis,
    ExpertLabel,
    Patient,
    ReferenceCase,
    Series,
    Slice,
    Study,
)
from retrieval.models import (
    ModelVersion,
    ReferenceEmbedding,
    SimilarCase,
    SliceFeatures,
    StudyJob,
    StudyResult,
    TrainingRun,
)
from tests.factories import (
    ExpertLabelFactory,
    PatientFactory,
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    StudyFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

# The primary key every object below gets: far above what sequences reach in a test run.
PK = 424242

# URL names that may answer an anonymous GET with 200: the login pages themselves and healthz.
PUBLIC_PAGES = {"login", "admin:login", "healthz"}
# Login endpoints an anonymous client must be able to POST credentials to.
LOGIN_ENDPOINTS = {"login", "admin:login", "api-token"}

MODELS = [
    Patient,
    Study,
    Series,
    Slice,
    Diagnosis,
    ExpertLabel,
    ReferenceCase,
    AuditEvent,
    ModelVersion,
    SliceFeatures,
    ReferenceEmbedding,
    StudyJob,
    StudyResult,
    SimilarCase,
    TrainingRun,
]


@dataclass(frozen=True)
class Endpoint:
    """One concrete URL built from a leaf URL pattern."""

    url: str
    name: str  # "namespace:name", or the route when the pattern is unnamed


@pytest.fixture
def data() -> str:
    """One object of every model with pk PK, all linked together; returns the relative media
    path of the slice's pixels (for `<path:...>` parameters)."""
    user = UserFactory(id=PK, username="owner", role="Clinician")
    patient = PatientFactory(id=PK)
    study = StudyFactory(
        id=PK, patient=patient, uploaded_by=user, status=Study.Status.READY_FOR_REVIEW
    )
    series = SeriesFactory(id=PK, study=study)
    slice_ = SliceFactory(id=PK, series=series, index=0)
    ExpertLabelFactory(id=PK, study=study)
    reference = ReferenceCaseFactory(id=PK, study=study, state=ReferenceCase.State.APPROVED)
    Diagnosis.objects.create(id=PK, code="test-dx", name="Test diagnosis")
    AuditEvent.objects.create(id=PK, actor=user, verb="test.event")
    version = ModelVersion.objects.create(id=PK, name="v-test", artefact_dir="x", backbone="b")
    SliceFeatures.objects.create(id=PK, slice=slice_, model_version=version, lung_fraction=0.5)
    ReferenceEmbedding.objects.create(
        id=PK,
        model_version=version,
        reference_case=reference,
        slice=slice_,
        vector=b"\0" * 16,
        lung_fraction=0.5,
    )
    StudyJob.objects.create(id=PK, study=study, run_id="run")
    result = StudyResult.objects.create(id=PK, study=study, model_version=version)
    SimilarCase.objects.create(
        id=PK,
        result=result,
        rank=1,
        reference_case=reference,
        score=0.9,
        query_slice=slice_,
        reference_slice=slice_,
    )
    TrainingRun.objects.create(id=PK, created_by=user)
    return slice_.pixels.name


def _leaves(patterns, regex: str = "", namespace: str = "") -> Iterator[tuple[str, str, object]]:
    """(full regex, name, callback) of every leaf pattern, recursively through includes."""
    for pattern in patterns:
        part = pattern.pattern.regex.pattern.lstrip("^")
        if isinstance(pattern, URLResolver):
            ns = namespace
            if pattern.namespace:
                ns = f"{namespace}{pattern.namespace}:"
            yield from _leaves(pattern.url_patterns, regex + part, ns)
        elif isinstance(pattern, URLPattern):
            full = regex + part
            name = f"{namespace}{pattern.name}" if pattern.name else full
            yield full, name, pattern.callback


def endpoints(urlconf=None, *, media_path: str) -> list[Endpoint]:
    """A concrete URL for every leaf pattern of `urlconf` (the project's by default), path
    parameters filled with PK (or another value when PK does not resolve to the same view)."""
    found = []
    for regex, name, callback in _leaves(get_resolver(urlconf).url_patterns):
        for template, params in normalize(regex.replace(r"\Z", "$").rstrip("$")):
            url = _fill(template, params, callback, urlconf, media_path)
            assert url is not None, f"cannot build a URL for {name} ({regex})"
            found.append(Endpoint(url=url, name=name))
            break
    return found


def _fill(template, params, callback, urlconf, media_path) -> str | None:
    def choices(param: str) -> list[str]:
        values = [str(PK), "cases", "json", media_path]
        return [media_path, *values] if param in ("path", "url") else values

    for combo in itertools.product(*(choices(p) for p in params)):
        url = "/" + (template % dict(zip(params, combo, strict=True)))
        try:
            match = resolve(url, urlconf)
        except Resolver404:
            continue
        if match.func == callback:
            return url
    return None


def _is_login_redirect(response, login_url: str) -> bool:
    location = urlparse(response.get("Location", ""))
    return response.status_code == 302 and location.path == login_url and "next=" in location.query


def _is_admin_index_redirect(response) -> bool:
    # The admin's logout sends an anonymous visitor to the admin index (itself a login redirect).
    return response.status_code == 302 and response.get("Location") == reverse("admin:index")


def assert_no_data(response, endpoint: Endpoint, method: str) -> None:
    """Pages redirect to the login page, the admin to its own login, the API answers 401/403;
    a method a view does not accept may answer 405 (it returns nothing either)."""
    what = f"anonymous {method} {endpoint.url} ({endpoint.name}) -> {response.status_code}"
    if response.status_code == 405:
        return
    if endpoint.url.startswith("/api/"):
        assert response.status_code in (401, 403), what
    elif endpoint.url.startswith("/admin/"):
        assert _is_login_redirect(response, reverse("admin:login")) or (
            endpoint.name == "admin:logout" and _is_admin_index_redirect(response)
        ), what
    else:
        assert _is_login_redirect(response, reverse(settings.LOGIN_URL)), what


def test_walk_finds_the_pages_api_admin_and_media(data):
    names = {e.name for e in endpoints(media_path=data)}
    for expected in (
        "cases:worklist",
        "cases:upload",
        "cases:study_detail",
        "cases:slice_png",
        "cases:library",
        "api-file-slice-npy",
        "api-file-similar-case-cam",
        "admin:cases_study_change",
        "admin:index",
        "api-schema",
    ):
        assert expected in names
    assert len(names) > 50


def test_anonymous_get_of_every_url_gets_no_data(client, data):
    checked = 0
    for endpoint in endpoints(media_path=data):
        response = client.get(endpoint.url)
        if endpoint.name in PUBLIC_PAGES:
            assert response.status_code == 200, endpoint
            continue
        if endpoint.name in LOGIN_ENDPOINTS:
            assert response.status_code in (401, 403, 405), endpoint
            continue
        assert_no_data(response, endpoint, "GET")
        checked += 1
    assert checked > 50


def test_anonymous_post_to_every_url_changes_nothing(client, data):
    before = {model: model.objects.count() for model in MODELS}
    for endpoint in endpoints(media_path=data):
        if endpoint.name in LOGIN_ENDPOINTS or endpoint.name == "healthz":
            continue
        response = client.post(endpoint.url, {"diagnosis": PK, "comment": "x", "name": "x"})
        assert_no_data(response, endpoint, "POST")
    assert {model: model.objects.count() for model in MODELS} == before
    assert not Study.objects.exclude(id=PK).exists()


def test_static_files_and_healthz_are_public(client, data):
    assert client.get(reverse("healthz")).content == b"ok"
    login = client.get(reverse("login"))
    assert login.status_code == 200 and b'name="password"' in login.content


# A URL configuration with one view added after the fact: the walk must cover it without
# anyone listing it, and the site-wide login requirement must protect it.
def _late_view(request, pk):
    return HttpResponse(f"secret {pk}")


urlpatterns = [
    path("late-addition/<int:pk>/", _late_view, name="late-addition"),
    path("", include("ildreview.urls")),
]


def test_urls_added_later_are_walked_and_protected(client, data, settings):
    settings.ROOT_URLCONF = __name__
    found = {e.name: e for e in endpoints(media_path=data)}
    assert found["late-addition"].url == f"/late-addition/{PK}/"
    assert "cases:worklist" in found
    response = client.get(found["late-addition"].url)
    assert_no_data(response, found["late-addition"], "GET")
    assert b"secret" not in response.content
