"""REST API: expert labels, reference-case proposals and decisions, diagnoses."""

from __future__ import annotations

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from cases.models import AuditEvent, ExpertLabel, ReferenceCase, Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    StudyFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_diagnoses_lists_the_taxonomy(clinician):
    body = client_for(clinician).get(reverse("api-diagnosis-list")).json()
    assert {d["code"] for d in body} == {"ass-ild", "ipf-ild", "dm-rp-ild", "normal", "other"}


def test_expert_posts_label_and_history_is_kept(expert, second_expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    url = reverse("api-study-labels", args=[study.pk])

    first = client_for(expert).post(url, {"diagnosis": "normal"}, format="json")
    second = client_for(second_expert).post(
        url, {"diagnosis": "ipf-ild", "comment": "UIP"}, format="json"
    )

    assert first.status_code == 201 and second.status_code == 201
    assert second.json()["diagnosis"]["code"] == "ipf-ild"
    assert second.json()["expert"] == second_expert.username
    history = client_for(expert).get(url).json()
    assert [(h["diagnosis"]["code"], h["comment"]) for h in history] == [
        ("ipf-ild", "UIP"),
        ("normal", ""),
    ]
    study.refresh_from_db()
    assert study.status == Study.Status.REVIEWED
    detail = client_for(expert).get(reverse("api-study-detail", args=[study.pk])).json()
    assert detail["current_label"]["code"] == "ipf-ild"
    assert AuditEvent.objects.filter(verb="label.set", object_id=str(study.pk)).count() == 2


def test_clinician_cannot_post_labels_even_on_own_study(clinician):
    study = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    response = client_for(clinician).post(
        reverse("api-study-labels", args=[study.pk]), {"diagnosis": "normal"}, format="json"
    )
    assert response.status_code == 403
    assert not ExpertLabel.objects.exists()
    # ...but may read the history of their own study.
    ExpertLabelFactory(study=study)
    assert len(client_for(clinician).get(reverse("api-study-labels", args=[study.pk])).json()) == 1


def test_label_with_unknown_diagnosis_is_400(expert):
    study = StudyFactory()
    response = client_for(expert).post(
        reverse("api-study-labels", args=[study.pk]), {"diagnosis": "flu"}, format="json"
    )
    assert response.status_code == 400
    assert "diagnosis" in response.json()
    assert not ExpertLabel.objects.exists()


def test_propose_approve_flow_with_second_expert_rule(
    expert, second_expert, django_capture_on_commit_callbacks
):
    study = StudyFactory(status=Study.Status.REVIEWED)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("ASS-ILD"))

    proposed = client_for(expert).post(
        reverse("api-reference-case-list"), {"study": study.pk, "comment": "typical"}, format="json"
    )
    assert proposed.status_code == 201, proposed.content
    body = proposed.json()
    assert (body["state"], body["diagnosis"]["code"], body["proposed_by"]) == (
        "proposed",
        "ass-ild",
        expert.username,
    )
    approve_url = reverse("api-reference-case-approve", args=[body["id"]])

    own = client_for(expert).post(approve_url, {}, format="json")
    assert own.status_code == 400
    assert "different expert" in own.json()["detail"]

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        approved = client_for(second_expert).post(approve_url, {"comment": "ok"}, format="json")
    assert approved.status_code == 200
    assert approved.json()["state"] == "approved"
    assert approved.json()["approved_by"] == second_expert.username
    assert len(callbacks) == 1  # the index sync
    assert ReferenceCase.objects.get(pk=body["id"]).state == ReferenceCase.State.APPROVED


def test_second_proposal_of_the_same_study_is_400(expert, second_expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    response = client_for(second_expert).post(
        reverse("api-reference-case-list"),
        {"study": reference.study_id, "diagnosis": "normal"},
        format="json",
    )
    assert response.status_code == 400
    assert "already proposed" in response.json()["detail"]


def test_propose_unlabelled_study_without_diagnosis_is_400(expert):
    study = StudyFactory()
    response = client_for(expert).post(
        reverse("api-reference-case-list"), {"study": study.pk}, format="json"
    )
    assert response.status_code == 400
    assert "no expert label" in response.json()["detail"]


def test_reject_needs_reason_and_retire_needs_approved(expert, second_expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    reject_url = reverse("api-reference-case-reject", args=[reference.pk])
    retire_url = reverse("api-reference-case-retire", args=[reference.pk])
    reviewer = client_for(second_expert)

    assert reviewer.post(retire_url).status_code == 400
    assert reviewer.post(reject_url, {}, format="json").status_code == 400
    rejected = reviewer.post(reject_url, {"comment": "artefacts"}, format="json")
    assert rejected.status_code == 200
    assert rejected.json()["state"] == "rejected"


def test_retire_approved_case(expert, second_expert):
    reference = ReferenceCaseFactory(
        proposed_by=expert, approved_by=second_expert, state=ReferenceCase.State.APPROVED
    )
    response = client_for(expert).post(reverse("api-reference-case-retire", args=[reference.pk]))
    assert response.status_code == 200
    assert response.json()["state"] == "retired"
    assert response.json()["retired_at"]


def test_clinician_gets_403_on_every_review_write(clinician):
    study = StudyFactory(uploaded_by=clinician)
    ExpertLabelFactory(study=study)
    reference = ReferenceCaseFactory()
    api = client_for(clinician)
    posts = [
        (reverse("api-reference-case-list"), {"study": study.pk}),
        (reverse("api-reference-case-approve", args=[reference.pk]), {}),
        (reverse("api-reference-case-reject", args=[reference.pk]), {"comment": "x"}),
        (reverse("api-reference-case-retire", args=[reference.pk]), {}),
    ]
    for url, data in posts:
        assert api.post(url, data, format="json").status_code == 403, url
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    assert ReferenceCase.objects.count() == 1


def test_anonymous_gets_401_or_403_on_review_endpoints():
    reference = ReferenceCaseFactory()
    api = APIClient()
    for url in [
        reverse("api-reference-case-list"),
        reverse("api-diagnosis-list"),
        reverse("api-reference-case-detail", args=[reference.pk]),
    ]:
        assert api.get(url).status_code in (401, 403), url
    approve = api.post(reverse("api-reference-case-approve", args=[reference.pk]))
    assert approve.status_code in (401, 403)


def test_clinician_sees_only_the_approved_library(clinician, expert):
    approved = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    proposed = ReferenceCaseFactory()

    clinician_ids = [
        r["id"]
        for r in client_for(clinician).get(reverse("api-reference-case-list")).json()["results"]
    ]
    expert_ids = {
        r["id"]
        for r in client_for(expert).get(reverse("api-reference-case-list")).json()["results"]
    }

    assert clinician_ids == [approved.pk]
    assert expert_ids == {approved.pk, proposed.pk}
    detail = client_for(clinician).get(reverse("api-reference-case-detail", args=[proposed.pk]))
    assert detail.status_code == 404


def test_reference_list_filters_by_state_and_diagnosis(expert):
    ReferenceCaseFactory(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis("IPF-ILD"))
    ReferenceCaseFactory(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis("Normal"))
    ReferenceCaseFactory(diagnosis=diagnosis("IPF-ILD"))
    api = client_for(expert)
    url = reverse("api-reference-case-list")
    assert api.get(url, {"state": "approved"}).json()["count"] == 2
    assert api.get(url, {"diagnosis": "ipf-ild"}).json()["count"] == 2
    assert api.get(url, {"state": "proposed", "diagnosis": "ipf-ild"}).json()["count"] == 1
