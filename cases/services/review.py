"""Expert review writes: diagnosis labels and the reference-library workflow.

Every function runs in one transaction and appends an AuditEvent. Reference cases move
proposed -> approved | rejected, approved -> retired; approval and rejection must come from an
expert other than the proposer (the "second expert" rule). Approval and retirement send
`cases.signals.reference_library_changed` only after the transaction commits (the retrieval app
then enqueues the incremental index sync), so a worker never sees a state that was rolled back.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from cases.models import Diagnosis, ExpertLabel, ReferenceCase, Study
from cases.permissions import is_admin, is_expert
from cases.selectors import study_current_label
from cases.services.audit import audit_event_record
from cases.signals import reference_library_changed

LIVE_STATES = (ReferenceCase.State.PROPOSED, ReferenceCase.State.APPROVED)


def _require_expert(user: Any, action: str) -> None:
    if not is_expert(user):
        raise PermissionDenied(f"Only experts may {action}.")


def _lock_reference(reference_case: ReferenceCase) -> ReferenceCase:
    """Re-read the case under a row lock so that two concurrent decisions cannot both pass."""
    return ReferenceCase.objects.select_for_update().get(pk=reference_case.pk)


def _copy_state(target: ReferenceCase, source: ReferenceCase) -> None:
    """Keep the caller's instance in step with what was saved."""
    for field in ("state", "approved_by_id", "decided_at", "retired_at"):
        setattr(target, field, getattr(source, field))


def _library_changed_announce(reference_case_id: int) -> None:
    """Once committed, tell the apps above (the retrieval index) that the case joined or left
    the approved library."""
    transaction.on_commit(
        lambda: reference_library_changed.send(
            sender=ReferenceCase, reference_case_id=reference_case_id
        )
    )


def expert_label_set(
    *, study: Study, diagnosis: Diagnosis, expert: Any, comment: str = ""
) -> ExpertLabel:
    """Confirm or correct the diagnosis of `study`.

    Always appends a new ExpertLabel (the history is kept; the latest row is the current label)
    and moves a study that is ready for review to reviewed.
    """
    _require_expert(expert, "label studies")
    if not diagnosis.active:
        raise ValidationError(f"Diagnosis {diagnosis.name!r} is no longer in use.")
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        previous = study_current_label(study=locked)
        label = ExpertLabel.objects.create(
            study=locked, diagnosis=diagnosis, expert=expert, comment=comment.strip()
        )
        old_status = locked.status
        if locked.status == Study.Status.READY_FOR_REVIEW and locked.can_transition(
            Study.Status.REVIEWED
        ):
            locked.status = Study.Status.REVIEWED
            locked.save(update_fields=["status", "updated_at"])
        study.status = locked.status
        audit_event_record(
            actor=expert,
            verb="label.confirm"
            if previous is not None and previous.diagnosis_id == diagnosis.pk
            else "label.set",
            obj=locked,
            detail={
                "label_id": label.pk,
                "diagnosis": diagnosis.code,
                "previous_diagnosis": previous.diagnosis.code if previous else None,
                "comment": label.comment,
                "status": [old_status, locked.status],
            },
        )
    return label


def reference_case_propose(
    *, study: Study, expert: Any, diagnosis: Diagnosis | None = None, comment: str = ""
) -> ReferenceCase:
    """Propose `study` for the reference library with its current (or the given) diagnosis."""
    _require_expert(expert, "propose reference cases")
    with transaction.atomic():
        locked = Study.objects.select_for_update().get(pk=study.pk)
        if diagnosis is None:
            current = study_current_label(study=locked)
            if current is None:
                raise ValidationError(
                    f"Study {locked.pk} has no expert label yet: confirm or correct its "
                    "diagnosis before proposing it as a reference case."
                )
            diagnosis = current.diagnosis
        if locked.status == Study.Status.FAILED:
            raise ValidationError(
                f"Study {locked.pk} failed processing and cannot be a reference case."
            )
        live = ReferenceCase.objects.filter(study=locked, state__in=LIVE_STATES).first()
        if live is not None:
            raise ValidationError(
                f"Study {locked.pk} is already {live.get_state_display().lower()} as a "
                f"reference case (#{live.pk})."
            )
        try:
            # Savepoint: a concurrent proposal that slipped past the check above hits the
            # one-live-reference constraint; turn that into the same clear error.
            with transaction.atomic():
                reference = ReferenceCase.objects.create(
                    study=locked, diagnosis=diagnosis, proposed_by=expert, comment=comment.strip()
                )
        except IntegrityError as exc:
            raise ValidationError(
                f"Study {locked.pk} is already proposed or approved as a reference case."
            ) from exc
        audit_event_record(
            actor=expert,
            verb="reference.propose",
            obj=reference,
            detail={"study_id": locked.pk, "diagnosis": diagnosis.code, "comment": comment},
        )
    return reference


