"""Evaluation manifests: reading the rows (path,label,patient_id[,split]) and checking that
every image can be decoded, so that unusable input is listed and skipped instead of stopping a
run (see docs/evaluation.md)."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Progress = Callable[[str, int, int], None]


class ManifestError(ValueError):
    """The manifest cannot be used (missing column, missing file, too few classes...)."""


@dataclass
class ManifestItems:
    """The rows of a manifest: one image per row."""

    paths: list[Path]
    labels: list[str]
    patients: list[str]
    splits: list[str]
    skipped: list[dict] = field(default_factory=list)  # {"line", "path", "reason"}
    converted: list[dict] = field(default_factory=list)  # {"path", "warning"}: colour -> grey

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: Sequence[int]) -> ManifestItems:
        return ManifestItems(
            paths=[self.paths[i] for i in idx],
            labels=[self.labels[i] for i in idx],
            patients=[self.patients[i] for i in idx],
            splits=[self.splits[i] for i in idx],
            skipped=list(self.skipped),
            converted=list(self.converted),
        )


def read_manifest(
    path: Path, *, limit: int | None = None, seed: int = 0, strict: bool = True
) -> ManifestItems:
    """Read a manifest (path,label,patient_id[,split]); paths are relative to the manifest.

    `limit` keeps a random subset of that many rows, sampled whole patients at a time so that
    no patient is split, for quick runs. Raises ManifestError naming the file and the reason;
    with `strict=False` a row whose file is missing or whose label/patient is empty is listed
    in `items.skipped` (line, path, reason) instead.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label", "patient_id"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    if not rows:
        raise ManifestError(f"{path}: no rows")
    items = ManifestItems([], [], [], [])
    for n, row in enumerate(rows, start=2):
        file = (path.parent / (row["path"] or "")).resolve()
        reason = None
        if not (row["path"] or "").strip() or not file.is_file():
            reason = f"{row['path']} does not exist"
        elif not (row["label"] or "").strip() or not (row["patient_id"] or "").strip():
            reason = "empty label or patient_id"
        if reason is not None:
            if strict:
                raise ManifestError(f"{path}, line {n}: {reason}")
            items.skipped.append({"line": n, "path": str(row["path"]), "reason": reason})
            continue
        items.paths.append(file)
        items.labels.append(row["label"].strip())
        items.patients.append(row["patient_id"].strip())
        items.splits.append((row.get("split") or "").strip().lower())
    if not len(items):
        raise ManifestError(f"{path}: no usable rows ({len(items.skipped)} skipped)")
    if limit is not None and limit < len(items):
        items = _limit_by_patient(items, limit=limit, seed=seed)
    if len(set(items.labels)) < 2:
        raise ManifestError(f"{path}: need at least 2 classes, found {sorted(set(items.labels))}")
    return items


def _limit_by_patient(items: ManifestItems, *, limit: int, seed: int) -> ManifestItems:
    """About `limit` rows, whole patients drawn at random, stratified by label."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[str]] = {}
    first_label: dict[str, str] = {}
    for label, patient in zip(items.labels, items.patients, strict=True):
        if patient not in first_label:
            first_label[patient] = label
            by_label.setdefault(label, []).append(patient)
    order: list[str] = []
    shuffled = {k: list(rng.permutation(v)) for k, v in sorted(by_label.items())}
    while any(shuffled.values()):  # round-robin over labels keeps the classes balanced
        for patients in shuffled.values():
            if patients:
                order.append(patients.pop())
    chosen: set[str] = set()
    count = 0
    counts = {p: items.patients.count(p) for p in first_label}
    for patient in order:
        if count >= limit:
            break
        chosen.add(patient)
        count += counts[patient]
    return items.subset([i for i, p in enumerate(items.patients) if p in chosen])


def check_images(
    items: ManifestItems, *, strict: bool = False, progress: Progress | None = None
) -> ManifestItems:
    """Decode every image once (`preprocess.load_image_file`); rows that cannot be read are
    listed in `skipped` with their reason and left out (ManifestError with `strict`). Colour
    images that are not grey saved as colour are converted to grey with a warning, listed in
    `converted`."""
    import warnings

    from retrieval.engine.preprocess import ImageLoadError, load_image_file

    keep, converted = [], []
    skipped = list(items.skipped)
    for i, path in enumerate(items.paths):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                load_image_file(path)
        except (ImageLoadError, ValueError, OSError, MemoryError) as exc:
            if strict:
                raise ManifestError(f"{path}: {exc}") from exc
            skipped.append({"path": str(path), "reason": str(exc)})
            continue
        for w in caught:
            converted.append({"path": str(path), "warning": str(w.message)})
        keep.append(i)
        if progress:
            progress("read", i + 1, len(items))
    out = items.subset(keep)
    out.skipped = skipped
    out.converted = converted
    return out
