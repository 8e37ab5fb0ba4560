"""Importing a labelled reference library from a manifest (`manage.py import_reference`).

The manifest (UTF-8 CSV with header `path,label,patient_id[,split]`, paths relative to the
manifest or absolute) lists one case per row: a 2-D image file (PNG, JPEG, TIFF; a signed
16-bit TIFF holds Hounsfield units) or a folder holding one DICOM series. Each row becomes a
patient (pseudonymous, as in DICOM ingestion), study, series and slice(s), an expert label by
the importing admin and an approved reference case; the study is marked reviewed.

Each row is imported on its own, atomically: a bad row is reported with the reason and leaves
no rows and no media files behind, and the other rows still import. Re-importing creates
nothing new: image studies get a deterministic StudyInstanceUID from the patient's pseudonym
and the image's content, DICOM studies get the keyed pseudonyms of their UIDs (deterministic,
so ingestion stays idempotent), and a study that already is a live reference case is left as
it is.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Max
from django.utils import timezone
from django.utils.text import slugify

from cases.models import Diagnosis, ExpertLabel, Patient, ReferenceCase, Series, Slice, Study
from cases.reference_images import ImageReadError, reference_image_decode
from cases.services.audit import audit_event_record
from cases.services.ingestion import (
    IngestionError,
    _display_id,  # shared so both paths give a patient the same short id
    patient_pseudonym,
    series_import_folder,
)
from cases.uids import deterministic_uid

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT = "reference-import"
IMPORT_COMMENT = "imported from manifest"
REQUIRED_COLUMNS = ("path", "label", "patient_id")
SPLITS = ("", "train", "test")
LIVE_STATES = (ReferenceCase.State.PROPOSED, ReferenceCase.State.APPROVED)
BATCH_ROWS = 50


class ReferenceImportError(Exception):
    """The import cannot start (bad manifest, unusable importing user)."""


class ManifestError(ReferenceImportError):
    """The manifest as a whole cannot be read (missing file, header, columns, encoding)."""


class RowRejected(Exception):
    """One manifest row is refused; the message is the reason."""


@dataclass(frozen=True)
class ManifestRow:
    """One case of the manifest; `line` is its line number in the file (header = 1)."""

    line: int
    path: str
    label: str
    patient_id: str
    split: str = ""


@dataclass
class RowOutcome:
    """What happened to one row: status "created", "existing" or "rejected"."""

    row: ManifestRow
    status: str
    reason: str = ""
    study_id: int | None = None
    note: str = ""


@dataclass
class ReferenceImportReport:
    """All row outcomes of one manifest import, in manifest order."""

    outcomes: list[RowOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def created(self) -> int:
        return self.count("created")

    @property
    def existing(self) -> int:
        return self.count("existing")

    @property
    def rejected(self) -> list[RowOutcome]:
        return [o for o in self.outcomes if o.status == "rejected"]

    def summary(self) -> str:
        return f"{self.created} created, {self.existing} existing, {len(self.rejected)} rejected"


# ---------------------------------------------------------------- manifest and user


def manifest_read(*, manifest: Path) -> list[ManifestRow]:
    """Rows of a manifest file; ManifestError when the file or its header is unusable."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: no such manifest file")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise ManifestError(
                    f"{manifest}: header lacks column(s) {', '.join(missing)} "
                    f"(expected path,label,patient_id[,split])"
                )
            reader.fieldnames = header
            rows = []
            for record in reader:
                if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                    continue  # blank line
                rows.append(
                    ManifestRow(
                        line=reader.line_num,
                        path=(record.get("path") or "").strip(),
                        label=(record.get("label") or "").strip(),
                        patient_id=(record.get("patient_id") or "").strip(),
                        split=(record.get("split") or "").strip().lower(),
                    )
                )
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest}: not UTF-8 text ({exc})") from exc
    except csv.Error as exc:
        raise ManifestError(f"{manifest}: malformed CSV ({exc})") from exc
    return rows


