"""Expert-action forms, their POST endpoints and the approval queue page."""

from __future__ import annotations

import pytest
from django.template import Context, RequestContext, Template
from django.test import Client, RequestFactory
from django.urls import reverse

from cases.models import AuditEvent, ExpertLabel, ReferenceCase, Study
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def expert_client(client, expert):
    client.force_login(expert)
    return client


def page_messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_label_form_post_sets_label_and_returns_to_next(expert_client, expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    response = expert_client.post(
        reverse("review:label_set", args=[study.pk]),
        {"diagnosis": diagnosis("IPF-ILD").pk, "comment": "UIP pattern", "next": "/some/page/"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/some/page/"
    label = ExpertLabel.objects.get(study=study)
    assert (label.diagnosis.code, label.expert, label.comment) == ("ipf-ild", expert, "UIP pattern")
    study.refresh_from_db()
    assert study.status == Study.Status.REVIEWED
    assert AuditEvent.objects.filter(verb="label.set", object_id=str(study.pk)).exists()


def test_label_form_ignores_offsite_next(expert_client):
    study = StudyFactory()
    response = expert_client.post(
        reverse("review:label_set", args=[study.pk]),
        {"diagnosis": diagnosis("Normal").pk, "next": "https://evil.example/"},
    )
    assert response.status_code == 302
    assert "evil.example" not in response["Location"]


def test_label_form_with_unknown_diagnosis_saves_nothing_and_says_why(expert_client):
    study = StudyFactory()
    response = expert_client.post(
        reverse("review:label_set", args=[study.pk]), {"diagnosis": 99999}, follow=True
    )
    assert not ExpertLabel.objects.exists()
    assert any("Label not saved" in m and "diagnosis" in m for m in page_messages(response))


def test_propose_form_creates_proposal_and_refuses_a_second(expert_client):
    study = StudyFactory(status=Study.Status.REVIEWED)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("ASS-ILD"))
    url = reverse("review:propose", args=[study.pk])

    expert_client.post(url, {"comment": "classic"})
    reference = ReferenceCase.objects.get(study=study)
    assert (reference.state, reference.diagnosis.code) == ("proposed", "ass-ild")

    response = expert_client.post(url, {}, follow=True)
    assert ReferenceCase.objects.filter(study=study).count() == 1
    assert any("already proposed" in m for m in page_messages(response))


def test_approval_queue_lists_proposals_and_hides_approve_for_the_proposer(expert_client, expert):
    mine = ReferenceCaseFactory(proposed_by=expert, comment="mine")
    theirs = ReferenceCaseFactory(proposed_by=UserFactory(role="Expert"), comment="theirs")
    ReferenceCaseFactory(state=ReferenceCase.State.REJECTED, comment="already-rejected")

    response = expert_client.get(reverse("review:approvals"))

    assert response.status_code == 200
    html = response.content.decode()
    assert reverse("review:reference_approve", args=[theirs.pk]) in html
    assert reverse("review:reference_reject", args=[theirs.pk]) in html
    assert reverse("review:reference_approve", args=[mine.pk]) not in html
    assert f'id="reference-{mine.pk}"' in html
    assert "awaiting another expert" in html
    assert "already-rejected" not in html


def test_second_expert_approves_from_the_queue(client, expert, django_capture_on_commit_callbacks):
    reference = ReferenceCaseFactory(proposed_by=expert)
    approver = UserFactory(role="Expert")
    client.force_login(approver)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            reverse("review:reference_approve", args=[reference.pk]),
            {"comment": "ok", "confirm_unopened": "1"},
        )
    assert response.status_code == 302
    assert response["Location"] == reverse("review:approvals")
    reference.refresh_from_db()
    assert (reference.state, reference.approved_by) == ("approved", approver)
    assert len(callbacks) == 1


def test_proposer_cannot_approve_through_the_page(expert_client, expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    response = expert_client.post(
        reverse("review:reference_approve", args=[reference.pk]), follow=True
    )
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    assert any("different expert" in m for m in page_messages(response))


def test_reject_without_reason_is_refused_and_with_reason_rejects(expert_client):
    reference = ReferenceCaseFactory(proposed_by=UserFactory(role="Expert"))
    url = reverse("review:reference_reject", args=[reference.pk])

    response = expert_client.post(url, {"comment": ""}, follow=True)
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    assert any("reason" in m for m in page_messages(response))

    expert_client.post(url, {"comment": "slice thickness 10 mm"})
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.REJECTED


def test_retire_from_the_queue_page(expert_client, django_capture_on_commit_callbacks):
    reference = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    page = expert_client.get(reverse("review:approvals")).content.decode()
    assert reverse("review:reference_retire", args=[reference.pk]) in page

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        expert_client.post(reverse("review:reference_retire", args=[reference.pk]))
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.RETIRED
    assert len(callbacks) == 1


def _all_posts(study: Study, reference: ReferenceCase) -> list[tuple[str, dict]]:
    return [
        (reverse("review:label_set", args=[study.pk]), {"diagnosis": diagnosis("Normal").pk}),
        (reverse("review:propose", args=[study.pk]), {"diagnosis": diagnosis("Normal").pk}),
        (reverse("review:reference_approve", args=[reference.pk]), {}),
        (reverse("review:reference_reject", args=[reference.pk]), {"comment": "x"}),
        (reverse("review:reference_retire", args=[reference.pk]), {}),
    ]


def test_clinician_gets_403_on_every_action_and_the_queue(client):
    clinician = UserFactory(role="Clinician")
    study = StudyFactory(uploaded_by=clinician, status=Study.Status.READY_FOR_REVIEW)
    reference = ReferenceCaseFactory()
    client.force_login(clinician)

    for url, data in _all_posts(study, reference):
        assert client.post(url, data).status_code == 403, url
    assert client.get(reverse("review:approvals")).status_code == 403
    assert not ExpertLabel.objects.exists()
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    assert ReferenceCase.objects.count() == 1


def test_anonymous_is_sent_to_login(client):
    study = StudyFactory()
    reference = ReferenceCaseFactory()
    for url, data in _all_posts(study, reference):
        response = client.post(url, data)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], url
    assert "/accounts/login/" in client.get(reverse("review:approvals"))["Location"]
    assert not ExpertLabel.objects.exists()


def test_actions_require_csrf_token(expert):
    client = Client(enforce_csrf_checks=True)
    client.force_login(expert)
    study = StudyFactory()
    response = client.post(
        reverse("review:label_set", args=[study.pk]), {"diagnosis": diagnosis("Normal").pk}
    )
    assert response.status_code == 403
    assert not ExpertLabel.objects.exists()


def test_actions_are_post_only(expert_client):
    study = StudyFactory()
    assert expert_client.get(reverse("review:label_set", args=[study.pk])).status_code == 405


def _render_panel(user, study) -> str:
    request = RequestFactory().get("/studies/1/")
    request.user = user
    template = Template("{% load review_tags %}{% expert_actions study %}")
    return template.render(RequestContext(request, {"study": study}))


def test_panel_shows_forms_current_label_and_history_to_experts(expert):
    study = StudyFactory(status=Study.Status.REVIEWED)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("Normal"), comment="first look")
    ExpertLabelFactory(study=study, diagnosis=diagnosis("IPF-ILD"))

    html = _render_panel(expert, study)

    assert reverse("review:label_set", args=[study.pk]) in html
    assert reverse("review:propose", args=[study.pk]) in html
    assert 'data-testid="current-label">IPF-ILD<' in html
    assert "first look" in html  # history
    assert "csrfmiddlewaretoken" in html
    assert 'name="next" value="/studies/1/"' in html


