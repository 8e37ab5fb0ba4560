"""Server-rendered pages of the cases app (thin: reads via selectors, writes via services).

Visibility is enforced by the selectors: a study a user may not see is a 404, exactly as if it
did not exist.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from cases import permissions, selectors
from cases.forms import LibraryFilterForm, UploadForm, WorklistFilterForm
from cases.middleware import dropped_files_reason
from cases.services.ingestion import IngestionError
from cases.services.upload import study_upload
from cases.views.viewer import slice_viewer_context

WORKLIST_PAGE_SIZE = 25
LIBRARY_PAGE_SIZE = 24


@require_GET
def worklist(request: HttpRequest) -> HttpResponse:
    """Studies visible to the user with status, progress and current diagnosis; filters by
    status, diagnosis and free text; paginated."""
    form = WorklistFilterForm(request.GET or None)
    studies = selectors.study_list_with_current_label(
        studies=selectors.study_list_visible(user=request.user, **form.filters())
    )
    page = Paginator(studies, WORKLIST_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "cases/worklist.html",
        {
            "form": form,
            "page_obj": page,
            "can_upload": permissions.can_upload(request.user),
            "role": selectors.user_role(user=request.user),
        },
    )


@require_http_methods(["GET", "POST"])
def upload(request: HttpRequest) -> HttpResponse:
    """Upload DICOM files or zip archives; errors are shown in the page with status 400."""
    if not permissions.can_upload(request.user):
        raise PermissionDenied("You may not upload studies.")
    if request.method == "GET":
        return render(request, "cases/upload.html", _upload_context(UploadForm()))

    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        error = dropped_files_reason(request) if not request.FILES else None
        context = _upload_context(form, error=error or "")
        return render(request, "cases/upload.html", context, status=400)
    try:
        result = study_upload(files=form.cleaned_data["files"], uploader=request.user)
    except IngestionError as exc:
        return render(
            request, "cases/upload.html", _upload_context(UploadForm(), error=str(exc)), status=400
        )
    for study, created in zip(result.studies, result.created, strict=True):
        what = "Imported" if created else "Already present:"
        messages.success(request, f"{what} study {study.patient} {study.description}".strip())
    if len(result.studies) == 1:
        return redirect("cases:study_detail", pk=result.studies[0].pk)
    return redirect("cases:worklist")


def _upload_context(form: UploadForm, *, error: str = "") -> dict:
    # Django refuses a request with more files than DATA_UPLOAD_MAX_NUMBER_FILES before any view
    # runs (bare 400), so the page's script checks the count first and suggests a zip.
    return {"form": form, "error": error, "max_files": settings.DATA_UPLOAD_MAX_NUMBER_FILES}


@require_GET
def study_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Patient, series, the slice viewer and (read-only) labels and reference-case history."""
    study = selectors.study_get_visible(user=request.user, pk=pk)
    viewer = slice_viewer_context(
        study=study,
        wanted_series=request.GET.get("series"),
        wanted_index=request.GET.get("slice"),
        wanted_preset=request.GET.get("preset"),
    )
    return render(
        request,
        "cases/study_detail.html",
        {
            "study": study,
            **viewer,
            "label_history": selectors.study_label_history(study=study),
            "reference_cases": selectors.study_reference_cases(study=study),
            "read_only": not permissions.sees_all_studies(request.user),
        },
    )


@require_GET
def library(request: HttpRequest) -> HttpResponse:
    """The approved reference library with thumbnails, filterable by diagnosis."""
    form = LibraryFilterForm(request.GET or None)
    cases = selectors.reference_library_list(diagnosis=form.diagnosis_code())
    page = Paginator(cases, LIBRARY_PAGE_SIZE).get_page(request.GET.get("page"))
    for case in page:
        case.thumbnail = selectors.study_thumbnail_slice(study=case.study)
    return render(request, "cases/library.html", {"form": form, "page_obj": page})