def reference_import_user(*, username: str | None = None) -> Any:
    """The user recorded as labelling and approving imported cases: `username` (must exist and
    be an admin or expert), else the first superuser, else the inactive service account
    "reference-import" (created when missing)."""
    users = get_user_model().objects
    if username:
        user = users.filter(username=username).first()
        if user is None:
            raise ReferenceImportError(f"no user named {username!r}")
        if not (user.is_superuser or user.groups.filter(name__in=["Admin", "Expert"]).exists()):
            raise ReferenceImportError(f"user {username!r} is neither an admin nor an expert")
        return user
    user = users.filter(is_superuser=True).order_by("pk").first()
    if user is not None:
        return user
    user, created = users.get_or_create(
        username=SERVICE_ACCOUNT, defaults={"is_active": False, "is_staff": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


# ---------------------------------------------------------------- one row


def _row_check(row: ManifestRow, base_dir: Path) -> Path:
    if not row.path:
        raise RowRejected("empty path")
    if not row.label:
        raise RowRejected("empty label")
    if len(row.label) > Diagnosis._meta.get_field("name").max_length:
        raise RowRejected("label longer than 100 characters")
    if not row.patient_id:
        raise RowRejected("empty patient_id")
    if row.split not in SPLITS:
        raise RowRejected(f"split {row.split!r} is neither train nor test")
    path = Path(row.path)
    path = path if path.is_absolute() else base_dir / path
    if not path.exists():
        raise RowRejected(f"missing file or folder {path}")
    return path


def _diagnosis_for(label: str) -> Diagnosis:
    """The diagnosis named `label` (case-insensitive, or by slug), created when missing."""
    found = Diagnosis.objects.filter(name__iexact=label).first()
    code = slugify(label)[:40] or f"label-{hashlib.sha256(label.encode()).hexdigest()[:12]}"
    found = found or Diagnosis.objects.filter(code=code).first()
    if found is not None:
        return found
    if Diagnosis.objects.filter(code=code).exists():  # pragma: no cover - slug clash
        code = f"{code[:27]}-{hashlib.sha256(label.encode()).hexdigest()[:12]}"
    return Diagnosis.objects.create(
        code=code, name=label, description="Created by the reference import"
    )


def _reference_attach(*, study: Study, row: ManifestRow, admin, new_study: bool) -> bool:
    """Label `study` and approve it as a reference case unless it already is a live one.
    Returns whether anything was written; RowRejected when it is live under another label."""
    live = study.reference_cases.filter(state__in=LIVE_STATES).select_related("diagnosis")
    live = live.first()
    if live is not None:
        if live.diagnosis.name.lower() != row.label.lower():
            raise RowRejected(
                f"study {study.pk} is already in the reference library ({live.state}) "
                f"labelled {live.diagnosis.name!r}, not {row.label!r}"
            )
        return False
    diagnosis = _diagnosis_for(row.label)
    ExpertLabel.objects.create(
        study=study, diagnosis=diagnosis, expert=admin, comment=IMPORT_COMMENT
    )
    reference = ReferenceCase.objects.create(
        study=study,
        diagnosis=diagnosis,
        state=ReferenceCase.State.APPROVED,
        proposed_by=admin,
        approved_by=admin,
        comment=IMPORT_COMMENT,
        decided_at=timezone.now(),
    )
    # The manifest's label is the expert review: a study created by this import goes straight
    # to reviewed (it never enters the processing pipeline); an existing study only when its
    # status machine allows it, so that a study being processed is not disturbed.
    if new_study or study.can_transition(Study.Status.REVIEWED):
        Study.objects.filter(pk=study.pk).update(status=Study.Status.REVIEWED)
    audit_event_record(
        actor=admin,
        verb="reference.imported",
        obj=reference,
        detail={"study_id": study.pk, "diagnosis": diagnosis.code, "line": row.line},
    )
    return True


def _patient_for(pseudonym: str) -> Patient:
    patient = Patient.objects.filter(pseudonym=pseudonym).first()
    if patient is None:
        patient = Patient.objects.create(pseudonym=pseudonym, display_id=_display_id(pseudonym))
    return patient


def _npy_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, pixels, allow_pickle=False)
    return buf.getvalue()


def _image_row_import(*, row: ManifestRow, path: Path, admin, written: list[str]) -> RowOutcome:
    if path.is_dir():  # pragma: no cover - dispatched by the caller
        raise RowRejected("a folder")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RowRejected(f"cannot read {path} ({exc.strerror or exc})") from exc
    pseudonym = patient_pseudonym(patient_id=row.patient_id)
    # Same patient and same file content -> same study, whatever the file is called or where
    # it lies; an already imported image is not even decoded again.
    study_uid = deterministic_uid(
        "ildreview-reference-image", pseudonym, hashlib.sha256(data).hexdigest()
    )
    study = Study.objects.filter(study_instance_uid=study_uid).first()
    if study is not None:
        wrote = _reference_attach(study=study, row=row, admin=admin, new_study=False)
        return RowOutcome(row=row, status="created" if wrote else "existing", study_id=study.pk)
    try:
        image = reference_image_decode(data)
    except ImageReadError as exc:
        raise RowRejected(f"{path.name}: {exc}") from exc

    pixels = image.pixels.astype(np.uint8 if image.is_windowed else np.int16, copy=False)
    study = Study.objects.create(
        patient=_patient_for(pseudonym),
        study_instance_uid=study_uid,
        description=f"Reference image ({image.format})",
        uploaded_by=admin,
        source=Study.Source.REFERENCE_IMPORT,
    )
    series = Series.objects.create(
        study=study,
        series_instance_uid=deterministic_uid(study_uid, "series"),
        series_number=1,
        description=f"{image.format} image" + (" (windowed, 8-bit)" if image.is_windowed else ""),
        modality="CT",
        rows=pixels.shape[0],
        columns=pixels.shape[1],
        slice_count=1,
    )
    slice_row = Slice(
        series=series,
        sop_instance_uid=deterministic_uid(study_uid, "slice", "0"),
        instance_number=1,
        index=0,
        is_windowed=image.is_windowed,
        hu_min=None if image.is_windowed else float(pixels.min()),
        hu_max=None if image.is_windowed else float(pixels.max()),
    )
    name = slice_row.pixels.field.generate_filename(slice_row, "0000.npy")
    if default_storage.exists(name):  # a leftover of a deleted study: ours to replace
        default_storage.delete(name)
    slice_row.pixels.name = default_storage.save(name, ContentFile(_npy_bytes(pixels)))
    written.append(slice_row.pixels.name)
    slice_row.save()
    _reference_attach(study=study, row=row, admin=admin, new_study=True)
    # A colour image converted to grey says so (the command prints notes).
    note = "; ".join(image.warnings)
    return RowOutcome(row=row, status="created", study_id=study.pk, note=note)


def _series_media(series_ids: list[int]) -> list[str]:
    """Media files of the given series (slice pixels and the de-identified DICOM copies)."""
    names = list(Slice.objects.filter(series_id__in=series_ids).values_list("pixels", flat=True))
    for dicom_dir in Series.objects.filter(pk__in=series_ids).values_list("dicom_dir", flat=True):
        if dicom_dir:
            try:
                _, files = default_storage.listdir(dicom_dir)
            except (FileNotFoundError, NotImplementedError):
                files = []
            names.extend(f"{dicom_dir}/{f}" for f in files)
    return names


def _dicom_row_import(*, row: ManifestRow, path: Path, admin, written: list[str]) -> RowOutcome:
    last_series = Series.objects.aggregate(top=Max("pk"))["top"] or 0
    try:
        result = series_import_folder(
            folder=path, uploader=admin, source=Study.Source.REFERENCE_IMPORT
        )
    except IngestionError as exc:
        raise RowRejected(f"{exc.filename}: {exc.reason}") from exc
    study = result.studies[0]
    # Files the ingestion wrote for this row: removed if a later step of the row fails.
    new_series = list(study.series.filter(pk__gt=last_series).values_list("pk", flat=True))
    written.extend(_series_media(new_series))
    note = ""
    if study.patient.pseudonym != patient_pseudonym(patient_id=row.patient_id):
        note = (
            "the DICOM PatientID differs from the manifest's patient_id; filed under the DICOM one"
        )
    wrote = _reference_attach(study=study, row=row, admin=admin, new_study=result.created[0])
    status = "created" if (wrote or result.created[0] or new_series) else "existing"
    return RowOutcome(row=row, status=status, study_id=study.pk, note=note)


def reference_row_import(
    *, row: ManifestRow, base_dir: Path, admin: Any, written: list[str] | None = None
) -> RowOutcome:
    """Import one manifest row atomically; a refused row is returned as "rejected" with the
    reason, having written nothing. The names of media files written for an imported row are
    appended to `written` (so that a caller's enclosing transaction can clean up after them)."""
    mine: list[str] = []
    try:
        path = _row_check(row, Path(base_dir))
        with transaction.atomic():
            if path.is_dir():
                outcome = _dicom_row_import(row=row, path=path, admin=admin, written=mine)
            else:
                outcome = _image_row_import(row=row, path=path, admin=admin, written=mine)
    except RowRejected as exc:
        _media_delete(mine)
        return RowOutcome(row=row, status="rejected", reason=str(exc))
    except BaseException:
        _media_delete(mine)
        raise
    if written is not None:
        written.extend(mine)
    return outcome


def _media_delete(names: list[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:  # pragma: no cover - best effort, logged for the operator
            logger.exception("could not remove %s after a rejected row", name)


def reference_manifest_import(
    *,
    manifest: Path,
    admin: Any,
    on_row: Callable[[RowOutcome], None] | None = None,
) -> ReferenceImportReport:
    """Import every row of `manifest` (see the module docstring); `on_row` is called after
    each row (progress display).

    Rows are committed in batches of `BATCH_ROWS`, each row in its own savepoint: a rejected
    row rolls back alone, and one commit per batch instead of per row keeps a large manifest
    fast (SQLite syncs the disk at every commit)."""
    manifest = Path(manifest)
    rows = manifest_read(manifest=manifest)
    base_dir = manifest.resolve().parent
    report = ReferenceImportReport()
    for start in range(0, len(rows), BATCH_ROWS):
        written: list[str] = []
        try:
            with transaction.atomic():
                for row in rows[start : start + BATCH_ROWS]:
                    outcome = reference_row_import(
                        row=row, base_dir=base_dir, admin=admin, written=written
                    )
                    report.outcomes.append(outcome)
                    if on_row is not None:
                        on_row(outcome)
        except BaseException:
            _media_delete(written)  # the batch was rolled back: its files go too
            raise
    return report
