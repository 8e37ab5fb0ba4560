"""Django admin of the retrieval app: every model, with list filters and search.

Pipeline records (features, embeddings, jobs, results) are written only by the pipeline and are
shown read-only. Model versions are activated with an admin action that queues
`retrieval.tasks.model_version_activate_and_reembed`: the library is re-embedded in the
background and the switch happens when it is done, so the current version keeps answering
queries meanwhile. A version that the held-out gate shows worse than the frozen backbone or the
active version is activated only with a written reason (an intermediate page asks for it; the
reason and the figures go to the audit log). New versions are trained from the TrainingRun
list ("Train a new model"), which queues `retrieval.tasks.model_version_train` on the gpu queue
and shows its progress.
"""

from __future__ import annotations

import threading

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

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

# Seconds between reloads of the TrainingRun list while a run is queued or running.
TRAINING_REFRESH_S = 5


def _nbytes(value) -> str:
    return f"{len(value)} bytes" if value else "—"


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "backbone", "created_at", "macro_f1", "report_link")
    list_filter = ("is_active", "backbone", "created_at")
    search_fields = ("name", "backbone", "artefact_dir", "backbone_weights_sha256")
    # Activation goes through the action so that the library is re-embedded first.
    readonly_fields = ("is_active", "created_at", "held_out", "reference_index")
    exclude = ("index_info", "holdout")
    actions = ["activate_selected"]

    @admin.display(description="reference index")
    def reference_index(self, obj: ModelVersion) -> str:
        """How the workers last built this version's index: the backend, the tuned LSH
        parameters and the recall measured on held-out library vectors, or the fallback's
        reason (`ModelVersion.index_info`, written by the workers)."""
        info = obj.index_info or {}
        if not info:
            return "not built yet (the first query or library change builds it)"
        params = ", ".join(
            f"{key} {info[key]}" for key in ("tables", "bits", "probes", "ef_search") if key in info
        )
        lines = [
            ("backend", f"{info.get('backend', '?')}" + (f" ({params})" if params else "")),
            ("vectors at build", info.get("n", "?")),
            (
                f"recall@{info.get('k', 10)}",
                f"{info['recall']} (target {info.get('target_recall', '—')}, "
                f"{info.get('sample', 0)} held-out library vectors)"
                if "recall" in info
                else "—",
            ),
            (
                "query ms",
                f"{info['query_ms']} (exact {info.get('exact_query_ms', '—')})"
                if "query_ms" in info
                else "—",
            ),
            ("why", info.get("reason", "—")),
            ("built", info.get("built_at", "—")),
            ("settings tried", len(info.get("trials", []))),
        ]
        return format_html(
            "<table>{}</table>",
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", lines),
        )

    @admin.display(description="macro F1")
    def macro_f1(self, obj: ModelVersion) -> str:
        value = (obj.metrics or {}).get("macro_f1")
        return f"{value:.3f}" if isinstance(value, int | float) else "—"

    @admin.display(description="report")
    def report_link(self, obj: ModelVersion) -> str:
        url = reverse("retrieval:model_detail", args=[obj.pk])
        return format_html('<a href="{}">{}</a>', url, "report" if obj.report_dir else "details")

    @admin.display(description="held-out gate")
    def held_out(self, obj: ModelVersion) -> str:
        """The held-out gate's table (`retrieval.engine.holdout`): frozen backbone, active
        version at training time and this version, on held-out library patients."""
        from retrieval.views.model_versions import holdout_rows

        gate = holdout_rows(obj.holdout or {})
        if not gate["rows"]:
            return gate["note"]
        return format_html(
            "<table><tr><th></th><th>macro F1</th><th>accuracy</th><th>mAP@10</th></tr>{}</table>"
            "<p>{}</p>",
            format_html_join(
                "", "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td></tr>", gate["rows"]
            ),
            gate["note"],
        )

    @admin.action(description="Activate (re-embed the library in the background)")
    def activate_selected(self, request: HttpRequest, queryset: QuerySet[ModelVersion]):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one model version.", messages.ERROR)
            return None
        version = queryset.get()
        if version.is_active:
            self.message_user(request, f"{version.name} is already active.", messages.WARNING)
            return None
        from retrieval.services import model_version_gate_check

        check = model_version_gate_check(version=version)
        reason = request.POST.get("override_reason", "").strip()
        if check["reasons"] and not reason:
            # Worse on held-out patients: ask for a written reason (an intermediate page that
            # posts the action again with it).
            from retrieval.views.model_versions import holdout_rows

            if "override" in request.POST:
                self.message_user(
                    request, "Activating a worse version needs a written reason.", messages.ERROR
                )
            return TemplateResponse(
                request,
                "retrieval/admin/activate_confirm.html",
                {
                    **self.admin_site.each_context(request),
                    "opts": self.model._meta,
                    "title": f"Activate {version.name}?",
                    "version": version,
                    "reasons": check["reasons"],
                    "gate": holdout_rows(version.holdout or {}),
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                },
            )

        def publish(version_id=version.pk, reason=reason, actor_id=request.user.pk):
            from retrieval.tasks import model_version_activate_and_reembed

            model_version_activate_and_reembed.delay(version_id, reason, actor_id)

        transaction.on_commit(publish)
        current = ModelVersion.objects.filter(is_active=True).first()
        keeps = f"{current.name} keeps answering queries" if current else "no version is active"
        override = " (override recorded in the audit log)" if check["reasons"] else ""
        self.message_user(
            request,
            f"Re-embedding the reference library with {version.name} in the background; "
            f"{keeps} until it is done, then {version.name} becomes the active model{override}.",
            messages.SUCCESS,
        )
        return None


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
    """Jobs with their place in the fair queue (waiting/queued runs) and their stage times."""

    list_display = (
        "study",
        "uploader",
        "stage",
        "state",
        "queue_position",
        "stage_times",
        "attempts",
        "worker",
        "enqueued_at",
        "heartbeat_at",
    )
    list_filter = ("state", "stage", "model_version")
    search_fields = ("study__patient__display_id", "worker", "run_id")
    list_select_related = ("study__patient", "study__uploaded_by")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # One admin instance serves every request thread: the per-page queue order is kept
        # per thread so that concurrent list pages never read each other's.
        self._page = threading.local()

    def get_queryset(self, request):
        # The queue order once per page, not once per row.
        from retrieval.pipeline.progress import queue_order

        self._page.queue_order = {study_id: n for n, study_id in enumerate(queue_order(), start=1)}
        return super().get_queryset(request)

    @admin.display(description="uploader", ordering="study__uploaded_by__username")
    def uploader(self, obj: StudyJob) -> str:
        return str(obj.study.uploaded_by or "—")

    @admin.display(description="queue position")
    def queue_position(self, obj: StudyJob) -> str:
        order = getattr(self._page, "queue_order", {})
        n = order.get(obj.study_id)
        return f"{n} of {len(order)}" if n else "—"

    @admin.display(description="stage seconds")
    def stage_times(self, obj: StudyJob) -> str:
        seconds = obj.stage_seconds or {}
        if not seconds:
            return "—"
        # In pipeline order: PostgreSQL's jsonb does not keep the keys' insertion order.
        order = {stage: n for n, stage in enumerate(("prepare", "embed", "retrieve", "explain"))}
        ordered = sorted(
            seconds.items(), key=lambda item: (order.get(item[0], len(order)), item[0])
        )
        parts = [f"{stage} {float(s):.1f}" for stage, s in ordered]
        return ", ".join(parts) + f" (total {sum(float(s) for s in seconds.values()):.1f})"


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
    # The overlays by the similar case's id (the file fields would link to storage keys).
    exclude = ("query_cam", "reference_cam")
    readonly_fields = ("cams",)

    @admin.display(description="CAM overlays")
    def cams(self, obj: SimilarCase) -> str:
        links = [
            (reverse("api-file-similar-case-cam", args=[obj.pk, side]), side)
            for side, field in (("query", obj.query_cam), ("reference", obj.reference_cam))
            if field
        ]
        return format_html_join(" · ", '<a href="{}">{}</a>', links) or "-"


