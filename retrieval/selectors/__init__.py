"""Reads of retrieval records: model versions, their reports and the training library. The
review page's reads (similar cases, votes, radiomics rows, CAM files) are in
`retrieval.selectors.review`; the pipeline's own reads in `retrieval.pipeline.selectors`."""

from __future__ import annotations

from retrieval.models import ModelVersion


def model_version_active() -> ModelVersion | None:
    """The model version queries use, or None when none has been activated yet."""
    return ModelVersion.objects.filter(is_active=True).first()


def model_version_list() -> list[ModelVersion]:
    """All model versions, newest first."""
    return list(ModelVersion.objects.all())


def reference_training_slices() -> list[tuple]:
    """(slice, diagnosis name, patient pseudonym) of every slice of every approved reference
    case, for training a model on the library."""
    from cases.models import ReferenceCase, Slice

    out = []
    approved = ReferenceCase.objects.filter(state=ReferenceCase.State.APPROVED).select_related(
        "diagnosis", "study__patient"
    )
    for rc in approved:
        slices = Slice.objects.filter(series__study_id=rc.study_id).order_by("series_id", "index")
        out.extend((s, rc.diagnosis.name, rc.study.patient.pseudonym) for s in slices)
    return out


# --- model versions' evaluation reports (the browser pages of retrieval/views.py) ----------

# Files of a report folder that may be served (what `retrieval.engine.report` writes).
REPORT_FILE_SUFFIXES = (".html", ".json", ".png", ".svg", ".csv", ".md", ".txt")


def model_version_get(*, pk: int) -> ModelVersion | None:
    """One model version, or None."""
    return ModelVersion.objects.filter(pk=pk).first()


def model_report_file(*, version: ModelVersion, name: str):
    """The file `name` of the version's report folder as a Path, or None when the version has
    no report folder, the file does not exist, is not a report file type, or lies outside the
    folder (`..`, absolute paths and symlinks out of the folder are refused)."""
    from pathlib import Path

    if not version.report_dir or not name or "\x00" in name:
        return None
    root = Path(version.report_dir).resolve()
    try:
        path = (root / name).resolve()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or path == root:
        return None
    if path.suffix.lower() not in REPORT_FILE_SUFFIXES or not path.is_file():
        return None
    return path


def model_report_json(*, version: ModelVersion) -> dict | None:
    """The version's `report.json` as a dict, or None when absent or unreadable."""
    import json

    path = model_report_file(version=version, name="report.json")
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
