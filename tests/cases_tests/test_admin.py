"""Django admin: every model of cases and retrieval registered, searchable, filterable and
rendering; the audit trail read-only."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib import admin
from django.test import RequestFactory
from django.urls import reverse

from cases.models import AuditEvent, Diagnosis, ReferenceCase
from cases.services.audit import audit_event_record
from tests.factories import ReferenceCaseFactory, SliceFactory, UserFactory

pytestmark = pytest.mark.django_db

OUR_APPS = ("cases", "retrieval")


def our_models():
    return [m for label in OUR_APPS for m in apps.get_app_config(label).get_models()]


@pytest.fixture
def superuser_client(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def test_every_model_of_cases_and_retrieval_is_registered_with_filters_and_search():
    missing = [m._meta.label for m in our_models() if m not in admin.site._registry]
    assert missing == []
    for model in our_models():
        model_admin = admin.site._registry[model]
        assert model_admin.list_filter, f"{model._meta.label} has no list_filter"
        assert model_admin.search_fields, f"{model._meta.label} has no search_fields"
        assert model_admin.list_display != ("__str__",), f"{model._meta.label} lacks list_display"


@pytest.mark.parametrize("model", our_models(), ids=lambda m: m._meta.label)
def test_changelist_renders_for_superuser_with_search_and_filter(superuser_client, model):
    SliceFactory()
    ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    audit_event_record(actor=None, verb="test.event")
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    assert superuser_client.get(url).status_code == 200
    assert superuser_client.get(url, {"q": "x"}).status_code == 200


@pytest.mark.parametrize(
    "factory", [SliceFactory, ReferenceCaseFactory], ids=["slice", "reference case"]
)
def test_change_pages_render_for_an_existing_object(superuser_client, factory):
    obj = factory()
    for related in [obj, getattr(obj, "series", None), getattr(obj, "study", None)]:
        if related is None:
            continue
        meta = related._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[related.pk])
        assert superuser_client.get(url).status_code == 200


def test_audit_events_cannot_be_added_changed_or_deleted_in_admin(superuser_client):
    event = audit_event_record(actor=None, verb="study.upload", detail={"n": 1})
    change_url = reverse("admin:cases_auditevent_change", args=[event.pk])

    assert superuser_client.get(reverse("admin:cases_auditevent_add")).status_code == 403
    assert superuser_client.get(change_url).status_code == 200  # view only
    superuser_client.post(change_url, {"verb": "rewritten"})
    delete_url = reverse("admin:cases_auditevent_delete", args=[event.pk])
    assert superuser_client.post(delete_url, {"post": "yes"}).status_code == 403
    superuser_client.post(
        reverse("admin:cases_auditevent_changelist"),
        {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"},
    )
    event.refresh_from_db()
    assert event.verb == "study.upload"
    assert AuditEvent.objects.count() == 1

    model_admin = admin.site._registry[AuditEvent]
    request = RequestFactory().get("/admin/")
    request.user = UserFactory(is_staff=True, is_superuser=True)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request, event)
    assert not model_admin.has_delete_permission(request, event)


def test_diagnosis_can_be_added_by_admin(superuser_client):
    response = superuser_client.post(
        reverse("admin:cases_diagnosis_add"),
        {"code": "nsip", "name": "NSIP", "description": "", "active": "on"},
    )
    assert response.status_code == 302
    assert Diagnosis.objects.filter(code="nsip").exists()


def test_admin_retire_action_retires_an_approved_case(superuser_client):
    case = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    superuser_client.post(
        reverse("admin:cases_referencecase_changelist"),
        {"action": "retire_selected", "_selected_action": [case.pk]},
    )
    case.refresh_from_db()
    assert case.state == ReferenceCase.State.RETIRED
