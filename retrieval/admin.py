"""Django admin of the retrieval app: every model, with list filters and search.

Pipeline records (features, embeddings, jobs, results) are written only by the pipeline and are
shown read-only; a model version is made active with the admin action, which goes through the
service (one active version at a time).
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from cases.admin import ReadOnlyAdminMixin
from retrieval.models import (
    ModelVersion,
    ReferenceEmbedding,
    SimilarCase,
    SliceFeatures,
    StudyJob,
    StudyResult,
    TrainingRun,
)


def _nbytes(value) -> str:
    return f"{len(value)} bytes" if value else "—"


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "backbone", "is_active", "created_at")
    list_filter = ("is_active", "backbone", "created_at")
    search_fields = ("name", "backbone", "artefact_dir", "backbone_weights_sha256")
    # Activation goes through the action so that the previous version is deactivated.
    readonly_fields = ("is_active", "created_at")
    actions = ["activate_selected"]

    @admin.action(description="Make the selected version the active one")
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]) -> None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model version.", messages.ERROR)
            return
        from retrieval.services import model_version_activate

        version = model_version_activate(version=queryset.get())
        self.message_user(request, f"{version.name} is now the active model.", messages.SUCCESS)


@admin.register(SliceFeatures)
class SliceFeaturesAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "slice", "model_version", "lung_fraction", "updated_at")
    list_filter = ("model_version",)
    search_fields = ("slice__sop_instance_uid", "slice__series__study__patient__display_id")
    list_select_related = ("slice", "model_version")
    exclude = ("radiomics", "embedding")
    readonly_fields = ("radiomics_size", "embedding_size")
    show_full_result_count = False

    @admin.display(description="radiomics")
    def radiomics_size(self, obj: SliceFeatures) -> str:
        return _nbytes(obj.radiomics)

    @admin.display(description="embedding")
    def embedding_size(self, obj: SliceFeatures) -> str:
        return _nbytes(obj.embedding)


@admin.register(ReferenceEmbedding)
class ReferenceEmbeddingAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "reference_case", "slice", "model_version", "lung_fraction", "created_at")
    list_filter = ("model_version", "reference_case__diagnosis")
    search_fields = ("slice__sop_instance_uid", "reference_case__study__patient__display_id")
    list_select_related = ("reference_case", "slice", "model_version")
    exclude = ("vector",)
    readonly_fields = ("vector_size",)
    show_full_result_count = False

    @admin.display(description="vector")
    def vector_size(self, obj: ReferenceEmbedding) -> str:
        return _nbytes(obj.vector)


@admin.register(StudyJob)
class StudyJobAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("study", "stage", "state", "attempts", "worker", "heartbeat_at", "updated_at")
    list_filter = ("state", "stage", "model_version")
    search_fields = ("study__patient__display_id", "worker", "run_id")
    list_select_related = ("study__patient",)


class SimilarCaseInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = SimilarCase
    fields = ("rank", "reference_case", "score", "n_hits", "query_slice", "reference_slice")
    readonly_fields = fields
    extra = 0


@admin.register(StudyResult)
class StudyResultAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "study",
        "model_version",
        "suggested_diagnosis",
        "query_slice_count",
        "created_at",
    )
    list_filter = ("model_version", "suggested_diagnosis", "created_at")
    search_fields = ("study__patient__display_id", "study__description")
    list_select_related = ("study__patient", "model_version", "suggested_diagnosis")
    inlines = [SimilarCaseInline]


@admin.register(SimilarCase)
class SimilarCaseAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("result", "rank", "reference_case", "score", "n_hits")
    list_filter = ("rank", "result__model_version")
    search_fields = (
        "result__study__patient__display_id",
        "reference_case__study__patient__display_id",
    )
    list_select_related = ("result", "reference_case")


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "state", "progress_percent", "model_version", "created_by", "created_at")
    list_filter = ("state", "created_at")
    search_fields = ("message", "created_by__username", "model_version__name")
    list_select_related = ("model_version", "created_by")
