"""DICOM ingestion: the one service behind the browser upload, the REST API, `import_study`
and `import_reference` (DICOM series folders).

Two phases. First everything is validated without writing anything: files are collected
(zip archives expanded safely into a temporary folder), every instance is parsed and its pixel
data decoded to Hounsfield units once, instances are grouped into studies and series, slice
geometry is checked, and the database is consulted to decide what is new. Only then are rows
and media files written, inside one transaction; if anything fails the media files written so
far are deleted, so nothing is ever half-saved.

Idempotence: right after reading, every UID is replaced by its keyed pseudonym (`uid_pseudonym`,
deterministic), so the database holds no source UID; studies are then found by that
StudyInstanceUID, series by SeriesInstanceUID; a series that is already stored with (a superset
of) the incoming SOP Instance UIDs is skipped, so importing the same instances again creates
nothing. A new series for a known study is added to it. Stored DICOM copies are de-identified
to PS3.15 Annex E (`cases.dicom.deid`); no free text and no birth date of the DICOM reaches the
database (descriptions are generated from the kernel and slice thickness).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction
from django.db.models import BigIntegerField, ExpressionWrapper, F, Sum

from cases.dicom import DicomInputError
from cases.dicom.archive import ExtractedFile, looks_like_zip, zip_extract
from cases.dicom.deid import dataset_deidentify, uid_remap
from cases.dicom.quality_tags import body_part_examined, contrast_enhanced
from cases.dicom.reading import (
    CtSeries,
    CtStudy,
    DecodeBudget,
    ReadLimits,
    ct_instance_read,
    ct_studies_group,
    ignored_file,
)
from cases.models import Patient, Series, Slice, Study, series_dicom_dir
from cases.services.audit import audit_event_record

logger = logging.getLogger(__name__)


class IngestionError(Exception):
    """Refused input: `filename` names the file (or archive member), `reason` says why."""

    def __init__(self, filename: str, reason: str) -> None:
        self.filename = str(filename)
        self.reason = reason
        super().__init__(f"{self.filename}: {reason}")


@dataclass
class ImportResult:
    """Studies touched by one import, in input order; `created[i]` is True when `studies[i]`
    is new. `new_series[i]` counts the series written for it (0: nothing new at all)."""

    studies: list[Study] = field(default_factory=list)
    created: list[bool] = field(default_factory=list)
    new_series: list[int] = field(default_factory=list)


# Called with the import's result inside its transaction, before the commit.
BeforeCommit = Callable[[ImportResult], None]


# ---------------------------------------------------------------- pseudonyms


def _pseudonym_key() -> bytes:
    # Checked by `cases.checks` (`check --deploy`): set, not the development key, long enough.
    return settings.ILDREVIEW_PSEUDONYM_KEY.encode()


def patient_pseudonym(*, patient_id: str) -> str:
    """HMAC-SHA256 (hex) of the source PatientID under the secret `ILDREVIEW_PSEUDONYM_KEY`:
    the raw value is never stored, and without the key it cannot be found by trying MRNs."""
    message = b"ildreview-patient\x00" + patient_id.encode()
    return hmac.new(_pseudonym_key(), message, hashlib.sha256).hexdigest()


def uid_pseudonym(*, uid: str) -> str:
    """The UID stored for a source UID (`2.25.<HMAC>`, see `cases.dicom.deid.uid_remap`)."""
    return uid_remap(uid=uid, key=_pseudonym_key())


def _uids_pseudonymise(studies: list[CtStudy]) -> None:
    """Replace the source UIDs of what was read by their pseudonyms, before anything looks up
    or writes rows: the database only ever holds remapped UIDs (the stored DICOM copies get the
    same mapping in `dataset_deidentify`), and the mapping is deterministic, so importing the
    same files again finds the same rows."""
    for cs in studies:
        cs.study_uid = uid_pseudonym(uid=cs.study_uid)
        for s in cs.series:
            s.series_uid = uid_pseudonym(uid=s.series_uid)
            for inst in s.instances:
                inst.study_uid, inst.series_uid = cs.study_uid, s.series_uid
                inst.sop_uid = uid_pseudonym(uid=inst.sop_uid)


def _series_label(cs: CtSeries) -> str:
    """A technical description generated from the kernel and slice thickness: the DICOM's own
    descriptions are free text (they can name the patient) and are never stored."""
    kernel = "".join(c for c in cs.convolution_kernel if c.isalnum() or c in " ._-")[:16].strip()
    thickness = f"{cs.slice_thickness:g} mm" if cs.slice_thickness else ""
    return " ".join(p for p in (kernel, thickness) if p)


def _study_label(cs: CtStudy) -> str:
    first = _series_label(cs.series[0]) if cs.series else ""
    return f"CT {first}".strip()


def _display_id(pseudonym: str) -> str:
    """Short readable id ("P-1A2B3C4D"), lengthened in the unlikely case of a collision."""
    for length in (8, 12, 16, 24, 30):
        candidate = f"P-{pseudonym[:length].upper()}"
        if not Patient.objects.filter(display_id=candidate).exclude(pseudonym=pseudonym).exists():
            return candidate
    raise IntegrityError("no free display id")  # pragma: no cover - 2**120 collisions


# ---------------------------------------------------------------- collecting files


def _zip_limits() -> dict:
    return {
        "max_expanded_bytes": settings.ILDREVIEW_MAX_ZIP_EXPANDED_BYTES,
        "max_files": settings.ILDREVIEW_MAX_ZIP_FILES,
    }


def _file_expand(*, name: str, path: Path, workdir: Path) -> list[ExtractedFile]:
    """One input file: a zip archive is expanded (safely) into `workdir`, anything else is
    taken as a DICOM file."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if not looks_like_zip(head=head):
        return [ExtractedFile(name=name, path=path)]
    dest = Path(tempfile.mkdtemp(prefix="zip", dir=workdir))
    members = zip_extract(source=path, name=name, dest=dest, **_zip_limits())
    for member in members:
        with open(member.path, "rb") as fh:
            if looks_like_zip(head=fh.read(4)):
                raise DicomInputError(member.name, "nested zip archives are not supported")
    return members


