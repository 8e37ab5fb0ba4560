"""Data model of studies, their images, expert labels and the reference library.

Business logic lives in `cases/services/` (writes) and `cases/selectors.py` (reads); models only
describe data and the allowed status transitions.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Patient(models.Model):
    """A pseudonymous patient: a keyed hash (HMAC) of the source PatientID, never the raw value;
    no birth date or year is kept (the DICOM copies keep age, sex, size and weight)."""

    class Sex(models.TextChoices):
        FEMALE = "F", "Female"
        MALE = "M", "Male"
        OTHER = "O", "Other"
        UNKNOWN = "", "Unknown"

    pseudonym = models.CharField(max_length=64, unique=True, help_text="HMAC-SHA256 of PatientID")
    display_id = models.CharField(max_length=32, unique=True, help_text="Short id shown in the UI")
    sex = models.CharField(max_length=1, choices=Sex.choices, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["display_id"]

    def __str__(self) -> str:
        return self.display_id


class Study(models.Model):
    """One imaging study (StudyInstanceUID) with its processing/review status.

    Status machine: uploaded -> processing -> ready_for_review -> reviewed; any state but
    reviewed may go to failed (with `status_message`), and failed may go back to processing
    (retry). Transitions are made by services through `Study.can_transition`.
    """

    class Status(models.TextChoices):
        UPLOADED = "uploaded", "Uploaded"
        PROCESSING = "processing", "Processing"
        READY_FOR_REVIEW = "ready_for_review", "Ready for review"
        REVIEWED = "reviewed", "Reviewed"
        FAILED = "failed", "Failed"

    TRANSITIONS: dict[str, set[str]] = {
        Status.UPLOADED: {Status.PROCESSING, Status.FAILED},
        Status.PROCESSING: {Status.READY_FOR_REVIEW, Status.FAILED, Status.PROCESSING},
        Status.READY_FOR_REVIEW: {Status.REVIEWED, Status.PROCESSING, Status.FAILED},
        Status.REVIEWED: {Status.PROCESSING, Status.REVIEWED},
        Status.FAILED: {Status.PROCESSING, Status.UPLOADED},
    }

    class Source(models.TextChoices):
        UPLOAD = "upload", "Upload"
        REFERENCE_IMPORT = "reference_import", "Reference import"
        DEMO = "demo", "Demo data"

    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="studies")
    study_instance_uid = models.CharField(max_length=64, unique=True)
    study_date = models.DateField(null=True, blank=True)
    description = models.CharField(max_length=255, blank=True, default="")
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploaded_studies"
    )
    source = models.CharField(max_length=20, choices=Source.choices, default=Source.UPLOAD)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.UPLOADED, db_index=True
    )
    status_message = models.TextField(blank=True, default="")
    # Progress of the asynchronous pipeline: current stage name and percent 0..100.
    progress_stage = models.CharField(max_length=40, blank=True, default="")
    progress_percent = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"{self.patient} {self.description or self.study_instance_uid}"

    def can_transition(self, to: str) -> bool:
        """Whether the status machine allows moving from the current status to `to`."""
        return to in self.TRANSITIONS.get(self.status, set())


class Series(models.Model):
    """One series (SeriesInstanceUID) of a study."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="series")
    series_instance_uid = models.CharField(max_length=64, unique=True)
    series_number = models.IntegerField(null=True, blank=True)
    description = models.CharField(max_length=255, blank=True, default="")
    modality = models.CharField(max_length=16, default="CT")
    convolution_kernel = models.CharField(max_length=64, blank=True, default="")
    slice_thickness = models.FloatField(null=True, blank=True)
    pixel_spacing_row = models.FloatField(null=True, blank=True)
    pixel_spacing_col = models.FloatField(null=True, blank=True)
    rows = models.PositiveIntegerField(default=0)
    columns = models.PositiveIntegerField(default=0)
    slice_count = models.PositiveIntegerField(default=0)
    # Read from the DICOM at import for the quality warnings of the review page: BodyPartExamined
    # (a code string such as "CHEST"; "" when absent) and whether a contrast agent is recorded
    # (ContrastBolusAgent / its sequence / a volume > 0; None when no contrast tag is present).
    # The agent's name itself is free text that de-identification replaces, so it is not kept.
    body_part = models.CharField(max_length=16, blank=True, default="")
    contrast_enhanced = models.BooleanField(null=True, blank=True, default=None)
    # Storage key (folder) of the de-identified DICOM copy of this series (`series_dicom_dir`).
    dicom_dir = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "series_number", "id"]
        verbose_name_plural = "series"

    def __str__(self) -> str:
        return f"{self.description or self.series_instance_uid} ({self.slice_count} slices)"


# Storage keys are built from database ids only, never from strings of the uploaded DICOM: a
# UID such as "<victim UID>/." must not be able to name (and overwrite) another study's files.
def series_media_prefix(*, study_id: int, series_id: int) -> str:
    """Folder of one series' files: `studies/<study pk>/series/<series pk>`."""
    return f"studies/{int(study_id)}/series/{int(series_id)}"


