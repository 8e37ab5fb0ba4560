"""Approval with evidence (issue 9 item 8): the queue shows a thumbnail, the model's
suggestion next to the proposed label and a link to the review; approving a case the approver
has not opened needs an explicit confirmation, and opening the review records it."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from cases.models import ReferenceCase
from retrieval.models import ModelVersion, StudyResult
from tests.factories import (
    ReferenceCaseFactory,
    SeriesFactory,
    SliceFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def proposal(expert):
    """A proposed Normal case with one slice, whose model result suggested IPF-ILD."""
    reference = ReferenceCaseFactory(proposed_by=expert, diagnosis=diagnosis("Normal"))
    SliceFactory(series=SeriesFactory(study=reference.study), index=0)
    version = ModelVersion.objects.create(name="v-approvals", artefact_dir="x", backbone="t")
    StudyResult.objects.create(
        study=reference.study, model_version=version, suggested_diagnosis=diagnosis("IPF-ILD")
    )
    return reference


def _card(html: str, reference) -> str:
    match = re.search(
        rf'<li class="approval-card" id="reference-{reference.pk}".*?</li>', html, re.S
    )
    assert match, "no card for the proposal"
    return match.group(0)


def test_queue_card_shows_thumbnail_suggestion_next_to_label_and_review_link(
    client, second_expert, proposal
):
    client.force_login(second_expert)
    card = _card(client.get(reverse("review:approvals")).content.decode(), proposal)
    thumb = proposal.study.series.get().slices.get()
    assert f'src="{reverse("cases:slice_png", args=[thumb.pk])}' in card
    assert re.search(r'data-testid="proposed-label">Normal<', card)
    assert re.search(
        r'data-testid="approval-suggestion">IPF-ILD <span class="badge differs">', card
    )
    assert f'href="{reverse("cases:study_review", args=[proposal.study.pk])}"' in card
    assert 'data-testid="not-opened"' in card and 'name="confirm_unopened"' in card


def test_approving_an_unopened_case_without_confirmation_is_refused(
    client, second_expert, proposal
):
    client.force_login(second_expert)
    response = client.post(
        reverse("review:reference_approve", args=[proposal.pk]), {"comment": ""}, follow=True
    )
    proposal.refresh_from_db()
    assert proposal.state == ReferenceCase.State.PROPOSED
    texts = [str(m) for m in response.context["messages"]]
    assert any("have not opened the review" in t for t in texts), texts


def test_approving_an_unopened_case_with_confirmation_approves(client, second_expert, proposal):
    client.force_login(second_expert)
    client.post(reverse("review:reference_approve", args=[proposal.pk]), {"confirm_unopened": "1"})
    proposal.refresh_from_db()
    assert (proposal.state, proposal.approved_by) == ("approved", second_expert)


def test_opening_the_review_first_lets_the_approver_approve_in_one_click(
    client, second_expert, proposal
):
    client.force_login(second_expert)
    assert client.get(reverse("cases:study_review", args=[proposal.study.pk])).status_code == 200
    card = _card(client.get(reverse("review:approvals")).content.decode(), proposal)
    assert 'data-testid="opened"' in card and "confirm_unopened" not in card
    client.post(reverse("review:reference_approve", args=[proposal.pk]), {"comment": "seen"})
    proposal.refresh_from_db()
    assert proposal.state == ReferenceCase.State.APPROVED


def test_someone_elses_opening_does_not_count(client, second_expert, proposal):
    other = UserFactory(role="Expert")
    client.force_login(other)
    client.get(reverse("cases:study_review", args=[proposal.study.pk]))
    client.force_login(second_expert)
    client.post(reverse("review:reference_approve", args=[proposal.pk]), {})
    proposal.refresh_from_db()
    assert proposal.state == ReferenceCase.State.PROPOSED


def test_agreeing_suggestion_is_marked_and_messages_name_no_database_id(
    client, second_expert, proposal
):
    StudyResult.objects.filter(study=proposal.study).update(suggested_diagnosis=diagnosis("Normal"))
    client.force_login(second_expert)
    card = _card(client.get(reverse("review:approvals")).content.decode(), proposal)
    assert re.search(r'approval-suggestion">Normal <span class="badge agree">', card)
    response = client.post(
        reverse("review:reference_approve", args=[proposal.pk]),
        {"confirm_unopened": "1"},
        follow=True,
    )
    texts = " ".join(str(m) for m in response.context["messages"])
    assert proposal.study.patient.display_id in texts and f"#{proposal.pk}" not in texts


def test_abstained_suggestion_reads_no_close_match(client, second_expert, proposal):
    StudyResult.objects.filter(study=proposal.study).update(
        suggested_diagnosis=None, abstained=True, abstain_reason="vote margin 0.02 below 0.10"
    )
    client.force_login(second_expert)
    card = _card(client.get(reverse("review:approvals")).content.decode(), proposal)
    assert "No close match" in card and "vote margin 0.02 below 0.10" in card
