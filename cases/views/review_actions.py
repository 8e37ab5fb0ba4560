"""Expert actions as server-rendered POST endpoints, and the approval queue page.

Views are thin: they check the role, validate the form, call one service and redirect back
with a message. Clinicians get 403 on every endpoint here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from cases.forms_review import ExpertLabelForm, ReferenceDecisionForm, ReferenceProposeForm
from cases.models import ReferenceCase
from cases.permissions import is_admin, is_expert
from cases.selectors import (
    reference_case_list_visible,
    reference_case_pending_list,
    study_get_visible,
    study_ids_opened_by,
    study_suggestion,
    study_thumbnail_slice,
)
from cases.services import review as review_services
from cases.services.reading import reading_session_decide


def expert_required(view):
    """403 for anyone who is not an expert."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if not is_expert(request.user):
            raise PermissionDenied("Only experts may do this.")
        return view(request, *args, **kwargs)

    return wrapper


def study_page_url(pk: int) -> str:
    """URL of the page that shows the study (the review page when there is one)."""
    for name in ("cases:study_review", "cases:study_detail"):
        try:
            return reverse(name, args=[pk])
        except NoReverseMatch:
            continue
    return reverse("cases:worklist")


def _back(request: HttpRequest, fallback: str) -> HttpResponseRedirect:
    """Redirect to the form's `next` field when it is a safe local URL, else to `fallback`."""
    target = request.POST.get("next") or ""
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return HttpResponseRedirect(target)
    return HttpResponseRedirect(fallback)


def _form_errors(form) -> str:
    parts = []
    for name, errs in form.errors.items():
        text = " ".join(errs)
        parts.append(text if name == "__all__" else f"{form.fields[name].label or name}: {text}")
    return "; ".join(parts)


def _report(request: HttpRequest, exc: ValidationError) -> None:
    messages.error(request, " ".join(exc.messages))


def _study_form_action(
    request: HttpRequest,
    pk: int,
    *,
    form_class: type[forms.Form],
    service: Callable[..., Any],
    refused: str,
    done: Callable[[Any], str],
) -> HttpResponse:
    """Validate the form (a diagnosis and a comment), call `service(study=, expert=,
    diagnosis=, comment=)`, report the outcome as a message (`refused: <form errors>`, the
    service's ValidationError, or `done(result)`) and go back to the study's page."""
    study = study_get_visible(user=request.user, pk=pk)
    form = form_class(request.POST)
    if not form.is_valid():
        messages.error(request, f"{refused}: {_form_errors(form)}")
    else:
        try:
            result = service(
                study=study,
                expert=request.user,
                diagnosis=form.cleaned_data["diagnosis"],
                comment=form.cleaned_data["comment"],
            )
        except ValidationError as exc:
            _report(request, exc)
        else:
            messages.success(request, done(result))
    return _back(request, study_page_url(study.pk))


def _label_set_and_close_reading(*, study, expert, diagnosis, comment):
    """Set the label, then close the expert's running reading of the study (its time)."""
    label = review_services.expert_label_set(
        study=study, expert=expert, diagnosis=diagnosis, comment=comment
    )
    reading_session_decide(study=study, expert=expert, label=label)
    return label


@require_POST
@expert_required
def label_set(request: HttpRequest, pk: int) -> HttpResponse:
    """Confirm the suggestion, or set / correct the study's diagnosis."""
    return _study_form_action(
        request,
        pk,
        form_class=ExpertLabelForm,
        service=_label_set_and_close_reading,
        refused="Label not saved",
        done=lambda label: f"Diagnosis set to {label.diagnosis.name}.",
    )


@require_POST
@expert_required
def reference_propose(request: HttpRequest, pk: int) -> HttpResponse:
    """Propose the study as a reference case (with its current diagnosis unless one is given)."""
    return _study_form_action(
        request,
        pk,
        form_class=ReferenceProposeForm,
        service=review_services.reference_case_propose,
        refused="Not proposed",
        done=lambda reference: (
            f"Proposed as a reference case of {reference.diagnosis.name}; "
            "another expert must approve it."
        ),
    )


@require_GET
def approval_queue(request: HttpRequest) -> HttpResponse:
    """Proposed cases awaiting a second expert, and the approved library (to retire from).

    Experts decide; admins see the queue and may retire cases but not approve them."""
    expert = is_expert(request.user)
    if not (expert or is_admin(request.user)):
        raise PermissionDenied("Only experts or admins may see the approval queue.")
    pending = list(reference_case_pending_list())
    opened = study_ids_opened_by(user=request.user, study_ids=[c.study_id for c in pending])
    for case in pending:
        case.study_url = study_page_url(case.study_id)
        case.can_decide = expert and case.proposed_by_id != request.user.pk
        case.is_own = case.proposed_by_id == request.user.pk
        case.opened = case.study_id in opened
        case.thumbnail = study_thumbnail_slice(study=case.study)
        case.suggestion = study_suggestion(study=case.study)
    approved = list(
        reference_case_list_visible(user=request.user, state=ReferenceCase.State.APPROVED)[:50]
    )
    for case in approved:
        case.study_url = study_page_url(case.study_id)
    return render(
        request,
        "cases/approvals.html",
        {"pending": pending, "approved": approved, "is_expert": expert},
    )


def _case_name(reference: ReferenceCase) -> str:
    """How messages name a reference case: by its patient's display id, never a row id."""
    return f"Reference case {reference.study.patient.display_id} ({reference.diagnosis.name})"


def _decide(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    reference = get_object_or_404(ReferenceCase, pk=pk)
    form = ReferenceDecisionForm(request.POST)
    valid = form.is_valid()
    comment = form.cleaned_data["comment"] if valid else ""
    confirmed = valid and form.cleaned_data["confirm_unopened"]
    if (
        action == "approve"
        and not confirmed
        and reference.state == ReferenceCase.State.PROPOSED
        and reference.proposed_by_id != request.user.pk
        and reference.study_id
        not in study_ids_opened_by(user=request.user, study_ids=[reference.study_id])
    ):
        messages.error(
            request,
            f"Not approved: you have not opened the review of "
            f"{reference.study.patient.display_id}. Open it first, or tick "
            "“approve without opening the review”.",
        )
        return _back(request, reverse("review:approvals"))
    try:
        if action == "approve":
            review_services.reference_case_approve(
                reference_case=reference, expert=request.user, comment=comment
            )
            messages.success(
                request,
                f"{_case_name(reference)} approved; it is being added to the library's index.",
            )
        else:
            review_services.reference_case_reject(
                reference_case=reference, expert=request.user, comment=comment
            )
            messages.success(request, f"{_case_name(reference)} rejected.")
    except ValidationError as exc:
        _report(request, exc)
    return _back(request, reverse("review:approvals"))


@require_POST
@expert_required
def reference_approve(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "approve")


@require_POST
@expert_required
def reference_reject(request: HttpRequest, pk: int) -> HttpResponse:
    return _decide(request, pk, "reject")


@require_POST
def reference_retire(request: HttpRequest, pk: int) -> HttpResponse:
    """Take an approved case out of the library (experts and admins)."""
    if not (is_expert(request.user) or is_admin(request.user)):
        raise PermissionDenied("Only experts or admins may retire reference cases.")
    reference = get_object_or_404(ReferenceCase, pk=pk)
    try:
        review_services.reference_case_retire(reference_case=reference, actor=request.user)
    except ValidationError as exc:
        _report(request, exc)
    else:
        messages.success(
            request,
            f"{_case_name(reference)} retired; it is being removed from the library's index.",
        )
    return _back(request, reverse("review:approvals"))
