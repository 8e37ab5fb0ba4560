"""The API answers what its schema says: documented error statuses, checked query parameters
and body types, JSON bodies only (but for the upload and the token), JSON 404s for unmatched
/api/ URLs."""

from __future__ import annotations

import pytest
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from cases.models import ExpertLabel, ReferenceCase, Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def schema_operations() -> dict[tuple[str, str], dict]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {
        (method.upper(), path): operation
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
    }


def test_every_operation_documents_its_error_statuses():
    for (method, path), operation in schema_operations().items():
        codes = set(operation["responses"])
        what = f"{method} {path}: {sorted(codes)}"
        if path == "/api/auth/token/":
            assert {"200", "400", "415", "429"} <= codes, what
            assert "403" not in codes, what
            continue
        assert "403" in codes, what
        if "{" in path:
            assert "404" in codes, what
        if "requestBody" in operation:
            assert {"400", "415"} <= codes, what
        if any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert "400" in codes, what


def test_error_bodies_refer_to_the_shared_error_components():
    refs = set()
    for operation in schema_operations().values():
        for code, response in operation["responses"].items():
            if code.startswith("4"):
                refs.add(response["content"]["application/json"]["schema"]["$ref"])
    assert refs <= {
        "#/components/schemas/Error",
        "#/components/schemas/ValidationError",
        "#/components/schemas/NotReady",
    }
    assert "#/components/schemas/ValidationError" in refs


def test_unmatched_api_urls_answer_json_404_or_403(expert):
    api = token_client(expert)
    for url in ("/api/studies/abc/", "/api/files/slices/-1.npy", "/api/nothing-here"):
        response = api.get(url)
        assert response.status_code == 404, url
        assert response.json() == {"detail": "Not found."}
        assert api.post(url, {}, format="json").status_code == 404
    anonymous = APIClient().get("/api/studies/abc/")
    assert anonymous.status_code == 403
    assert anonymous["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "params",
    [
        {"status": "nonsense"},
        {"status": ""},
        {"page_size": "0"},
        {"page_size": "201"},
        {"page_size": "ten"},
        {"page_size": "-3"},
        {"q": "x" * 201},
        {"q": "a\x00b"},
    ],
)
def test_bad_study_list_parameters_are_400(clinician, params):
    response = token_client(clinician).get(reverse("api-study-list"), params)
    assert response.status_code == 400
    assert set(response.json()) == set(params)


@pytest.mark.parametrize("params", [{"state": "nonsense"}, {"state": ""}, {"page_size": "x"}])
def test_bad_reference_list_parameters_are_400(expert, params):
    response = token_client(expert).get(reverse("api-reference-case-list"), params)
    assert response.status_code == 400
    assert set(response.json()) == set(params)


def test_an_unknown_diagnosis_filter_matches_nothing(expert):
    ExpertLabelFactory(study=StudyFactory(), diagnosis=diagnosis("Normal"))
    ReferenceCaseFactory(diagnosis=diagnosis("Normal"))
    api = token_client(expert)
    for name in ("api-study-list", "api-reference-case-list"):
        assert api.get(reverse(name), {"diagnosis": "normal"}).json()["count"] == 1
        unknown = api.get(reverse(name), {"diagnosis": "no-such-code"})
        assert unknown.status_code == 200
        assert unknown.json()["count"] == 0


def test_page_size_within_bounds_is_used(clinician):
    StudyFactory.create_batch(3, uploaded_by=clinician)
    body = token_client(clinician).get(reverse("api-study-list"), {"page_size": "2"}).json()
    assert (body["count"], len(body["results"])) == (3, 2)


@pytest.mark.parametrize(
    "body",
    [
        {"diagnosis": "normal", "comment": 0},
        {"diagnosis": "normal", "comment": ["x"]},
        {"diagnosis": "normal", "comment": None},
    ],
)
def test_label_comment_must_be_a_string(expert, body):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    response = token_client(expert).post(
        reverse("api-study-labels", args=[study.pk]), body, format="json"
    )
    assert response.status_code == 400
    assert "comment" in response.json()
    assert not ExpertLabel.objects.exists()


@pytest.mark.parametrize("study", ["5", 5.0, True, 0, -1])
def test_propose_study_must_be_a_positive_integer(expert, study):
    response = token_client(expert).post(
        reverse("api-reference-case-list"), {"study": study}, format="json"
    )
    assert response.status_code == 400
    assert "study" in response.json()


def test_propose_an_invisible_or_missing_study_is_a_400_on_the_field(expert):
    response = token_client(expert).post(
        reverse("api-reference-case-list"), {"study": 999999}, format="json"
    )
    assert response.status_code == 400
    assert response.json() == {"study": ["No such study, or one you may not see."]}
    assert not ReferenceCase.objects.exists()


def test_reject_without_a_reason_is_a_field_error(expert):
    reference = ReferenceCaseFactory()
    url = reverse("api-reference-case-reject", args=[reference.pk])
    api = token_client(expert)
    for body in ({}, {"comment": "   "}):
        response = api.post(url, body, format="json")
        assert response.status_code == 400
        assert "comment" in response.json()
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED


def test_form_encoded_bodies_are_415_where_the_schema_says_json(expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    response = token_client(expert).post(
        reverse("api-study-labels", args=[study.pk]), {"diagnosis": "normal"}, format="multipart"
    )
    assert response.status_code == 415
    assert not ExpertLabel.objects.exists()


def test_retire_reads_no_body(expert):
    reference = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    response = token_client(expert).post(
        reverse("api-reference-case-retire", args=[reference.pk]),
        "[" * 100_000,
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["state"] == "retired"


def test_upload_refuses_a_json_body_unread(clinician):
    response = token_client(clinician).post(
        reverse("api-study-list"), "[" * 100_000, content_type="application/json"
    )
    assert response.status_code == 415
    assert not Study.objects.exists()


def test_token_endpoint_ignores_a_stale_token_and_takes_form_fields():
    user = UserFactory(username="token-owner")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0000000000000000000000000000000000000000")
    response = client.post(
        reverse("api-token"), {"username": user.username, "password": "pw-for-tests-123"}
    )
    assert response.status_code == 200
    assert response.json() == {"token": Token.objects.get(user=user).key}
