"""Reads of the review page: the similar cases of a study for a chosen k and diagnosis, the
vote distribution, the radiomics side-by-side rows, and whether each CAM overlay is ready.

The pipeline stores one answer per study (top `ILDREVIEW_RESULTS_TOP_K`, no filter; CAM overlays
follow from worker jobs). Another k, or a diagnosis filter that must still return k cases of
that diagnosis when the library has them, needs a fresh query. A worker runs it
(`retrieval.services.study_live_query_run`) on the study's stored slice embeddings and stores
the answer under a name keyed by (k, diagnosis, library checksum); these selectors only read
that file, so no model and no index is ever loaded in the web process. Until it exists the
results are `pending` (the page shows "computing" and polls); a case approved or removed
since changes the checksum, so the page asks again instead of showing an outdated answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from django.conf import settings
from django.core.files.storage import default_storage
from django.db.models import Count, Max, Sum
from django.http import Http404
from django.utils.text import slugify

from cases.models import Diagnosis, ReferenceCase, Study
from cases.permissions import can_view_study
from retrieval.engine.radiomics import MAIN_FEATURES
from retrieval.models import (
    ModelVersion,
    ReferenceEmbedding,
    SimilarCase,
    SliceFeatures,
    StudyResult,
)
from retrieval.pipeline.selectors import similar_case_list, study_result_get
from retrieval.selectors.review_explain import (
    hits_explain,
    library_radiomics_stats,
    radiomics_z_rows,
)

K_CHOICES = (4, 8, 12, 16, 24)
K_MAX = max(K_CHOICES)
CAM_SIDES = ("query", "reference")

_CLASS_NAMES = {
    "firstorder": "First order",
    "glcm": "GLCM",
    "glrlm": "GLRLM",
    "glszm": "GLSZM",
    "gldm": "GLDM",
    "ngtdm": "NGTDM",
    "shape2D": "Shape",
    "shape": "Shape",
}


def results_default_k() -> int:
    return settings.ILDREVIEW_RESULTS_TOP_K


@dataclass(frozen=True)
class RadiomicsRow:
    """One row of the side-by-side table: feature, its label, query and result values."""

    feature: str
    label: str
    query: float | None
    result: float | None


@dataclass(frozen=True)
class VoteBar:
    """One bar of the vote chart: a diagnosis and its share of the votes (0..1)."""

    code: str
    name: str
    share: float

    @property
    def percent(self) -> float:
        return round(100.0 * self.share, 1)


@dataclass
class ReviewHit:
    """One similar reference case as the review page shows it."""

    rank: int
    reference_case: ReferenceCase
    score: float
    n_hits: int
    query_slice_id: int
    reference_slice_id: int
    radiomics: list[RadiomicsRow] = field(default_factory=list)
    cam_ready: bool = False  # both CAM overlays are stored (else the page shows "computing")
    # Set by `review_explain.hits_explain`: the case similarity by one definition whatever the
    # filter, and on how many of the query's slices the case is the closest of the top cases.
    similarity: float | None = None
    matched: int | None = None
    query_slices: int | None = None
    radiomics_z: list = field(default_factory=list)

    @property
    def diagnosis(self) -> Diagnosis:
        return self.reference_case.diagnosis

    @property
    def similarity_percent(self) -> float:
        return round(100.0 * max(self.shown_score, 0.0), 1)

    @property
    def shown_score(self) -> float:
        """The score the page shows: the filter-independent similarity when known."""
        return self.similarity if self.similarity is not None else self.score


@dataclass
class ReviewResults:
    """What the right-hand column of the review page shows for one (k, diagnosis) choice.

    `live` says the cases come from a fresh query (another k or a filter) rather than the
    stored result; `votes`/`suggested` are always those of an unfiltered query (with a filter,
    every case has the same diagnosis, so they come from the stored result).
    """

    result: StudyResult | None
    model_version: ModelVersion | None
    k: int
    diagnosis: Diagnosis | None
    hits: list[ReviewHit]
    votes: list[VoteBar]
    suggested: Diagnosis | None
    key_slice_id: int | None
    live: bool = False
    library_count: int | None = None  # approved cases of the filtered diagnosis
    pending: bool = False  # a worker is asked for this (k, diagnosis); no hits yet
    # The abstain gate's verdict on the stored result (missing on older results: not abstained).
    abstained: bool = False
    abstain_reason: str = ""
    top_similarity: float | None = None
    vote_margin: float | None = None
    # How the cases were searched: "similar" (similar cases, the stored answer's way) or
    # "hierarchical" (class-first: the predicted class, then cases of that class only).
    mode: str = "similar"
    predicted_class: str | None = None  # hierarchical: the diagnosis code searched within

    @property
    def fewer_than_k(self) -> bool:
        return len(self.hits) < self.k


def feature_label(name: str) -> str:
    """'original_glcm_Contrast' -> 'GLCM · Contrast' (readable table rows)."""
    parts = name.split("_", 2)
    if len(parts) == 3 and parts[0] == "original":
        return f"{_CLASS_NAMES.get(parts[1], parts[1])} · {parts[2]}"
    return name


def _ordered_features(names: set[str]) -> list[str]:
    # The main features first, in their order; anything else stored afterwards, by name.
    known = [n for n in MAIN_FEATURES if n in names]
    return known + sorted(names - set(known))


def radiomics_rows(*, query: dict[str, float], result: dict[str, float]) -> list[RadiomicsRow]:
    """Side-by-side rows of two {feature: value} dicts (None where one side lacks it)."""
    return [
        RadiomicsRow(feature=n, label=feature_label(n), query=query.get(n), result=result.get(n))
        for n in _ordered_features(set(query) | set(result))
    ]


def _radiomics_by_slice(*, slice_ids: set[int], model_version: ModelVersion) -> dict[int, dict]:
    rows = SliceFeatures.objects.filter(
        slice_id__in=slice_ids, model_version=model_version
    ).values_list("slice_id", "radiomics_main")
    return {sid: dict(main or {}) for sid, main in rows}


def _vote_bars(votes: dict[str, float]) -> list[VoteBar]:
    names = dict(Diagnosis.objects.filter(code__in=list(votes)).values_list("code", "name"))
    bars = [VoteBar(code=c, name=names.get(c, c), share=float(s)) for c, s in votes.items()]
    return sorted(bars, key=lambda b: (-b.share, b.name))


def _suggested(votes: dict[str, float]) -> Diagnosis | None:
    """The heaviest diagnosis of a vote distribution (ties: code), as the engine picks it."""
    if not votes:
        return None
    code = min(votes, key=lambda c: (-votes[c], c))
    return Diagnosis.objects.filter(code=code).first()


def _stored_hits(cases: list[SimilarCase]) -> list[ReviewHit]:
    return [
        ReviewHit(
            rank=c.rank,
            reference_case=c.reference_case,
            score=c.score,
            n_hits=c.n_hits,
            query_slice_id=c.query_slice_id,
            reference_slice_id=c.reference_slice_id,
            cam_ready=bool(c.query_cam and c.reference_cam),
        )
        for c in cases
    ]


def review_cam_name(
    *, study_id: int, model_version_id: int, query_slice_id: int, reference_slice_id: int, side: str
) -> str:
    """Media name of an on-demand CAM overlay (outside the pipeline's `results/` folder, whose
    files the explain jobs own)."""
    return (
        f"review-cams/{study_id}/{model_version_id}/"
        f"q{query_slice_id}-r{reference_slice_id}-{side}.png"
    )


def library_checksum(*, model_version: ModelVersion) -> tuple[int, int, int]:
    """(count, max id, id sum) of the version's library embeddings: one aggregate query that
    changes whenever a case is embedded or removed (the live index's own sync key)."""
    agg = ReferenceEmbedding.objects.filter(model_version=model_version).aggregate(
        n=Count("id"), mx=Max("id"), s=Sum("id")
    )
    return (agg["n"] or 0, agg["mx"] or 0, int(agg["s"] or 0))


def live_query_name(
    *,
    study_id: int,
    model_version_id: int,
    k: int,
    diagnosis_code: str | None,
    checksum: tuple[int, int, int],
    mode: str = "similar",
) -> str:
    """Media name of a worker's answer to (k, diagnosis, search mode) for the library
    `checksum`; under the result's folder, so a new run of the study deletes it with the old
    result."""
    label = slugify(diagnosis_code) if diagnosis_code else "all"
    if mode == "hierarchical":
        label += "-classfirst"
    n, mx, total = checksum
    return f"results/{study_id}/{model_version_id}/live-k{k:02d}-{label}-{n}-{mx}-{total}.json"


def _live_answer(
    *, study: Study, model_version: ModelVersion, k: int, code: str | None, mode: str = "similar"
):
    """The stored worker answer for (k, code, mode) on the current library, or None (not yet)."""
    name = live_query_name(
        study_id=study.pk,
        model_version_id=model_version.pk,
        k=k,
        diagnosis_code=code,
        checksum=library_checksum(model_version=model_version),
        mode=mode,
    )
    try:
        with default_storage.open(name, "rb") as fh:
            return json.loads(fh.read())
    except (FileNotFoundError, ValueError):  # not written yet, or being written
        return None


def _live_hits(answer: dict) -> list[ReviewHit]:
    """Hits of a worker's live answer; cases deleted since are left out."""
    rows = answer["cases"]
    cases = ReferenceCase.objects.select_related("diagnosis", "study__patient").in_bulk(
        [r[0] for r in rows]
    )
    hits = []
    for rank, (case_id, score, n_hits, query_slice_id, reference_slice_id) in enumerate(
        rows, start=1
    ):
        rc = cases.get(case_id)
        if rc is None:  # retired and deleted between the query and now
            continue
        hits.append(
            ReviewHit(
                rank=rank,
                reference_case=rc,
                score=float(score),
                n_hits=int(n_hits),
                query_slice_id=query_slice_id,
                reference_slice_id=reference_slice_id,
            )
        )
    return hits


def _cams_mark_ready(*, hits: list[ReviewHit], study: Study, result: StudyResult) -> None:
    """Set `cam_ready` of live hits: stored with the result's case of that pair, or on demand."""
    stored = {
        (q, r)
        for q, r, qc, rc in result.cases.values_list(
            "query_slice_id", "reference_slice_id", "query_cam", "reference_cam"
        )
        if qc and rc
    }
    for hit in hits:
        pair = (hit.query_slice_id, hit.reference_slice_id)
        hit.cam_ready = pair in stored or all(
            default_storage.exists(
                review_cam_name(
                    study_id=study.pk,
                    model_version_id=result.model_version_id,
                    query_slice_id=pair[0],
                    reference_slice_id=pair[1],
                    side=side,
                )
            )
            for side in CAM_SIDES
        )


def study_review_results(
    *,
    study: Study,
    k: int | None = None,
    diagnosis_code: str | None = None,
    mode: str | None = None,
) -> ReviewResults:
    """The similar cases of `study` for the review page (see module docstring).

    `k` is clamped to 1..K_MAX (default `ILDREVIEW_RESULTS_TOP_K`); `diagnosis_code` keeps
    only reference cases of that diagnosis, k of them when the library has that many.
    Unknown diagnosis codes are ignored (no filter). `mode` "hierarchical" searches class
    first (always a worker's live answer); anything else is the similar-case search. The
    suggestion and votes stay those of the similar-case search in either mode.
    """
    mode = "hierarchical" if mode == "hierarchical" else "similar"
    predicted_class = None
    k = min(max(int(k or results_default_k()), 1), K_MAX)
    diagnosis = Diagnosis.objects.filter(code=diagnosis_code).first() if diagnosis_code else None
    code = diagnosis.code if diagnosis else None
    result = study_result_get(study=study)
    if result is None:
        return ReviewResults(
            result=None,
            model_version=None,
            k=k,
            diagnosis=diagnosis,
            hits=[],
            votes=[],
            suggested=None,
            key_slice_id=None,
        )
    version = result.model_version
    stored = list(
        result.cases.select_related(
            "reference_case__diagnosis", "reference_case__study__patient"
        ).order_by("rank")
    )
    votes = dict(result.votes or {})
    suggested = result.suggested_diagnosis
    live = pending = False
    if code is None and mode == "similar" and k <= len(stored):
        hits = _stored_hits(stored[:k])
    else:
        answer = _live_answer(study=study, model_version=version, k=k, code=code, mode=mode)
        if answer is None:
            hits, pending = [], True
        elif answer["cases"] is not None:
            hits = _live_hits(answer)
            live = True
            predicted_class = answer.get("predicted_class")
            _cams_mark_ready(hits=hits, study=study, result=result)
            if code is None and mode == "similar":
                votes = dict(answer["votes"])
                suggested = None if answer.get("abstained") else _suggested(votes) or suggested
        else:
            # No stored embeddings to query with: the best we have is the stored answer.
            pick = [c for c in stored if code is None or c.reference_case.diagnosis.code == code]
            hits = _stored_hits(pick[:k])
    slice_ids = {h.query_slice_id for h in hits} | {h.reference_slice_id for h in hits}
    radiomics = _radiomics_by_slice(slice_ids=slice_ids, model_version=version)
    stats = library_radiomics_stats(model_version=version)
    for hit in hits:
        hit.radiomics = radiomics_rows(
            query=radiomics.get(hit.query_slice_id, {}),
            result=radiomics.get(hit.reference_slice_id, {}),
        )
        hit.radiomics_z = radiomics_z_rows(rows=hit.radiomics, stats=stats)
    if hits:
        hits_explain(hits=hits, result=result)
    library_count = None
    if diagnosis is not None:
        library_count = (
            ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED, diagnosis=diagnosis)
            .exclude(study=study)
            .count()
        )
    return ReviewResults(
        result=result,
        model_version=version,
        k=k,
        diagnosis=diagnosis,
        hits=hits,
        votes=_vote_bars(votes),
        suggested=suggested,
        key_slice_id=result.key_slice_id,
        live=live,
        library_count=library_count,
        pending=pending,
        **result_gate(result),
        mode=mode,
        predicted_class=predicted_class,
    )


