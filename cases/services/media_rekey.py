"""Move files stored by older versions under UID-named keys (`slices/<SeriesInstanceUID>/...`,
`dicom/<StudyInstanceUID>/<SeriesInstanceUID>/...`) to the id-based keys of `cases.models`.

Not needed for serving (rows keep the key their file lies under, and files are served through
the row); it removes DICOM strings from the storage layout. Run by `manage.py media_rekey`
rather than a migration: copying every file through the storage API can take long on a remote
store, and a migration runs in one database transaction that a failure half-way would roll
back after files had been moved. Here each file is copied, then its row is pointed at the copy,
then the old file is deleted, so an interrupted run leaves every row pointing at an existing
file and a rerun continues where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.core.files.storage import default_storage
from django.db import transaction

from cases.models import Series, Slice, series_dicom_dir, slice_upload_to

logger = logging.getLogger(__name__)


@dataclass
class RekeyReport:
    series_seen: int = 0
    files_moved: int = 0
    files_missing: int = 0


def _copy(old: str, new: str) -> bool:
    """Copy stored file `old` to key `new` (replacing whatever is there: the key belongs to
    this row's ids); False when `old` is gone."""
    if not default_storage.exists(old):
        return False
    if default_storage.exists(new):
        default_storage.delete(new)
    with default_storage.open(old, "rb") as fh:
        saved = default_storage.save(new, fh)
    if saved != new:  # pragma: no cover - only a concurrent writer of the same key
        raise RuntimeError(f"could not write {new} (storage chose {saved})")
    return True


def _series_rekey(series: Series, *, dry_run: bool, report: RekeyReport, log) -> None:
    slices = list(series.slices.order_by("index"))
    old_dicom_dir, new_dicom_dir = series.dicom_dir, series_dicom_dir(series=series)
    moves: list[tuple[str, str]] = []
    pixel_keys: dict[int, str] = {}
    pixel_prefix = slice_upload_to(Slice(series=series), "")
    for slice_ in slices:
        new = slice_upload_to(slice_, f"{slice_.index:04d}.npy")
        if slice_.pixels.name and not slice_.pixels.name.startswith(pixel_prefix):
            moves.append((slice_.pixels.name, new))
            pixel_keys[slice_.pk] = new
        if old_dicom_dir and old_dicom_dir != new_dicom_dir:
            name = f"{slice_.index:04d}.dcm"
            moves.append((f"{old_dicom_dir}/{name}", f"{new_dicom_dir}/{name}"))
    if not moves:
        return
    for old, new in moves:
        log(f"{old} -> {new}")
    if dry_run:
        report.files_moved += len(moves)
        return
    copied = []
    for old, new in moves:
        if _copy(old, new):
            copied.append(old)
        else:
            report.files_missing += 1
            logger.warning("media_rekey: %s is missing; its row is pointed at %s anyway", old, new)
    with transaction.atomic():
        for pk, new in pixel_keys.items():
            Slice.objects.filter(pk=pk).update(pixels=new)
        if old_dicom_dir and old_dicom_dir != new_dicom_dir:
            Series.objects.filter(pk=series.pk).update(dicom_dir=new_dicom_dir)
    # Only now that the rows point at the copies may the originals go.
    for old in copied:
        default_storage.delete(old)
    report.files_moved += len(copied)


def media_rekey(*, dry_run: bool = False, log: Callable[[str], None] | None = None) -> RekeyReport:
    """Move every stored slice and DICOM copy whose key is not the id-based one; CAM overlays
    (`results/<study id>/<model version id>/...`) were always id-based."""
    report = RekeyReport()
    log = log or (lambda line: None)
    for series in Series.objects.order_by("pk").iterator(chunk_size=200):
        report.series_seen += 1
        _series_rekey(series, dry_run=dry_run, report=report, log=log)
    return report
