"""Reads of retrieval records (model versions)."""

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