def _decide(
    *, reference_case: ReferenceCase, expert: Any, to_state: str, comment: str
) -> ReferenceCase:
    """Approve or reject a proposed case (shared checks of the second-expert rule)."""
    verb = "approve" if to_state == ReferenceCase.State.APPROVED else "reject"
    _require_expert(expert, f"{verb} reference cases")
    with transaction.atomic():
        locked = _lock_reference(reference_case)
        if locked.state != ReferenceCase.State.PROPOSED:
            raise ValidationError(
                f"Reference case #{locked.pk} is {locked.get_state_display().lower()}, "
                f"not proposed; it cannot be {verb}d."
            )
        if locked.proposed_by_id == expert.pk:
            raise ValidationError(
                f"A different expert than the proposer must {verb} reference case #{locked.pk}."
            )
        locked.state = to_state
        locked.approved_by = expert
        locked.decided_at = timezone.now()
        locked.save(update_fields=["state", "approved_by", "decided_at"])
        _copy_state(reference_case, locked)
        audit_event_record(
            actor=expert,
            verb=f"reference.{verb}",
            obj=locked,
            detail={
                "study_id": locked.study_id,
                "diagnosis": locked.diagnosis.code,
                "proposed_by": locked.proposed_by_id,
                "comment": comment.strip(),
            },
        )
        if to_state == ReferenceCase.State.APPROVED:
            _library_changed_announce(locked.pk)
    return reference_case


def reference_case_approve(
    *, reference_case: ReferenceCase, expert: Any, comment: str = ""
) -> ReferenceCase:
    """Approve a proposed case into the reference library (second expert only) and, once
    committed, have a worker embed it with the active model and add it to the index."""
    return _decide(
        reference_case=reference_case,
        expert=expert,
        to_state=ReferenceCase.State.APPROVED,
        comment=comment,
    )


def reference_case_reject(
    *, reference_case: ReferenceCase, expert: Any, comment: str
) -> ReferenceCase:
    """Reject a proposed case (second expert only); a reason is required."""
    if not comment or not comment.strip():
        raise ValidationError("Give a reason for rejecting the reference case.")
    return _decide(
        reference_case=reference_case,
        expert=expert,
        to_state=ReferenceCase.State.REJECTED,
        comment=comment,
    )


def reference_case_retire(*, reference_case: ReferenceCase, actor: Any) -> ReferenceCase:
    """Take an approved case out of the library; once committed a worker removes it from the
    index."""
    if not (is_expert(actor) or is_admin(actor)):
        raise PermissionDenied("Only experts or admins may retire reference cases.")
    with transaction.atomic():
        locked = _lock_reference(reference_case)
        if locked.state != ReferenceCase.State.APPROVED:
            raise ValidationError(
                f"Reference case #{locked.pk} is {locked.get_state_display().lower()}; only "
                "approved cases can be retired."
            )
        locked.state = ReferenceCase.State.RETIRED
        locked.retired_at = timezone.now()
        locked.save(update_fields=["state", "retired_at"])
        _copy_state(reference_case, locked)
        audit_event_record(
            actor=actor,
            verb="reference.retire",
            obj=locked,
            detail={"study_id": locked.study_id, "diagnosis": locked.diagnosis.code},
        )
        _library_changed_announce(locked.pk)
    return reference_case
