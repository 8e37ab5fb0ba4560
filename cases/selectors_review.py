"""Reads for the expert review workflow: labels and the reference-case approval queue."""

from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, QuerySet, Subquery

from cases.models import AuditEvent, Diagnosis, ExpertLabel, ReferenceCase, Study


def study_current_label(*, study: Study) -> ExpertLabel | None:
    """The study's current diagnosis: its latest expert label, or None."""
    return (
        ExpertLabel.objects.filter(study=study)
        .select_related("diagnosis", "expert")
        .order_by("-created_at", "-id")
        .first()
    )


def label_history(*, study: Study) -> list[ExpertLabel]:
    """Every label the study has had, newest first."""
    return list(
        ExpertLabel.objects.filter(study=study)
        .select_related("diagnosis", "expert")
        .order_by("-created_at", "-id")
    )


def studies_with_current_label(*, studies: QuerySet[Study]) -> QuerySet[Study]:
    """Annotate `current_label_code` / `current_label_name` (None when unlabelled) in one query,
    for lists that show the current diagnosis of many studies."""
    latest = ExpertLabel.objects.filter(study=OuterRef("pk")).order_by("-created_at", "-id")
    return studies.annotate(
        current_label_code=Subquery(latest.values("diagnosis__code")[:1]),
        current_label_name=Subquery(latest.values("diagnosis__name")[:1]),
    )


def reference_case_pending_list(*, exclude_proposer: Any | None = None) -> QuerySet[ReferenceCase]:
    """Proposed reference cases awaiting a decision, oldest first; `exclude_proposer` leaves out
    the ones that user proposed (which they may not decide)."""
    qs = (
        ReferenceCase.objects.filter(state=ReferenceCase.State.PROPOSED)
        .select_related("study__patient", "diagnosis", "proposed_by")
        .order_by("proposed_at", "id")
    )
    if exclude_proposer is not None:
        qs = qs.exclude(proposed_by=exclude_proposer)
    return qs


def reference_case_list_visible(
    *, user: Any, state: str | None = None, diagnosis: Diagnosis | str | None = None
) -> QuerySet[ReferenceCase]:
    """Reference cases `user` may see: experts and admins see every state; others (clinicians)
    see the approved library only. `diagnosis` is a Diagnosis or its code."""
    from cases.permissions import is_admin, is_expert

    qs = ReferenceCase.objects.select_related(
        "study__patient", "diagnosis", "proposed_by", "approved_by"
    ).order_by("-proposed_at", "-id")
    if not (is_expert(user) or is_admin(user)):
        qs = qs.filter(state=ReferenceCase.State.APPROVED)
    if state:
        qs = qs.filter(state=state)
    if isinstance(diagnosis, str):
        qs = qs.filter(diagnosis__code=diagnosis)
    elif diagnosis is not None:
        qs = qs.filter(diagnosis=diagnosis)
    return qs


def reference_case_live_get(*, study: Study) -> ReferenceCase | None:
    """The study's proposed or approved reference case, if any."""
    return (
        ReferenceCase.objects.filter(
            study=study,
            state__in=[ReferenceCase.State.PROPOSED, ReferenceCase.State.APPROVED],
        )
        .select_related("diagnosis", "proposed_by", "approved_by")
        .first()
    )


def reference_case_decision_comment(*, reference_case: ReferenceCase) -> str:
    """The comment the deciding expert gave (kept in the audit trail), or ''."""
    event = (
        AuditEvent.objects.filter(
            object_type=ReferenceCase._meta.label,
            object_id=str(reference_case.pk),
            verb__in=["reference.approve", "reference.reject"],
        )
        .order_by("-created_at", "-id")
        .first()
    )
    return (event.detail or {}).get("comment", "") if event else ""


def diagnosis_list_active() -> QuerySet[Diagnosis]:
    """Diagnoses experts may choose from."""
    return Diagnosis.objects.filter(active=True).order_by("name")


def expert_actions_context(*, study: Study, user: Any) -> dict[str, Any]:
    """Everything `templates/cases/_expert_actions.html` needs for one study."""
    from cases.permissions import is_expert

    return {
        "study": study,
        "is_expert": is_expert(user),
        "diagnoses": diagnosis_list_active(),
        "current_label": study_current_label(study=study),
        "label_history": label_history(study=study),
        "live_reference": reference_case_live_get(study=study),
    }


def study_result_for_api(*, study: Study) -> Any | None:
    """The study's similar-case result (a `retrieval.models.StudyResult` with
    `ordered_cases` set to its similar cases, best first), or None when there is none yet.
    Reads through the pipeline's selectors."""
    from retrieval.pipeline.selectors import similar_case_list, study_result_get

    result = study_result_get(study=study)
    if result is None:
        return None
    result.ordered_cases = similar_case_list(result=result)
    return result
