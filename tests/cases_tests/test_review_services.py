"""Expert labels and the reference-case workflow (cases.services.review)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from cases.models import AuditEvent, ExpertLabel, ReferenceCase, Study
from cases.selectors import reference_case_pending_list, study_current_label, study_label_history
from cases.services.review import (
    expert_label_set,
    reference_case_approve,
    reference_case_propose,
    reference_case_reject,
    reference_case_retire,
)
from tests.factories import (
    ExpertLabelFactory,
    ReferenceCaseFactory,
    StudyFactory,
    UserFactory,
    diagnosis,
)

pytestmark = pytest.mark.django_db


def events(verb: str, obj) -> list[AuditEvent]:
    return list(
        AuditEvent.objects.filter(verb=verb, object_type=obj._meta.label, object_id=str(obj.pk))
    )


def test_label_set_keeps_every_label_as_history(expert, second_expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    first = expert_label_set(study=study, diagnosis=diagnosis("Normal"), expert=expert)
    second = expert_label_set(
        study=study, diagnosis=diagnosis("IPF-ILD"), expert=second_expert, comment="honeycombing"
    )

    assert ExpertLabel.objects.filter(study=study).count() == 2
    assert study_current_label(study=study) == second
    assert [label.pk for label in study_label_history(study=study)] == [second.pk, first.pk]
    first.refresh_from_db()
    assert first.diagnosis.name == "Normal"
    assert second.comment == "honeycombing"


def test_label_set_moves_ready_study_to_reviewed(expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    expert_label_set(study=study, diagnosis=diagnosis("ASS-ILD"), expert=expert)
    assert study.status == Study.Status.REVIEWED
    study.refresh_from_db()
    assert study.status == Study.Status.REVIEWED


@pytest.mark.parametrize("status", [Study.Status.PROCESSING, Study.Status.UPLOADED])
def test_label_set_leaves_unprocessed_study_status_alone(expert, status):
    study = StudyFactory(status=status)
    expert_label_set(study=study, diagnosis=diagnosis("Normal"), expert=expert)
    study.refresh_from_db()
    assert study.status == status


def test_label_set_records_audit_event_with_previous_diagnosis(expert):
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW)
    expert_label_set(study=study, diagnosis=diagnosis("Normal"), expert=expert)
    expert_label_set(study=study, diagnosis=diagnosis("IPF-ILD"), expert=expert, comment="fix")
    expert_label_set(study=study, diagnosis=diagnosis("IPF-ILD"), expert=expert)

    set_events = sorted(events("label.set", study), key=lambda e: e.pk)
    assert [e.detail["diagnosis"] for e in set_events] == ["normal", "ipf-ild"]
    assert set_events[1].detail["previous_diagnosis"] == "normal"
    assert set_events[1].detail["comment"] == "fix"
    assert set_events[0].detail["status"] == ["ready_for_review", "reviewed"]
    assert all(e.actor == expert for e in set_events)
    assert len(events("label.confirm", study)) == 1


def test_label_set_refuses_clinician_and_saves_nothing():
    clinician = UserFactory(role="Clinician")
    study = StudyFactory(status=Study.Status.READY_FOR_REVIEW, uploaded_by=clinician)
    with pytest.raises(PermissionDenied):
        expert_label_set(study=study, diagnosis=diagnosis("Normal"), expert=clinician)
    assert not ExpertLabel.objects.exists()
    assert not AuditEvent.objects.exists()
    study.refresh_from_db()
    assert study.status == Study.Status.READY_FOR_REVIEW


def test_label_set_refuses_inactive_diagnosis(expert):
    retired = diagnosis("Other")
    retired.active = False
    retired.save()
    with pytest.raises(ValidationError, match="no longer in use"):
        expert_label_set(study=StudyFactory(), diagnosis=retired, expert=expert)
    assert not ExpertLabel.objects.exists()


def test_propose_uses_current_label_and_records_audit(expert):
    study = StudyFactory(status=Study.Status.REVIEWED)
    ExpertLabelFactory(study=study, diagnosis=diagnosis("Normal"))
    ExpertLabelFactory(study=study, diagnosis=diagnosis("DM/RP-ILD (anti-MDA5)"))

    reference = reference_case_propose(study=study, expert=expert, comment="typical")

    assert reference.state == ReferenceCase.State.PROPOSED
    assert reference.diagnosis.code == "dm-rp-ild"
    assert reference.proposed_by == expert
    (event,) = events("reference.propose", reference)
    assert event.actor == expert
    assert event.detail["study_id"] == study.pk
    assert event.detail["diagnosis"] == "dm-rp-ild"


def test_propose_with_explicit_diagnosis_needs_no_label(expert):
    reference = reference_case_propose(
        study=StudyFactory(), expert=expert, diagnosis=diagnosis("ASS-ILD")
    )
    assert reference.diagnosis.code == "ass-ild"


def test_propose_unlabelled_study_is_refused_with_clear_message(expert):
    study = StudyFactory()
    with pytest.raises(ValidationError, match="no expert label"):
        reference_case_propose(study=study, expert=expert)
    assert not ReferenceCase.objects.exists()


def test_propose_twice_is_refused_with_clear_message(expert, second_expert):
    study = StudyFactory()
    ExpertLabelFactory(study=study)
    first = reference_case_propose(study=study, expert=expert)
    with pytest.raises(
        ValidationError, match=f"already proposed as a reference case \\(#{first.pk}"
    ):
        reference_case_propose(study=study, expert=second_expert)
    assert ReferenceCase.objects.filter(study=study).count() == 1
    assert len(events("reference.propose", first)) == 1


def test_propose_refuses_clinician():
    clinician = UserFactory(role="Clinician")
    study = StudyFactory(uploaded_by=clinician)
    ExpertLabelFactory(study=study)
    with pytest.raises(PermissionDenied):
        reference_case_propose(study=study, expert=clinician)
    assert not ReferenceCase.objects.exists()


def test_rejected_study_can_be_proposed_again(expert, second_expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    reference_case_reject(reference_case=reference, expert=second_expert, comment="poor quality")
    again = reference_case_propose(
        study=reference.study, expert=expert, diagnosis=diagnosis("Normal")
    )
    assert again.pk != reference.pk
    assert again.state == ReferenceCase.State.PROPOSED


def test_approve_by_proposer_is_refused(expert, django_capture_on_commit_callbacks):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(ValidationError, match="different expert than the proposer"):
            reference_case_approve(reference_case=reference, expert=expert)
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED
    assert reference.approved_by is None
    assert callbacks == []
    assert not events("reference.approve", reference)


def test_approve_by_second_expert_approves_and_enqueues_index_sync(
    expert, second_expert, django_capture_on_commit_callbacks
):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reference_case_approve(reference_case=reference, expert=second_expert, comment="good")

    assert reference.state == ReferenceCase.State.APPROVED
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.APPROVED
    assert reference.approved_by == second_expert
    assert reference.decided_at is not None
    # Exactly one post-commit action: the index sync (run by the worker, see retrieval tests).
    assert len(callbacks) == 1
    (event,) = events("reference.approve", reference)
    assert event.actor == second_expert
    assert event.detail["comment"] == "good"
    assert event.detail["proposed_by"] == expert.pk


def test_approve_refuses_clinician(expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with pytest.raises(PermissionDenied):
        reference_case_approve(reference_case=reference, expert=UserFactory(role="Clinician"))
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED


def test_approve_of_already_decided_case_is_refused(expert, second_expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    reference_case_reject(reference_case=reference, expert=second_expert, comment="no")
    with pytest.raises(ValidationError, match="is rejected, not proposed"):
        reference_case_approve(reference_case=reference, expert=UserFactory(role="Expert"))
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.REJECTED


def test_reject_requires_a_reason(expert, second_expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with pytest.raises(ValidationError, match="reason"):
        reference_case_reject(reference_case=reference, expert=second_expert, comment="  ")
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.PROPOSED


def test_reject_by_second_expert_records_reason(
    expert, second_expert, django_capture_on_commit_callbacks
):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reference_case_reject(reference_case=reference, expert=second_expert, comment="motion")
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.REJECTED
    assert reference.decided_at is not None
    assert callbacks == []  # a rejected case was never indexed
    (event,) = events("reference.reject", reference)
    assert event.detail["comment"] == "motion"


def test_reject_by_proposer_is_refused(expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with pytest.raises(ValidationError, match="different expert"):
        reference_case_reject(reference_case=reference, expert=expert, comment="oops")


def test_retire_approved_case_enqueues_index_sync(
    expert, second_expert, django_capture_on_commit_callbacks
):
    reference = ReferenceCaseFactory(
        proposed_by=expert, state=ReferenceCase.State.APPROVED, approved_by=second_expert
    )
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        reference_case_retire(reference_case=reference, actor=expert)
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.RETIRED
    assert reference.retired_at is not None
    assert len(callbacks) == 1
    assert len(events("reference.retire", reference)) == 1


def test_retire_of_proposed_case_is_refused(expert):
    reference = ReferenceCaseFactory(proposed_by=expert)
    with pytest.raises(ValidationError, match="only approved cases"):
        reference_case_retire(reference_case=reference, actor=UserFactory(role="Expert"))


def test_retire_refuses_clinician(expert):
    reference = ReferenceCaseFactory(proposed_by=expert, state=ReferenceCase.State.APPROVED)
    with pytest.raises(PermissionDenied):
        reference_case_retire(reference_case=reference, actor=UserFactory(role="Clinician"))


def test_pending_list_excludes_own_proposals_and_decided_cases(expert, second_expert):
    mine = ReferenceCaseFactory(proposed_by=expert)
    theirs = ReferenceCaseFactory(proposed_by=second_expert)
    ReferenceCaseFactory(proposed_by=second_expert, state=ReferenceCase.State.APPROVED)

    assert set(reference_case_pending_list()) == {mine, theirs}
    assert list(reference_case_pending_list(exclude_proposer=expert)) == [theirs]


def _indexed_reference(*, proposed_by, state):
    """A reference case with one slice already in the index (a ReferenceEmbedding row)."""
    from retrieval.models import ModelVersion, ReferenceEmbedding
    from tests.factories import SeriesFactory, SliceFactory

    reference = ReferenceCaseFactory(proposed_by=proposed_by, state=state)
    version = ModelVersion.objects.create(
        name="v-index-test", artefact_dir="/nonexistent", backbone="efficientnet_lite0"
    )
    slice_obj = SliceFactory(series=SeriesFactory(study=reference.study))
    ReferenceEmbedding.objects.create(
        model_version=version,
        reference_case=reference,
        slice=slice_obj,
        vector=b"\0" * 16,
        lung_fraction=0.3,
    )
    return reference


def test_retire_removes_the_case_from_the_index_after_commit(
    expert, django_capture_on_commit_callbacks
):
    from retrieval.models import ReferenceEmbedding

    reference = _indexed_reference(proposed_by=expert, state=ReferenceCase.State.APPROVED)
    with django_capture_on_commit_callbacks(execute=True):
        reference_case_retire(reference_case=reference, actor=expert)
        # Nothing is removed before the transaction commits.
        assert ReferenceEmbedding.objects.filter(reference_case=reference).count() == 1
    assert not ReferenceEmbedding.objects.filter(reference_case=reference).exists()


def test_approve_without_active_model_still_approves(
    expert, second_expert, django_capture_on_commit_callbacks
):
    reference = ReferenceCaseFactory(proposed_by=expert)
    # The sync task runs eagerly on commit; with no active model it has nothing to embed yet
    # (activation embeds the whole approved library later).
    with django_capture_on_commit_callbacks(execute=True):
        reference_case_approve(reference_case=reference, expert=second_expert)
    reference.refresh_from_db()
    assert reference.state == ReferenceCase.State.APPROVED