def series_dicom_dir(*, series: Series) -> str:
    """Folder of the series' de-identified DICOM copies (`.../dicom/<index>.dcm`)."""
    return f"{series_media_prefix(study_id=series.study_id, series_id=series.pk)}/dicom"


def slice_dicom_name(*, slice_: Slice) -> str:
    """Storage key of one slice's de-identified DICOM copy; "" when the series has none
    (reference images imported from PNG/JPEG)."""
    dicom_dir = slice_.series.dicom_dir
    return f"{dicom_dir}/{slice_.index:04d}.dcm" if dicom_dir else ""


def slice_upload_to(instance: Slice, filename: str) -> str:
    """Storage key of a slice's HU pixels: `studies/<study pk>/series/<series pk>/hu/<name>`."""
    prefix = series_media_prefix(study_id=instance.series.study_id, series_id=instance.series_id)
    return f"{prefix}/hu/{filename}"


class Slice(models.Model):
    """One axial slice: Hounsfield-unit pixels stored as int16 `.npy` on media storage.

    2-D reference images that carry no Hounsfield units (8-bit PNG/JPEG, already windowed) are
    stored as uint8 with `is_windowed` set.
    """

    series = models.ForeignKey(Series, on_delete=models.CASCADE, related_name="slices")
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    instance_number = models.IntegerField(null=True, blank=True)
    index = models.PositiveIntegerField(help_text="0-based position along the slice normal")
    z_position = models.FloatField(null=True, blank=True)
    pixels = models.FileField(upload_to=slice_upload_to, max_length=255)
    is_windowed = models.BooleanField(default=False)
    hu_min = models.FloatField(null=True, blank=True)
    hu_max = models.FloatField(null=True, blank=True)
    lung_fraction = models.FloatField(null=True, blank=True, help_text="Filled by the pipeline")

    class Meta:
        ordering = ["series", "index"]
        constraints = [
            models.UniqueConstraint(fields=["series", "index"], name="unique_slice_index"),
        ]

    def __str__(self) -> str:
        return f"{self.series_id}#{self.index}"


class Diagnosis(models.Model):
    """A diagnosis label of the taxonomy (seeded by a data migration; admins add more)."""

    code = models.SlugField(max_length=40, unique=True)
    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "diagnoses"

    def __str__(self) -> str:
        return self.name


class ExpertLabel(models.Model):
    """An expert's diagnosis of a study. Rows are never updated: each change is a new row, so
    the full history is kept; the current label is the latest row."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="labels")
    diagnosis = models.ForeignKey(Diagnosis, on_delete=models.PROTECT, related_name="labels")
    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="expert_labels"
    )
    comment = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.study_id}: {self.diagnosis} by {self.expert}"


class ReferenceCase(models.Model):
    """A study in (or proposed for) the reference library that retrieval searches.

    States: proposed -> approved | rejected; approved -> retired. Approval must come from an
    expert other than the proposer (enforced by the service).
    """

    class State(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        RETIRED = "retired", "Retired"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reference_cases")
    diagnosis = models.ForeignKey(Diagnosis, on_delete=models.PROTECT, related_name="references")
    state = models.CharField(
        max_length=10, choices=State.choices, default=State.PROPOSED, db_index=True
    )
    proposed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="proposed_references"
    )
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="approved_references",
        null=True,
        blank=True,
    )
    comment = models.TextField(blank=True, default="")
    proposed_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-proposed_at"]
        constraints = [
            # At most one live (proposed or approved) reference case per study.
            models.UniqueConstraint(
                fields=["study"],
                condition=models.Q(state__in=["proposed", "approved"]),
                name="one_live_reference_per_study",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.study} as {self.diagnosis} ({self.state})"


class AuditEvent(models.Model):
    """Append-only record of who did what to which object, and when."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="audit_events",
    )
    verb = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64, blank=True, default="")
    object_id = models.CharField(max_length=64, blank=True, default="")
    object_repr = models.CharField(max_length=255, blank=True, default="")
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor} {self.verb} {self.object_repr}"

    def save(self, *args, **kwargs):
        # Append-only: an existing event is never rewritten.
        if self.pk is not None and AuditEvent.objects.filter(pk=self.pk).exists():
            raise ValueError("AuditEvent is append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("AuditEvent is append-only")


class ReadingSession(models.Model):
    """One expert's reading of one study's review page, as in reader studies: when the review
    was first opened, when the expert decided (set or confirmed a diagnosis), and how many
    similar cases were opened on the way. Also the record that an approver has looked at a
    case before approving it (`cases.services.reading`)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reading_sessions")
    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reading_sessions"
    )
    opened_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    label = models.ForeignKey(
        ExpertLabel, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Seconds from opening to the decision (kept so that medians are one query).
    reading_seconds = models.FloatField(null=True, blank=True)
    results_opened = models.PositiveIntegerField(default=0)
    opened_ranks = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["study", "expert", "-opened_at"])]

    def __str__(self) -> str:
        return f"{self.expert} reading study {self.study_id}"