def _path_collect(*, path: Path, workdir: Path) -> list[ExtractedFile]:
    """A file or a folder (searched recursively; files with or without the .dcm ending)."""
    if path.is_dir():
        found = []
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            if ignored_file(str(child.relative_to(path))):
                continue
            found.extend(_file_expand(name=str(child), path=child, workdir=workdir))
        return found
    if path.is_file():
        return _file_expand(name=str(path), path=path, workdir=workdir)
    raise DicomInputError(str(path), "no such file or folder")


# ---------------------------------------------------------------- validation


@dataclass
class _SeriesPlan:
    series: CtSeries
    existing: Series | None  # already stored: nothing to write


@dataclass
class _StudyPlan:
    study: CtStudy
    pseudonym: str
    existing: Study | None
    series: list[_SeriesPlan]


def _read_limits() -> ReadLimits:
    return ReadLimits(
        max_file_bytes=settings.ILDREVIEW_MAX_DICOM_FILE_BYTES,
        max_image_bytes=settings.ILDREVIEW_MAX_IMAGE_BYTES,
    )


def _user_decoded_bytes(*, user) -> int:
    """Bytes of decoded images (int16 HU) stored for the studies `user` uploaded."""
    size = ExpressionWrapper(
        F("rows") * F("columns") * F("slice_count") * 2, output_field=BigIntegerField()
    )
    stored = Series.objects.filter(study__uploaded_by=user).aggregate(total=Sum(size))["total"]
    return int(stored or 0)


