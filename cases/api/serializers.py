"""REST API serializers (representation and input validation only; writes go through
services)."""

from __future__ import annotations

from django.db.models import Sum
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from cases.models import Diagnosis, ExpertLabel, ReferenceCase, Series, Study
from cases.selectors import diagnosis_list, study_current_label


class StrictCharField(serializers.CharField):
    """A text input that must be a JSON string (DRF's CharField turns numbers into text)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """An integer input that must be a JSON integer (DRF's accepts "5", 5.0 and true)."""

    def to_internal_value(self, data):
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class DiagnosisSerializer(serializers.ModelSerializer):
    class Meta:
        model = Diagnosis
        fields = ["id", "code", "name", "description", "active"]


class DiagnosisBriefSerializer(serializers.ModelSerializer):
    class Meta:
        model = Diagnosis
        fields = ["id", "code", "name"]


class ExpertLabelSerializer(serializers.ModelSerializer):
    diagnosis = DiagnosisBriefSerializer()
    expert = serializers.CharField(source="expert.username")

    class Meta:
        model = ExpertLabel
        fields = ["id", "study", "diagnosis", "expert", "comment", "created_at"]


class ExpertLabelCreateSerializer(serializers.Serializer):
    """Input of POST /api/studies/{id}/labels/."""

    diagnosis = serializers.SlugRelatedField(
        slug_field="code",
        queryset=diagnosis_list(),
        help_text="Diagnosis code, e.g. `ipf-ild` (see /api/diagnoses/).",
    )
    comment = StrictCharField(required=False, allow_blank=True, max_length=2000)


class CurrentLabelSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()


class StudyListSerializer(serializers.ModelSerializer):
    """A study in lists: status, progress and current diagnosis."""

    patient = serializers.CharField(source="patient.display_id")
    uploaded_by = serializers.CharField(source="uploaded_by.username")
    current_label = serializers.SerializerMethodField()
    url = serializers.HyperlinkedIdentityField(view_name="api-study-detail")

    class Meta:
        model = Study
        fields = [
            "id",
            "url",
            "patient",
            "study_instance_uid",
            "study_date",
            "description",
            "source",
            "status",
            "status_message",
            "progress_stage",
            "progress_percent",
            "current_label",
            "uploaded_by",
            "created_at",
            "updated_at",
        ]

    @extend_schema_field(CurrentLabelSerializer(allow_null=True))
    def get_current_label(self, study: Study) -> dict | None:
        # Lists annotate the label in one query (selectors.study_list_with_current_label);
        # single objects fall back to the selector.
        if hasattr(study, "current_label_code"):
            if study.current_label_code is None:
                return None
            return {"code": study.current_label_code, "name": study.current_label_name}
        label = study_current_label(study=study)
        return {"code": label.diagnosis.code, "name": label.diagnosis.name} if label else None


class SeriesSerializer(serializers.ModelSerializer):
    class Meta:
        model = Series
        fields = [
            "id",
            "series_instance_uid",
            "series_number",
            "description",
            "modality",
            "convolution_kernel",
            "slice_thickness",
            "pixel_spacing_row",
            "pixel_spacing_col",
            "rows",
            "columns",
            "slice_count",
        ]


class StudyDetailSerializer(StudyListSerializer):
    """One study with its series, slice count and (on failure) the reason."""

    series = SeriesSerializer(many=True, read_only=True)
    slice_count = serializers.SerializerMethodField()
    failure_message = serializers.SerializerMethodField()
    results_url = serializers.HyperlinkedIdentityField(view_name="api-study-results")
    labels_url = serializers.HyperlinkedIdentityField(view_name="api-study-labels")

    class Meta(StudyListSerializer.Meta):
        fields = StudyListSerializer.Meta.fields + [
            "series",
            "slice_count",
            "failure_message",
            "results_url",
            "labels_url",
        ]

    def get_slice_count(self, study: Study) -> int:
        return study.series.aggregate(n=Sum("slice_count"))["n"] or 0

    def get_failure_message(self, study: Study) -> str | None:
        return study.status_message if study.status == Study.Status.FAILED else None


class StudyUploadSerializer(serializers.Serializer):
    """Multipart upload: one or more DICOM files or zip archives in the `files` field."""

    files = serializers.ListField(child=serializers.FileField(), allow_empty=False)


class StudyUploadResultSerializer(serializers.Serializer):
    created = serializers.IntegerField(help_text="Number of studies newly created")
    studies = StudyListSerializer(many=True)


class ReferenceCaseSerializer(serializers.ModelSerializer):
    diagnosis = DiagnosisBriefSerializer()
    study_url = serializers.HyperlinkedRelatedField(
        source="study", view_name="api-study-detail", read_only=True
    )
    proposed_by = serializers.CharField(source="proposed_by.username")
    approved_by = serializers.CharField(
        source="approved_by.username", allow_null=True, default=None
    )

    class Meta:
        model = ReferenceCase
        fields = [
            "id",
            "study",
            "study_url",
            "diagnosis",
            "state",
            "proposed_by",
            "approved_by",
            "comment",
            "proposed_at",
            "decided_at",
            "retired_at",
        ]


class ReferenceCaseProposeSerializer(serializers.Serializer):
    """Input of POST /api/reference-cases/ (the study is checked for visibility by the view)."""

    study = StrictIntegerField(min_value=1, help_text="Study id")
    diagnosis = serializers.SlugRelatedField(
        slug_field="code",
        queryset=diagnosis_list(),
        required=False,
        allow_null=True,
        help_text="Diagnosis code; defaults to the study's current expert label.",
    )
    comment = StrictCharField(required=False, allow_blank=True, max_length=2000)


class ReferenceDecisionSerializer(serializers.Serializer):
    comment = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text="Optional note on the approval.",
    )


class ReferenceRejectSerializer(serializers.Serializer):
    comment = StrictCharField(max_length=2000, help_text="The reason for rejecting.")


def _diagnosis_code_filter(what: str) -> serializers.CharField:
    """An optional diagnosis-code query parameter (`what`, then how it matches)."""
    return serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text=f"{what} (see /api/diagnoses/); an unknown code matches nothing",
    )


class StudyFilterSerializer(serializers.Serializer):
    """Query parameters of GET /api/studies/ (validated from a plain dict, so that an empty
    `status=` is refused like any value outside the enum rather than read as absent)."""

    status = serializers.ChoiceField(choices=Study.Status.choices, required=False)
    q = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text="Search patient id, description or StudyInstanceUID",
    )
    diagnosis = _diagnosis_code_filter("Diagnosis code of the current label")


class ReferenceCaseFilterSerializer(serializers.Serializer):
    """Query parameters of GET /api/reference-cases/."""

    state = serializers.ChoiceField(choices=ReferenceCase.State.choices, required=False)
    diagnosis = _diagnosis_code_filter("Diagnosis code")


class TokenRequestSerializer(serializers.Serializer):
    """Input of POST /api/auth/token/ (validated by DRF's AuthTokenSerializer)."""

    username = serializers.CharField()
    password = serializers.CharField(style={"input_type": "password"})


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="Send as `Authorization: Token <token>`.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
