"""Audit trail writes."""

from __future__ import annotations

from typing import Any

from django.db import models

from cases.models import AuditEvent


def audit_event_record(
    *, actor: Any | None, verb: str, obj: models.Model | None = None, detail: dict | None = None
) -> AuditEvent:
    """Append one audit event (actor may be None for system actions)."""
    return AuditEvent.objects.create(
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        verb=verb,
        object_type=obj._meta.label if obj is not None else "",
        object_id=str(obj.pk) if obj is not None else "",
        object_repr=str(obj)[:255] if obj is not None else "",
        detail=detail or {},
    )