def test_panel_is_read_only_for_clinicians():
    clinician = UserFactory(role="Clinician")
    study = StudyFactory(uploaded_by=clinician)
    html = _render_panel(clinician, study)
    assert "Not yet labelled" in html
    assert "<form" not in html


def test_panel_shows_reference_state_instead_of_propose_form(expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    ExpertLabelFactory(study=reference.study)
    html = _render_panel(expert, reference.study)
    assert "Proposed as a reference case of Normal" in html
    assert reverse("review:propose", args=[reference.study.pk]) not in html


def test_panel_can_be_included_with_explicit_context(expert):
    from cases.selectors import expert_actions_context

    study = StudyFactory()
    context = expert_actions_context(study=study, user=expert)
    html = Template('{% include "cases/_expert_actions.html" %}').render(
        Context({**context, "next_url": "/x/"})
    )
    assert reverse("review:label_set", args=[study.pk]) in html


def test_admin_sees_queue_and_may_retire_but_not_approve(client):
    admin = UserFactory(role="Admin")
    proposed = ReferenceCaseFactory()
    approved = ReferenceCaseFactory(state=ReferenceCase.State.APPROVED)
    client.force_login(admin)

    html = client.get(reverse("review:approvals")).content.decode()
    assert f'id="reference-{proposed.pk}"' in html
    assert reverse("review:reference_approve", args=[proposed.pk]) not in html
    assert client.post(reverse("review:reference_approve", args=[proposed.pk])).status_code == 403

    client.post(reverse("review:reference_retire", args=[approved.pk]))
    approved.refresh_from_db()
    assert approved.state == ReferenceCase.State.RETIRED


def test_nav_links_to_the_queue_for_experts_only(client, expert):
    client.force_login(expert)
    assert reverse("review:approvals") in client.get(reverse("cases:worklist")).content.decode()
    client.force_login(UserFactory(role="Clinician"))
    assert reverse("review:approvals") not in client.get(reverse("cases:worklist")).content.decode()