class TrainingStartForm(forms.Form):
    """Options of a new training run (defaults: the ILDREVIEW_BOOTSTRAP_* settings)."""

    epochs = forms.IntegerField(min_value=1, max_value=1000)
    backbone = forms.ChoiceField()
    weights = forms.ChoiceField(
        help_text="imagenet: the pretrained backbone (local weights); random: timing/tests only"
    )
    size = forms.IntegerField(min_value=32, max_value=1024, help_text="slice side in pixels")

    def __init__(self, *args, **kwargs):
        from retrieval.engine.backbones import BACKBONES
        from retrieval.pipeline.training import TRAINING_WEIGHTS

        kwargs.setdefault(
            "initial",
            {
                "epochs": settings.ILDREVIEW_BOOTSTRAP_EPOCHS,
                "backbone": settings.ILDREVIEW_BACKBONE,
                "weights": settings.ILDREVIEW_BOOTSTRAP_WEIGHTS,
                "size": settings.ILDREVIEW_BOOTSTRAP_SIZE,
            },
        )
        super().__init__(*args, **kwargs)
        self.fields["backbone"].choices = [
            (k, f"{k}: {s.description}") for k, s in BACKBONES.items()
        ]
        self.fields["weights"].choices = [(w, w) for w in TRAINING_WEIGHTS]


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = (
        "id",
        "state",
        "progress",
        "options",
        "model_version",
        "created_by",
        "created_at",
        "message",
    )
    list_filter = ("state", "created_at")
    search_fields = ("message", "created_by__username", "model_version__name")
    list_select_related = ("model_version", "created_by")
    change_list_template = "retrieval/admin/trainingrun_change_list.html"

    @admin.display(description="progress", ordering="progress_percent")
    def progress(self, obj: TrainingRun) -> str:
        return format_html(
            '<progress max="100" value="{}" data-run="{}"></progress> {} %',
            obj.progress_percent,
            obj.pk,
            obj.progress_percent,
        )

    @admin.display(description="options")
    def options(self, obj: TrainingRun) -> str:
        p = obj.params or {}
        keys = ("backbone", "weights", "size", "epochs")
        return ", ".join(f"{k} {p[k]}" for k in keys if k in p) or "—"

    def get_urls(self):
        train = path(
            "train/",
            self.admin_site.admin_view(self.train_view),
            name="retrieval_trainingrun_train",
        )
        return [train, *super().get_urls()]

    def _may_train(self, request: HttpRequest) -> bool:
        return request.user.has_perm("retrieval.add_trainingrun")

    def changelist_view(self, request: HttpRequest, extra_context=None):
        busy = TrainingRun.objects.filter(
            state__in=[TrainingRun.State.QUEUED, TrainingRun.State.RUNNING]
        ).exists()
        extra_context = {
            **(extra_context or {}),
            "may_train": self._may_train(request),
            "refresh_s": TRAINING_REFRESH_S if busy else None,
        }
        return super().changelist_view(request, extra_context=extra_context)

    def train_view(self, request: HttpRequest) -> HttpResponse:
        """GET: the options form; POST: queue the run (gpu queue) and go back to the list."""
        from retrieval.pipeline.training import training_run_start

        if not self._may_train(request):
            raise PermissionDenied
        form = TrainingStartForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            run = training_run_start(user=request.user, **form.cleaned_data)
            self.message_user(
                request,
                f"Training run {run.pk} queued on the gpu queue; the new version is registered "
                "inactive when it finishes (activate it from the model versions).",
                messages.SUCCESS,
            )
            return redirect("admin:retrieval_trainingrun_changelist")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Train a new model",
            "form": form,
        }
        return TemplateResponse(request, "retrieval/admin/train.html", context)
