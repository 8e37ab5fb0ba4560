"""Reads of the cases app used by the pages, the expert review workflow and the REST API.

Every read that returns studies or their images goes through the visibility rules of
`cases.permissions` so that a clinician never sees another clinician's study: lists are filtered
in the query, single objects raise `Http404` (not 403, which would confirm the object exists).
"""

from __future__ import annotations

from typing import Any

from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import Http404

from cases import permissions
from cases.models import (
    Diagnosis,
    ExpertLabel,
    ReadingSession,
    ReferenceCase,
    Series,
    Slice,
    Study,
)


def user_role(*, user: Any) -> str | None:
    """ "clinician", "expert", "admin" or None (see `cases.permissions.user_role`)."""
    return permissions.user_role(user)


def _latest_label() -> QuerySet[ExpertLabel]:
    return ExpertLabel.objects.filter(study=OuterRef("pk")).order_by("-created_at", "-id")


def study_list_visible(
    *,
    user: Any,
    status: str | None = None,
    q: str | None = None,
    diagnosis: Diagnosis | str | None = None,
) -> QuerySet[Study]:
    """Studies in `user`'s worklist, newest first: every study for experts and admins, the
    user's own uploads for everyone else (approved reference cases of other users are reached
    through the library, not the worklist).

    `status` filters on `Study.status`; `q` searches the patient's display id, the description
    and the StudyInstanceUID; `diagnosis` (a Diagnosis or its code) keeps studies whose
    *current* (latest) expert label has that diagnosis.
    """
    if not permissions._active(user):
        return Study.objects.none()
    qs = Study.objects.select_related("patient", "uploaded_by").order_by("-created_at", "-id")
    if not permissions.sees_all_studies(user):
        qs = qs.filter(uploaded_by=user)
    if status:
        qs = qs.filter(status=status)
    if q:
        q = q.strip()
        qs = qs.filter(
            Q(patient__display_id__icontains=q)
            | Q(description__icontains=q)
            | Q(study_instance_uid__icontains=q)
        )
    if diagnosis:
        code = diagnosis.code if isinstance(diagnosis, Diagnosis) else diagnosis
        # An alias rather than an annotation, so callers may still annotate the current label
        # under their own names.
        qs = qs.alias(_worklist_label_code=Subquery(_latest_label().values("diagnosis__code")[:1]))
        qs = qs.filter(_worklist_label_code=code)
    return qs


def study_list_with_current_label(*, studies: QuerySet[Study]) -> QuerySet[Study]:
    """Annotate `current_label_code` / `current_label_name` (None when unlabelled) in one query,
    for lists that show the current diagnosis of many studies."""
    latest = _latest_label()
    return studies.annotate(
        current_label_code=Subquery(latest.values("diagnosis__code")[:1]),
        current_label_name=Subquery(latest.values("diagnosis__name")[:1]),
    )


def study_get_visible(*, user: Any, pk: int) -> Study:
    """The study `pk` if `user` may see it (`cases.permissions.can_view_study`), else Http404."""
    study = (
        Study.objects.select_related("patient", "uploaded_by").filter(pk=pk).first()
        if str(pk).isdigit()
        else None
    )
    if study is None or not permissions.can_view_study(user, study):
        raise Http404("No such study.")
    return study


def slice_get_visible(*, user: Any, pk: int) -> Slice:
    """The slice `pk` if `user` may see its study, else Http404."""
    slice_ = Slice.objects.select_related("series__study").filter(pk=pk).first()
    if slice_ is None or not permissions.can_view_study(user, slice_.series.study):
        raise Http404("No such slice.")
    return slice_


def slice_get(*, pk: int) -> Slice | None:
    """The slice `pk` with its series, or None (no visibility check: for slices the caller
    already reached through a visible study)."""
    return Slice.objects.select_related("series").filter(pk=pk).first()


def series_list(*, study: Study) -> list[Series]:
    """The study's series in series-number order."""
    return list(study.series.order_by("series_number", "id"))


def series_slice_ids(*, series: Series) -> list[int]:
    """Primary keys of the series' slices in order along the slice normal (for the viewer)."""
    return list(series.slices.order_by("index").values_list("pk", flat=True))


def study_current_label(*, study: Study) -> ExpertLabel | None:
    """The study's current diagnosis: its latest expert label, or None."""
    return _labels(study=study).first()


def study_label_history(*, study: Study) -> list[ExpertLabel]:
    """Every expert label of the study, newest first (the first one is the current label)."""
    return list(_labels(study=study))


def _labels(*, study: Study) -> QuerySet[ExpertLabel]:
    return (
        ExpertLabel.objects.filter(study=study)
        .select_related("diagnosis", "expert")
        .order_by("-created_at", "-id")
    )


def study_reference_cases(*, study: Study) -> list[ReferenceCase]:
    """Every reference case ever made of the study (all states), newest first."""
    return list(
        study.reference_cases.select_related("diagnosis", "proposed_by", "approved_by").order_by(
            "-proposed_at", "-id"
        )
    )


