"""The review page (the main screen), its progress endpoint, Retry, and CAM images.

Its URLs keep their names in the `cases` namespace (`cases:study_review`, ...; joined there by
ildreview/urls.py). Thin views: visibility through `cases.selectors` (a study the user may not
see is a 404, as on the study page), the viewer through `cases.views.viewer`, similar cases
through `retrieval.selectors.review`, writes through `retrieval.services`.
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from cases import permissions, selectors
from cases.models import Study
from cases.services.reading import reading_session_open, reading_session_result_opened
from cases.views.viewer import slice_viewer_context
from retrieval.forms import ReviewFilterForm
from retrieval.pipeline.progress import study_queue_get
from retrieval.pipeline.runtime import PipelineDataError
from retrieval.pipeline.selectors import study_result_get
from retrieval.selectors.review import (
    CAM_SIDES,
    K_CHOICES,
    review_cam_name,
    stored_cam_name,
    study_review_results,
)
from retrieval.selectors.review_quality import series_quality_warnings
from retrieval.selectors.viewer import review_viewer_config
from retrieval.services import review_cam_request, study_live_query_request
from retrieval.services import study_retry as study_retry_service


def _cam_pending_png() -> bytes:
    """What a CAM URL answers (with 202) while a worker computes the overlay: a transparent
    PNG, a valid image (no broken-image icon) that the page's script replaces when ready."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


CAM_PENDING_PNG = _cam_pending_png()

FINISHED = (Study.Status.READY_FOR_REVIEW, Study.Status.REVIEWED)


def can_retry(user) -> bool:
    """Experts (and admins) may re-queue a failed study."""
    return permissions.is_expert(user) or permissions.is_admin(user)


def progress_text(*, study: Study, queue, percent: int) -> str:
    """One line saying honestly where the study stands: waiting in the queue (position and
    estimate) until a worker takes it, waiting between stages, or the stage running."""
    if study.status == Study.Status.UPLOADED:
        return "Uploaded, not queued yet"
    if study.status != Study.Status.PROCESSING:
        return study.get_status_display()
    if queue is not None and queue.state == "queued":
        wait = "wait unknown" if queue.estimate_s is None else f"about {queue.estimate_s} s"
        return f"Waiting in queue (position {queue.position} of {queue.total}, {wait})"
    if queue is not None:
        return f"{(queue.stage or 'Stage').capitalize()} done, waiting for a worker"
    stage = study.progress_stage or "starting"
    return f"Running: {stage} ({percent}%)"


def progress_payload(*, study: Study, user) -> dict:
    """What the progress bar script polls for (see static/progress.js). While the study waits
    (its run not started, or between two stages) `queue` says where it stands and `waiting`
    is true (the bar then shows motion, never a frozen percent); a run that has not started
    shows 0 %, never a stage's percent of an earlier run. `text` is the line to show."""
    queue = study_queue_get(study_id=study.pk) if study.status == Study.Status.PROCESSING else None
    waiting = queue is not None and queue.state == "queued"
    percent = 0 if waiting else int(study.progress_percent)
    return {
        "text": progress_text(study=study, queue=queue, percent=percent),
        "waiting": queue is not None or study.status == Study.Status.UPLOADED,
        "id": study.pk,
        "status": study.status,
        "status_display": study.get_status_display(),
        "stage": "queued" if waiting else study.progress_stage,
        "percent": 0 if waiting else int(study.progress_percent),
        "queue": queue.as_dict() if queue else None,
        "message": study.status_message,
        "finished": study.status in FINISHED,
        "failed": study.status == Study.Status.FAILED,
        "can_retry": study.status == Study.Status.FAILED and can_retry(user),
        "review_url": reverse("cases:study_review", args=[study.pk]),
    }