def _gate_value(result: StudyResult, key: str):
    """A gate key of the result: a field of that name, or a key of a JSON field holding it."""
    if hasattr(result, key):
        return getattr(result, key)
    for holder in ("gate", "details", "extra"):
        data = getattr(result, holder, None)
        if isinstance(data, dict) and key in data:
            return data[key]
    return None


def result_gate(result: StudyResult) -> dict:
    """The abstain gate's keys of a stored result (absent keys: not abstained)."""
    top, margin = _gate_value(result, "top_similarity"), _gate_value(result, "vote_margin")
    return {
        "abstained": bool(_gate_value(result, "abstained")),
        "abstain_reason": str(_gate_value(result, "abstain_reason") or ""),
        "top_similarity": float(top) if top is not None else None,
        "vote_margin": float(margin) if margin is not None else None,
    }


def stored_cam_name(*, study: Study, query_slice_id: int, reference_slice_id: int, side: str):
    """Media name of a CAM overlay the pipeline stored for this slice pair of the study's
    latest result, or None."""
    result = study_result_get(study=study)
    if result is None:
        return None
    case = (
        SimilarCase.objects.filter(
            result=result, query_slice_id=query_slice_id, reference_slice_id=reference_slice_id
        )
        .order_by("rank")
        .first()
    )
    if case is None:
        return None
    field_file = case.query_cam if side == "query" else case.reference_cam
    return field_file.name or None


def similar_case_get_visible(*, user, pk: int, side: str) -> SimilarCase:
    """The similar case `pk` if `user` may see the CAM overlay of its `side`, else Http404:
    the same rule as the review page's overlay (`retrieval.views.review.review_cam`): the
    study the result answers must be visible, and for the reference side the reference slice's
    study too (an approved reference case is; a retired one no longer is for clinicians)."""
    case = (
        SimilarCase.objects.select_related("result__study", "reference_slice__series__study")
        .filter(pk=pk)
        .first()
    )
    if case is None or side not in ("query", "reference"):
        raise Http404("No such overlay.")
    if not can_view_study(user, case.result.study):
        raise Http404("No such overlay.")
    if side == "reference" and not can_view_study(user, case.reference_slice.series.study):
        raise Http404("No such overlay.")
    return case


def study_result_for_api(*, study: Study) -> StudyResult | None:
    """The study's similar-case result with `ordered_cases` set to its similar cases, best
    first (what the REST API serialises), or None when there is none yet."""
    result = study_result_get(study=study)
    if result is None:
        return None
    result.ordered_cases = similar_case_list(result=result)
    return result
