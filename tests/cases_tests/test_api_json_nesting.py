"""JSON bodies nested deeper than ILDREVIEW_MAX_JSON_DEPTH are refused with 400 on every
endpoint that accepts JSON (the anonymous token endpoint included), before the decoder recurses;
ordinary bodies still work."""

from __future__ import annotations

import json

import pytest
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from cases.api.parsers import json_nesting_depth_exceeds
from cases.models import ExpertLabel, Study
from tests.factories import ReferenceCaseFactory, StudyFactory, UserFactory

DEEP = 100_000
HOSTILE_BODIES = {
    "arrays": "[" * DEEP + "]" * DEEP,
    "objects": '{"a":' * DEEP + "1" + "}" * DEEP,
    "unclosed arrays": "[" * DEEP,
    "unclosed objects": '{"a":' * DEEP,
}


def json_operations() -> list[tuple[str, str]]:
    """(method, path template) of every operation whose schema accepts a JSON body."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                found.append((method.upper(), path))
    return sorted(found)


def test_the_json_operations_are_found():
    # Guards against a walk that silently finds nothing.
    ops = json_operations()
    assert ("POST", "/api/auth/token/") in ops
    assert ("POST", "/api/studies/{id}/labels/") in ops
    assert ("POST", "/api/reference-cases/{id}/approve/") in ops
    assert len(ops) >= 5


@pytest.fixture
def objects(db):
    """An expert with a token, a study and a reference case the id-based paths can name."""
    expert = UserFactory(role="Expert")
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    reference = ReferenceCaseFactory(study=study)
    return {"token": Token.objects.create(user=expert).key, "study": study, "ref": reference}


def client_for(path: str, objects) -> tuple[APIClient, str]:
    client = APIClient()
    if path != "/api/auth/token/":
        client.credentials(HTTP_AUTHORIZATION=f"Token {objects['token']}")
    pk = objects["ref"].pk if path.startswith("/api/reference-cases/") else objects["study"].pk
    return client, path.replace("{id}", str(pk))


@pytest.mark.parametrize("kind", HOSTILE_BODIES)
@pytest.mark.parametrize(("method", "path"), json_operations())
def test_deeply_nested_json_is_refused_with_400(objects, method, path, kind):
    client, url = client_for(path, objects)
    response = client.generic(method, url, HOSTILE_BODIES[kind], content_type="application/json")
    assert response.status_code == 400, response.content[:300]
    assert response.json() == {"detail": "JSON parse error - nested deeper than 64 levels."}


def test_nesting_up_to_the_limit_reaches_the_serializer(objects):
    client, url = client_for("/api/studies/{id}/labels/", objects)
    at_limit = {"diagnosis": "normal", "comment": json.loads("[" * 63 + "]" * 63)}
    response = client.post(url, at_limit, format="json")
    # Parsed fine; the serializer refuses a list as comment.
    assert response.status_code == 400
    assert "comment" in response.json()


def test_ordinary_json_bodies_still_work(objects, settings):
    client, url = client_for("/api/studies/{id}/labels/", objects)
    response = client.post(url, {"diagnosis": "normal", "comment": "[{not json}]"}, format="json")
    assert response.status_code == 201, response.content
    assert ExpertLabel.objects.get(study=objects["study"]).comment == "[{not json}]"

    UserFactory(username="token-user")
    anonymous = APIClient()
    token = anonymous.post(
        "/api/auth/token/",
        {"username": "token-user", "password": "pw-for-tests-123"},
        format="json",
    )
    assert token.status_code == 200 and len(token.json()["token"]) == 40


def test_the_limit_is_a_setting(objects, settings):
    settings.ILDREVIEW_MAX_JSON_DEPTH = 3
    client, url = client_for("/api/studies/{id}/labels/", objects)
    body = '{"diagnosis": "normal", "comment": [[[]]]}'
    response = client.post(url, body, content_type="application/json")
    assert response.json() == {"detail": "JSON parse error - nested deeper than 3 levels."}


def test_non_utf8_json_is_a_parse_error_not_a_500(objects):
    client, url = client_for("/api/studies/{id}/labels/", objects)
    response = client.post(url, b'{"diagnosis": "\xff"}', content_type="application/json")
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


@pytest.mark.parametrize(
    ("text", "limit", "exceeds"),
    [
        ("[[1]]", 2, False),
        ("[[[1]]]", 2, True),
        ('{"a": {"b": 1}}', 2, False),
        ('{"a": {"b": {"c": 1}}}', 2, True),
        # Brackets inside strings, escaped quotes included, are not nesting.
        ('["[[[[", "{{{{"]', 1, False),
        ('["\\"[[[[", "\\\\"]', 1, False),
        ('["\\\\", [[1]]]', 2, True),
        # Stray closing brackets do not hide later nesting.
        ("]]]]]][[[1]]]", 2, True),
        # An unterminated string hides nothing after it from the decoder's error.
        ('["abc [[[[', 1, False),
        ("", 1, False),
    ],
)
def test_depth_scan(text, limit, exceeds):
    assert json_nesting_depth_exceeds(text, limit=limit) is exceeds


def test_depth_scan_is_linear_on_a_huge_flat_body():
    # 2 MB of strings and numbers in one flat array: one pass, no recursion.
    text = json.dumps(["x" * 100, 1.5] * 10_000)
    assert json_nesting_depth_exceeds(text, limit=1) is False