def _decode_budgets(*, uploader, quota: bool) -> tuple[DecodeBudget, ...]:
    """Decoded bytes allowed to this import: per upload, and (uploads only) the uploader's
    quota. Both are charged from the headers before each image is decoded."""
    budgets = [
        DecodeBudget(
            limit=settings.ILDREVIEW_MAX_UPLOAD_DECODED_BYTES,
            what="upload too large once decoded",
        )
    ]
    limit = settings.ILDREVIEW_USER_QUOTA_DECODED_BYTES
    if quota and limit and uploader is not None and uploader.pk is not None:
        used = _user_decoded_bytes(user=uploader)
        budgets.append(
            DecodeBudget(
                limit=limit,
                used=used,
                what=f"storage quota exceeded ({used} bytes already stored for your studies)",
            )
        )
    return tuple(budgets)


def _studies_read(
    files: list[ExtractedFile], *, inputs: str, budgets: tuple[DecodeBudget, ...] = ()
) -> list[CtStudy]:
    if not files:
        raise DicomInputError(inputs, "no DICOM files found")
    limits = _read_limits()
    instances = [
        ct_instance_read(path=f.path, name=f.name, limits=limits, budgets=budgets) for f in files
    ]
    return ct_studies_group(instances=instances)


def _study_plan(cs: CtStudy, *, uploader) -> _StudyPlan:
    """Decide what of `cs` is new, refusing conflicts with what is stored (DB reads only).

    A study already stored that the uploader may not see is refused: re-uploading someone
    else's instances must neither reveal that study nor add series to it."""
    from cases.permissions import sees_all_studies

    first = cs.series[0].instances[0].name
    # No PatientID at all: one anonymous patient per study rather than one for all of them.
    pseudonym = patient_pseudonym(patient_id=cs.patient_id or f"study:{cs.study_uid}")
    existing = Study.objects.select_related("patient").filter(study_instance_uid=cs.study_uid)
    existing = existing.first()
    if existing is not None and existing.patient.pseudonym != pseudonym:
        raise DicomInputError(
            first, f"study {cs.study_uid} is already stored for a different patient"
        )
    if existing is not None and not (
        existing.uploaded_by_id == uploader.pk or sees_all_studies(uploader)
    ):
        raise DicomInputError(first, "this study was already uploaded by another user")
    plans = []
    for s in cs.series:
        name = s.instances[0].name
        incoming = {i.sop_uid for i in s.instances}
        stored = Series.objects.filter(series_instance_uid=s.series_uid).first()
        if stored is not None:
            if existing is None or stored.study_id != existing.pk:
                raise DicomInputError(
                    name, f"series {s.series_uid} is already stored under another study"
                )
            known = set(stored.slices.values_list("sop_instance_uid", flat=True))
            if not incoming <= known:
                raise DicomInputError(
                    name,
                    f"series {s.series_uid} is already stored with other instances "
                    f"({len(known)} slices); delete it before importing a different version",
                )
            plans.append(_SeriesPlan(series=s, existing=stored))
            continue
        clash = Slice.objects.filter(sop_instance_uid__in=incoming).first()
        if clash is not None:
            culprit = next(i.name for i in s.instances if i.sop_uid == clash.sop_instance_uid)
            raise DicomInputError(
                culprit, f"SOPInstanceUID {clash.sop_instance_uid} is already stored elsewhere"
            )
        plans.append(_SeriesPlan(series=s, existing=None))
    return _StudyPlan(study=cs, pseudonym=pseudonym, existing=existing, series=plans)


# ---------------------------------------------------------------- writing


def _npy_bytes(hu: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, hu.astype(np.int16, copy=False), allow_pickle=False)
    return buf.getvalue()


def _media_save(name: str, content: bytes, written: list[str]) -> str:
    # The name is ours (ids of rows this transaction created); a leftover file of a rolled-back
    # import that got the same ids is replaced.
    if default_storage.exists(name):
        default_storage.delete(name)
    saved = default_storage.save(name, ContentFile(content))
    written.append(saved)
    return saved


