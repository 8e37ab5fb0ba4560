"""The OpenAPI 3 schema covers every API endpoint and validates without warnings."""

from __future__ import annotations

import re

import pytest
import yaml
from django.core.management import call_command
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from drf_spectacular.generators import SchemaGenerator
from rest_framework.settings import api_settings
from rest_framework.test import APIClient

from tests.factories import UserFactory

# Endpoints that serve the schema itself, and the JSON 404 of unmatched /api/ URLs.
NOT_OPERATIONS = {"api-schema", "api-docs", "api-not-found"}


def _route(pattern) -> str:
    """An URL pattern's path template in OpenAPI form: `studies/<int:pk>/` -> `studies/{pk}/`."""
    text = str(pattern.pattern)
    if text.startswith("^") or text.endswith("$"):  # regex pattern
        text = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", text.lstrip("^").rstrip("$"))
        return text.replace("\\", "")
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", text)


def api_urls() -> dict[str, str]:
    """Every URL pattern under /api/, walked from the root URL resolver: {path: name}."""
    found: dict[str, str] = {}

    def walk(patterns, prefix: str) -> None:
        for p in patterns:
            if isinstance(p, URLResolver):
                walk(p.url_patterns, prefix + _route(p))
            elif isinstance(p, URLPattern):
                found["/" + prefix + _route(p)] = p.name or ""

    walk(get_resolver().url_patterns, "")
    return {path: name for path, name in found.items() if path.startswith("/api/")}


def test_walk_finds_the_api_endpoints():
    # Guard against a walk that silently finds nothing.
    urls = api_urls()
    assert "/api/studies/{pk}/results/" in urls
    assert len(urls) >= 10


def _as_in_schema(path: str) -> str:
    # The schema names a `pk` path parameter `id` (DRF setting SCHEMA_COERCE_PATH_PK).
    if api_settings.SCHEMA_COERCE_PATH_PK:
        return path.replace("{pk}", "{id}")
    return path


def test_every_api_endpoint_is_in_the_schema():
    schema = SchemaGenerator().get_schema(request=None, public=True)
    missing = [
        path
        for path, name in api_urls().items()
        if name not in NOT_OPERATIONS and _as_in_schema(path) not in schema["paths"]
    ]
    assert missing == []
    # Each endpoint documents at least one operation with a summary.
    for path, name in api_urls().items():
        if name in NOT_OPERATIONS:
            continue
        operations = schema["paths"][_as_in_schema(path)]
        assert all(op.get("summary") or op.get("description") for op in operations.values()), path


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    # --fail-on-warn makes any warning or error raise (non-zero exit).
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")
    assert {"cookieAuth", "tokenAuth"} <= set(schema["components"]["securitySchemes"])


@pytest.mark.django_db
def test_schema_and_docs_are_served_to_logged_in_users_only(client):
    assert APIClient().get(reverse("api-schema")).status_code in (401, 403)
    client.force_login(UserFactory(role="Clinician"))
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    assert _as_in_schema("/api/studies/{pk}/results/") in schema.json()["paths"]
    docs = client.get(reverse("api-docs"))
    assert docs.status_code == 200
    assert b"swagger" in docs.content.lower()