@require_GET
def study_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Query study on the left, similar reference cases on the right, progress while the study
    is processed, expert actions below."""
    study = selectors.study_get_visible(user=request.user, pk=pk)
    diagnoses = list(selectors.diagnosis_list())
    form = ReviewFilterForm(request.GET or None, diagnoses=diagnoses)
    results = _review_results(
        study=study, k=form.value("k"), code=form.value("diagnosis"), mode=form.value("mode")
    )
    hits = results.hits
    wanted = form.value("sel")
    selected = next((h for h in hits if h.rank == wanted), hits[0] if hits else None)
    viewer = slice_viewer_context(
        study=study,
        focus_slice_id=selected.query_slice_id if selected else results.key_slice_id,
        wanted_index=request.GET.get("slice"),
        wanted_preset=request.GET.get("preset"),
    )
    cam_urls = {
        h.rank: {
            side: reverse(
                "cases:review_cam", args=[study.pk, h.query_slice_id, h.reference_slice_id, side]
            )
            for side in CAM_SIDES
        }
        for h in hits
    }
    for h in hits:
        h.query_cam_url = cam_urls[h.rank]["query"]
        h.reference_cam_url = cam_urls[h.rank]["reference"]
    live_status_url = None
    if results.pending:
        live_status_url = reverse("cases:review_live_status", args=[study.pk])
        live_status_url += "?" + request.GET.urlencode()
    progress = progress_payload(study=study, user=request.user)
    if permissions.is_expert(request.user):
        reading_session_open(study=study, expert=request.user)
    lung_slices = results.result.query_slice_count if results.result is not None else None
    return render(
        request,
        "retrieval/review.html",
        {
            "study": study,
            "form": form,
            "results": results,
            "hits": hits,
            "selected": selected,
            "k_choices": K_CHOICES,
            "diagnoses": diagnoses,
            "progress": progress,
            "quality_warnings": series_quality_warnings(
                series=viewer.get("current_series"), lung_slice_count=lung_slices
            ),
            "processing": study.status in (Study.Status.UPLOADED, Study.Status.PROCESSING),
            "can_retry": can_retry(request.user)
            and study.status in (Study.Status.FAILED, Study.Status.UPLOADED),
            **viewer,
            "review_viewer": review_viewer_config(
                user=request.user,
                study=study,
                series=viewer["current_series"],
                start_index=viewer["slice_index"],
                preset=viewer["preset"],
                hits=hits,
                selected_rank=selected.rank if selected else None,
            ),
            "review_config": {
                "progressUrl": reverse("cases:study_progress", args=[study.pk]),
                "selected": selected.rank if selected else None,
                "hits": [
                    {
                        "rank": h.rank,
                        "querySlice": h.query_slice_id,
                        "queryCam": cam_urls[h.rank]["query"],
                        "camReady": h.cam_ready,
                    }
                    for h in hits
                ],
                "liveStatusUrl": live_status_url,
                "eventUrl": reverse("cases:review_event", args=[study.pk])
                if permissions.is_expert(request.user)
                else None,
            },
        },
    )


def _review_results(*, study: Study, k, code, mode=None):
    """The page's results; for a (k, diagnosis, search mode) no worker has answered yet, ask
    one. In eager mode (tests, development without a broker) the job has run by then: read
    again."""
    results = study_review_results(study=study, k=k, diagnosis_code=code, mode=mode)
    if results.pending:
        study_live_query_request(
            study=study,
            model_version=results.model_version,
            k=results.k,
            diagnosis_code=results.diagnosis.code if results.diagnosis else None,
            mode=results.mode,
        )
        results = study_review_results(study=study, k=k, diagnosis_code=code, mode=mode)
    return results


@require_POST
def review_event(request: HttpRequest, pk: int) -> JsonResponse:
    """Reading-time events of the review page's script (experts): `{"event": "result_opened",
    "rank": N}` (JSON or form fields) counts a similar case opened during the reading."""
    if not permissions.is_expert(request.user):
        raise PermissionDenied("Only experts' readings are recorded.")
    study = selectors.study_get_visible(user=request.user, pk=pk)
    data = request.POST
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            return JsonResponse({"detail": "The body is not valid JSON."}, status=400)
        if not isinstance(data, dict):
            return JsonResponse({"detail": "Send a JSON object."}, status=400)
    if data.get("event") != "result_opened":
        return JsonResponse({"detail": "Unknown event; expected 'result_opened'."}, status=400)
    try:
        rank = int(data.get("rank"))
        session = reading_session_result_opened(study=study, expert=request.user, rank=rank)
    except (TypeError, ValueError):
        return JsonResponse({"detail": "rank must be a whole number from 1 to 1000."}, status=400)
    return JsonResponse({"results_opened": session.results_opened})


@require_GET
def review_live_status(request: HttpRequest, pk: int) -> JsonResponse:
    """{"ready": bool} for the page's (k, diagnosis) choice (polled while it is computed)."""
    study = selectors.study_get_visible(user=request.user, pk=pk)
    form = ReviewFilterForm(request.GET or None, diagnoses=list(selectors.diagnosis_list()))
    results = _review_results(
        study=study, k=form.value("k"), code=form.value("diagnosis"), mode=form.value("mode")
    )
    response = JsonResponse({"ready": not results.pending})
    response["Cache-Control"] = "no-store"
    return response


@require_GET
def study_progress(request: HttpRequest, pk: int) -> JsonResponse:
    """Status, stage and percent of the study's processing, for the live progress bars."""
    study = selectors.study_get_visible(user=request.user, pk=pk)
    response = JsonResponse(progress_payload(study=study, user=request.user))
    response["Cache-Control"] = "no-store"
    return response


@require_POST
def study_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """Queue a failed study again (experts and admins)."""
    if not can_retry(request.user):
        raise PermissionDenied("Only experts may retry processing.")
    study = selectors.study_get_visible(user=request.user, pk=pk)
    try:
        study_retry_service(study=study, actor=request.user)
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "Processing was queued again.")
    return redirect("cases:study_review", pk=study.pk)


@require_GET
def review_cam(
    request: HttpRequest, pk: int, query_slice: int, reference_slice: int, side: str
) -> HttpResponse:
    """PNG CAM overlay of one (query slice, reference slice) pair of the study: the stored
    file, else 202 with a placeholder PNG while a worker is asked to compute it."""
    if side not in CAM_SIDES:
        raise Http404("No such overlay.")
    study = selectors.study_get_visible(user=request.user, pk=pk)
    query = selectors.slice_get_visible(user=request.user, pk=query_slice)
    if query.series.study_id != study.pk:
        raise Http404("No such slice in this study.")
    reference = selectors.slice_get_visible(user=request.user, pk=reference_slice)
    result = study_result_get(study=study)
    if result is None:
        raise Http404("This study has no results yet.")
    names = [
        stored_cam_name(
            study=study, query_slice_id=query.pk, reference_slice_id=reference.pk, side=side
        ),
        review_cam_name(
            study_id=study.pk,
            model_version_id=result.model_version_id,
            query_slice_id=query.pk,
            reference_slice_id=reference.pk,
            side=side,
        ),
    ]
    name = next((n for n in names if n and default_storage.exists(n)), None)
    if name is None:
        try:
            review_cam_request(
                study=study,
                model_version=result.model_version,
                query_slice_id=query.pk,
                reference_slice_id=reference.pk,
            )
        except PipelineDataError as exc:
            # Eager mode only (the job ran here): the model artefact or a slice file is missing.
            return HttpResponse(str(exc), status=404, content_type="text/plain")
        name = next((n for n in names if n and default_storage.exists(n)), None)
    if name is None:
        response = HttpResponse(CAM_PENDING_PNG, status=202, content_type="image/png")
        response["Retry-After"] = "2"
        response["Cache-Control"] = "no-store"
        return response
    response = FileResponse(default_storage.open(name, "rb"), content_type="image/png")
    # Patient data: the browser may keep it, shared caches must not.
    response["Cache-Control"] = "private, max-age=600"
    return response