def _series_write(*, study: Study, cs: CtSeries, label: str, written: list[str]) -> Series:
    series = Series.objects.create(
        study=study,
        series_instance_uid=cs.series_uid,
        series_number=cs.series_number,
        description=_series_label(cs),
        modality="CT",
        convolution_kernel=cs.convolution_kernel,
        slice_thickness=cs.slice_thickness,
        pixel_spacing_row=cs.pixel_spacing[0],
        pixel_spacing_col=cs.pixel_spacing[1],
        rows=cs.rows,
        columns=cs.columns,
        slice_count=len(cs.instances),
        body_part=body_part_examined(cs.instances[0].dataset),
        contrast_enhanced=contrast_enhanced(cs.instances[0].dataset),
    )
    # Storage keys come from the new row's ids, never from the DICOM's UIDs.
    dicom_dir = series.dicom_dir = series_dicom_dir(series=series)
    series.save(update_fields=["dicom_dir"])
    rows = []
    for index, (inst, z) in enumerate(zip(cs.instances, cs.z_positions, strict=True)):
        row = Slice(
            series=series,
            sop_instance_uid=inst.sop_uid,
            instance_number=inst.instance_number,
            index=index,
            z_position=z,
            hu_min=float(inst.hu.min()),
            hu_max=float(inst.hu.max()),
        )
        row.pixels.name = _media_save(
            row.pixels.field.generate_filename(row, f"{index:04d}.npy"),
            _npy_bytes(inst.hu),
            written,
        )
        ds = dataset_deidentify(ds=inst.dataset, patient_label=label, uid_key=_pseudonym_key())
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        _media_save(f"{dicom_dir}/{index:04d}.dcm", buf.getvalue(), written)
        rows.append(row)
    Slice.objects.bulk_create(rows)
    return series


def _study_write(*, plan: _StudyPlan, uploader, source: str, written: list[str]):
    cs = plan.study
    patient = Patient.objects.filter(pseudonym=plan.pseudonym).first()
    if patient is None:
        patient = Patient.objects.create(
            pseudonym=plan.pseudonym,
            display_id=_display_id(plan.pseudonym),
            sex=cs.patient_sex,
        )
    study, created = plan.existing, plan.existing is None
    if created:
        study = Study.objects.create(
            patient=patient,
            study_instance_uid=cs.study_uid,
            study_date=cs.study_date,
            description=_study_label(cs),
            uploaded_by=uploader,
            source=source,
        )
    new = [p.series for p in plan.series if p.existing is None]
    for s in new:
        _series_write(study=study, cs=s, label=patient.display_id, written=written)
    if new:
        audit_event_record(
            actor=uploader,
            verb="study.imported",
            obj=study,
            detail={
                "created": created,
                "source": source,
                "series": [s.series_uid for s in new],
                "slices": sum(len(s.instances) for s in new),
            },
        )
    return study, created, len(new)


def _media_delete(names: Iterable[str]) -> None:
    for name in names:
        try:
            default_storage.delete(name)
        except OSError:  # pragma: no cover - best effort; logged for the operator
            logger.exception("could not remove %s after a failed import", name)


def _studies_store(
    *, studies: list[CtStudy], uploader, source: str, before_commit: BeforeCommit | None = None
) -> ImportResult:
    written: list[str] = []
    result = ImportResult()
    try:
        with transaction.atomic():
            plans = [_study_plan(cs, uploader=uploader) for cs in studies]
            for plan in plans:
                study, created, new = _study_write(
                    plan=plan, uploader=uploader, source=source, written=written
                )
                result.studies.append(study)
                result.created.append(created)
                result.new_series.append(new)
            if before_commit is not None:
                # In the same transaction: what it writes (the processing job) commits with
                # the rows, and its failure removes rows and files alike.
                before_commit(result)
    except IntegrityError as exc:
        _media_delete(written)
        # Only a concurrent import of the same UIDs gets past the checks in `_study_plan`.
        raise IngestionError(
            studies[0].series[0].instances[0].name,
            f"conflicts with a study being imported at the same time; try again ({exc})",
        ) from exc
    except BaseException:
        _media_delete(written)
        raise
    return result