def study_thumbnail_slice(*, study: Study) -> Slice | None:
    """The middle slice of the study's first series (its library thumbnail), or None."""
    first = study.series.order_by("series_number", "id").first()
    if first is None:
        return None
    slices = first.slices.order_by("index")
    count = slices.count()
    return slices[count // 2] if count else None


def reference_library_list(*, diagnosis: Diagnosis | str | None = None) -> QuerySet[ReferenceCase]:
    """The approved reference library (every logged-in user may browse it), newest first,
    optionally of one diagnosis (a Diagnosis or its code)."""
    qs = (
        ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED)
        .select_related("study__patient", "diagnosis", "approved_by")
        .order_by("-decided_at", "-proposed_at", "-id")
    )
    if diagnosis:
        if isinstance(diagnosis, Diagnosis):
            qs = qs.filter(diagnosis=diagnosis)
        else:
            qs = qs.filter(diagnosis__code=diagnosis)
    return qs


def diagnosis_list(*, active_only: bool = True) -> QuerySet[Diagnosis]:
    """Diagnoses of the taxonomy by name: those experts may choose from (filter menus, label
    forms), or every one with `active_only=False`."""
    qs = Diagnosis.objects.order_by("name")
    return qs.filter(active=True) if active_only else qs


# --- the expert review workflow: the approval queue and the expert actions' context ---------


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
    qs = ReferenceCase.objects.select_related(
        "study__patient", "diagnosis", "proposed_by", "approved_by"
    ).order_by("-proposed_at", "-id")
    if not (permissions.is_expert(user) or permissions.is_admin(user)):
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


def expert_actions_context(*, study: Study, user: Any) -> dict[str, Any]:
    """Everything `templates/cases/_expert_actions.html` needs for one study."""
    return {
        "study": study,
        "is_expert": permissions.is_expert(user),
        "diagnoses": diagnosis_list(),
        "current_label": study_current_label(study=study),
        "label_history": study_label_history(study=study),
        "live_reference": reference_case_live_get(study=study),
    }


# --- approval evidence and reading-time metrics ------------------------------------------------


def study_ids_opened_by(*, user: Any, study_ids: list[int]) -> set[int]:
    """The studies among `study_ids` whose review page `user` has opened (a ReadingSession)."""
    if not study_ids or not getattr(user, "pk", None):
        return set()
    return set(
        ReadingSession.objects.filter(expert=user, study_id__in=study_ids).values_list(
            "study_id", flat=True
        )
    )


def study_suggestion(*, study: Study) -> dict[str, Any] | None:
    """The retrieval's latest suggestion for `study`: {"diagnosis": Diagnosis | None,
    "abstained": bool, "abstain_reason": str}, or None when there is no result yet.

    Read through the reverse relation `Study.results` that the retrieval app's StudyResult
    declares, so that this app still imports nothing from `retrieval`."""
    manager = getattr(study, "results", None)
    if manager is None:
        return None
    result = manager.select_related("suggested_diagnosis").order_by("-created_at").first()
    if result is None:
        return None
    return {
        "diagnosis": result.suggested_diagnosis,
        "abstained": bool(getattr(result, "abstained", False)),
        "abstain_reason": str(getattr(result, "abstain_reason", "") or ""),
    }


def _median(values: list[float]) -> float | None:
    import statistics

    return float(statistics.median(values)) if values else None


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


READING_BINS_S = (30, 60, 120, 300, 600)


def reading_time_summary() -> dict[str, Any]:
    """Distribution of decided readings: count, median and quartiles of the seconds from
    opening the review to the decision, median similar cases opened, a histogram, and the
    same per diagnosis decided (the label set at the end of the reading)."""
    rows = list(
        ReadingSession.objects.filter(reading_seconds__isnull=False).values_list(
            "reading_seconds", "results_opened", "label__diagnosis__name"
        )
    )

    def summary(items: list[tuple[float, int, str | None]]) -> dict[str, Any]:
        seconds = [float(r[0]) for r in items]
        opened = [float(r[1]) for r in items]
        return {
            "count": len(items),
            "median_s": _median(seconds),
            "p25_s": _quantile(seconds, 0.25),
            "p75_s": _quantile(seconds, 0.75),
            "median_opened": _median(opened),
        }

    bins = []
    lower = 0
    for upper in (*READING_BINS_S, None):
        n = sum(1 for r in rows if r[0] >= lower and (upper is None or r[0] < upper))
        label = f"{lower}–{upper} s" if upper is not None else f"≥ {lower} s"
        bins.append({"label": label, "count": n})
        lower = upper or lower
    most = max((b["count"] for b in bins), default=0) or 1
    for b in bins:
        b["percent"] = round(100.0 * b["count"] / most, 1)
    by_diagnosis = {}
    for r in rows:
        by_diagnosis.setdefault(r[2] or "(label deleted)", []).append(r)
    return {
        "overall": summary(rows),
        "bins": bins,
        "by_diagnosis": [
            {"diagnosis": name, **summary(items)} for name, items in sorted(by_diagnosis.items())
        ],
        "undecided": ReadingSession.objects.filter(decided_at__isnull=True).count(),
    }
