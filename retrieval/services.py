"""Writes of retrieval records: registering and activating trained model versions."""

from __future__ import annotations

import json
from pathlib import Path

from django.db import transaction

from cases.services.audit import audit_event_record
from retrieval.models import ModelVersion


class ModelVersionError(ValueError):
    """A model version cannot be registered or activated (reason in the message)."""


def _artefact_summary(artefact_dir: Path) -> dict:
    """Backbone, weights hash, config and metrics of a saved artefact, read from its JSON
    description without loading any weights (registration must stay cheap)."""
    from retrieval.engine.artefact import read_artefact_meta

    try:
        return read_artefact_meta(artefact_dir)
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise ModelVersionError(f"{artefact_dir}: not a readable model artefact ({exc})") from exc


@transaction.atomic
def model_version_register(
    *, artefact_dir: Path | str, name: str, activate: bool = False, report_dir: str = ""
) -> ModelVersion:
    """Record a saved artefact folder as a model version (optionally making it the active one).

    Raises ModelVersionError when the folder is not an artefact or the name is taken; nothing
    is saved then.
    """
    artefact_dir = Path(artefact_dir).resolve()
    if not artefact_dir.is_dir():
        raise ModelVersionError(f"{artefact_dir}: artefact folder does not exist")
    if ModelVersion.objects.filter(name=name).exists():
        raise ModelVersionError(f"a model version named {name!r} already exists")
    meta = _artefact_summary(artefact_dir)
    version = ModelVersion.objects.create(
        name=name,
        artefact_dir=str(artefact_dir),
        backbone=meta.get("backbone_name", ""),
        backbone_weights_sha256=meta.get("backbone_weights_sha256", "") or "",
        config=meta.get("config", {}) or {},
        metrics=meta.get("metrics", {}) or {},
        report_dir=report_dir,
    )
    audit_event_record(actor=None, verb="model_version.register", obj=version)
    if activate:
        model_version_activate(version=version)
    return version


@transaction.atomic
def model_version_activate(*, version: ModelVersion) -> ModelVersion:
    """Make `version` the one active model version (the previous one is deactivated)."""
    ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).update(is_active=False)
    version.is_active = True
    version.save(update_fields=["is_active"])
    audit_event_record(actor=None, verb="model_version.activate", obj=version)
    return version