def _import(
    *,
    files_of,
    inputs: str,
    uploader,
    source: str,
    one_series: bool = False,
    before_commit: BeforeCommit | None = None,
    quota: bool = False,
):
    """Collect (through `files_of(workdir)`), validate, then store; DicomInputError becomes
    IngestionError."""
    try:
        with tempfile.TemporaryDirectory(prefix="ildreview-import-") as tmp:
            files = files_of(Path(tmp))
            budgets = _decode_budgets(uploader=uploader, quota=quota)
            studies = _studies_read(files, inputs=inputs, budgets=budgets)
            _uids_pseudonymise(studies)
            if one_series:
                count = sum(len(s.series) for s in studies)
                if count != 1:
                    raise DicomInputError(inputs, f"expected one DICOM series, found {count}")
            return _studies_store(
                studies=studies, uploader=uploader, source=source, before_commit=before_commit
            )
    except DicomInputError as exc:
        raise IngestionError(exc.filename, exc.reason) from exc


# ---------------------------------------------------------------- public interface


def study_import_paths(
    *, paths: list[Path], uploader: AbstractBaseUser, source: str = Study.Source.UPLOAD
) -> ImportResult:
    """Import DICOM files, folders of them (recursively) and zip archives from disk."""

    def files_of(workdir: Path) -> list[ExtractedFile]:
        found = []
        for path in paths:
            found.extend(_path_collect(path=Path(path), workdir=workdir))
        return found

    inputs = ", ".join(str(p) for p in paths) or "(no paths)"
    return _import(files_of=files_of, inputs=inputs, uploader=uploader, source=source)


def study_import_uploads(
    *,
    files: list[UploadedFile],
    uploader: AbstractBaseUser,
    before_commit: BeforeCommit | None = None,
) -> ImportResult:
    """Import uploaded files (DICOM with or without .dcm, or zip archives) from the browser or
    the API. The total size is checked against `ILDREVIEW_MAX_UPLOAD_BYTES` first.
    `before_commit(result)` runs inside the import's transaction after the rows are written."""
    limit = settings.ILDREVIEW_MAX_UPLOAD_BYTES
    total = sum(f.size or 0 for f in files)
    names = ", ".join(Path(f.name or "upload").name for f in files) or "(no files)"
    if total > limit:
        raise IngestionError(
            names if len(files) == 1 else "upload",
            f"{total} bytes uploaded, over the limit of {limit} bytes",
        )

    def files_of(workdir: Path) -> list[ExtractedFile]:
        found = []
        for k, upload in enumerate(files):
            name = Path(upload.name or f"upload-{k}").name
            if hasattr(upload, "temporary_file_path"):
                path = Path(upload.temporary_file_path())
            else:
                path = workdir / f"upload{k:05d}"
                with open(path, "wb") as out:
                    for chunk in upload.chunks():
                        out.write(chunk)
            if ignored_file(name):
                continue
            found.extend(_file_expand(name=name, path=path, workdir=workdir))
        return found

    return _import(
        files_of=files_of,
        inputs=names,
        uploader=uploader,
        source=Study.Source.UPLOAD,
        before_commit=before_commit,
        quota=True,
    )


def series_import_folder(*, folder: Path, uploader: AbstractBaseUser, source: str) -> ImportResult:
    """Import one folder that must hold exactly one DICOM series (reference import)."""

    def files_of(workdir: Path) -> list[ExtractedFile]:
        folder_path = Path(folder)
        if not folder_path.is_dir():
            raise DicomInputError(str(folder), "not a folder")
        return _path_collect(path=folder_path, workdir=workdir)

    return _import(
        files_of=files_of, inputs=str(folder), uploader=uploader, source=source, one_series=True
    )
