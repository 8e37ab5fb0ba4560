"""Django admin of the cases app: every model, with list filters and search.

Records whose changes must go through services (the state machine, the label history, the
reference-case workflow and its index, the audit trail) are read-only here; the admin edits
what is plain data: patients' demographics, study descriptions and the diagnosis taxonomy.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html_join

from cases.models import (
    AuditEvent,
    Diagnosis,
    ExpertLabel,
    Patient,
    ReadingSession,
    ReferenceCase,
    Series,
    Slice,
    Study,
)


class ReadOnlyAdminMixin:
    """Viewable, never added, changed or deleted through the admin."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class SeriesInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = Series
    fields = ("series_number", "description", "modality", "convolution_kernel", "slice_count")
    readonly_fields = fields
    extra = 0
    show_change_link = True


@admin.register(Patient)
class PatientAdmin(admin.ModelAdmin):
    list_display = ("display_id", "sex", "created_at")
    list_filter = ("sex", "created_at")
    search_fields = ("display_id",)
    readonly_fields = ("pseudonym", "created_at")


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "patient",
        "description",
        "study_date",
        "status",
        "progress_percent",
        "source",
        "uploaded_by",
        "created_at",
    )
    list_filter = ("status", "source", "study_date", "created_at")
    search_fields = (
        "patient__display_id",
        "study_instance_uid",
        "description",
        "uploaded_by__username",
    )
    list_select_related = ("patient", "uploaded_by")
    # Status and progress move only through the pipeline's services (the state machine).
    readonly_fields = (
        "patient",
        "study_instance_uid",
        "uploaded_by",
        "source",
        "status",
        "status_message",
        "progress_stage",
        "progress_percent",
        "created_at",
        "updated_at",
    )
    inlines = [SeriesInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Studies come from DICOM ingestion (upload page, API, import_study).
        return False


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "study",
        "series_number",
        "description",
        "modality",
        "convolution_kernel",
        "slice_thickness",
        "slice_count",
    )
    list_filter = ("modality", "convolution_kernel")
    search_fields = ("series_instance_uid", "description", "study__patient__display_id")
    list_select_related = ("study__patient",)
    readonly_fields = (
        "study",
        "series_instance_uid",
        "modality",
        "rows",
        "columns",
        "slice_count",
        "dicom_dir",
        "created_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Slice)
class SliceAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "series", "index", "instance_number", "z_position", "is_windowed")
    list_filter = ("is_windowed",)
    search_fields = ("sop_instance_uid", "series__series_instance_uid")
    list_select_related = ("series",)
    # Slice tables are large; skip the unfiltered count query.
    show_full_result_count = False
    # The stored files by the slice's id (the file field itself would link to a storage key).
    exclude = ("pixels",)
    readonly_fields = ("files",)

    @admin.display(description="Files")
    def files(self, obj: Slice) -> str:
        links = [(reverse("api-file-slice-npy", args=[obj.pk]), "HU pixels (.npy)")]
        if obj.series.dicom_dir:
            links.append((reverse("api-file-slice-dcm", args=[obj.pk]), "DICOM copy"))
        return format_html_join(" · ", '<a href="{}">{}</a>', links)


@admin.register(Diagnosis)
class DiagnosisAdmin(admin.ModelAdmin):
    list_display = ("name", "code", "active")
    list_filter = ("active",)
    search_fields = ("name", "code", "description")
    prepopulated_fields = {"code": ("name",)}

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        # Labels and reference cases protect their diagnosis; retire one with `active` instead.
        return False


@admin.register(ExpertLabel)
class ExpertLabelAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The label history: never edited (a correction is a new label, given on the study page)."""

    list_display = ("study", "diagnosis", "expert", "created_at")
    list_filter = ("diagnosis", "created_at")
    search_fields = ("study__patient__display_id", "expert__username", "comment")
    list_select_related = ("study__patient", "diagnosis", "expert")


@admin.register(ReferenceCase)
class ReferenceCaseAdmin(admin.ModelAdmin):
    """Reference cases: decisions go through the expert workflow (which keeps the index in
    sync); the admin may correct the comment and retire approved cases."""

    list_display = ("id", "study", "diagnosis", "state", "proposed_by", "approved_by", "decided_at")
    list_filter = ("state", "diagnosis", "proposed_at", "decided_at")
    search_fields = (
        "study__patient__display_id",
        "study__description",
        "proposed_by__username",
        "approved_by__username",
        "comment",
    )
    list_select_related = ("study__patient", "diagnosis", "proposed_by", "approved_by")
    readonly_fields = (
        "study",
        "diagnosis",
        "state",
        "proposed_by",
        "approved_by",
        "proposed_at",
        "decided_at",
        "retired_at",
    )
    actions = ["retire_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    @admin.action(description="Retire selected approved reference cases")
    def retire_selected(self, request: HttpRequest, queryset: QuerySet[ReferenceCase]) -> None:
        from cases.services.review import reference_case_retire

        done = 0
        for reference in queryset:
            try:
                reference_case_retire(reference_case=reference, actor=request.user)
            except ValidationError as exc:
                self.message_user(
                    request, f"#{reference.pk}: {' '.join(exc.messages)}", messages.ERROR
                )
            else:
                done += 1
        if done:
            self.message_user(request, f"Retired {done} reference case(s).", messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The append-only audit trail: view only."""

    list_display = ("created_at", "actor", "verb", "object_type", "object_id", "object_repr")
    list_filter = ("verb", "object_type", "created_at")
    search_fields = ("verb", "object_type", "object_id", "object_repr", "actor__username")
    list_select_related = ("actor",)
    date_hierarchy = "created_at"


@admin.register(ReadingSession)
class ReadingSessionAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Reading-time metrics, as reader studies report them: seconds from opening a study's
    review to the expert's decision and how many similar cases were opened. The list page
    shows the distribution above the rows (median and quartiles, overall and by diagnosis)."""

    list_display = (
        "study",
        "expert",
        "opened_at",
        "decided_at",
        "reading_seconds",
        "results_opened",
        "label",
    )
    list_filter = ("expert", "label__diagnosis", "opened_at")
    search_fields = ("study__patient__display_id", "expert__username")
    list_select_related = ("study__patient", "expert", "label__diagnosis")
    date_hierarchy = "opened_at"

    def changelist_view(self, request: HttpRequest, extra_context=None):
        from cases.selectors import reading_time_summary

        extra_context = {**(extra_context or {}), "reading_summary": reading_time_summary()}
        return super().changelist_view(request, extra_context=extra_context)
