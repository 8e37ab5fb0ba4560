"""Deterministic DICOM UIDs (free of Django), for the writers of synthetic series
(`cases.dicom_writer`) and the reference-library import (UIDs of studies made from images)."""

from __future__ import annotations

import uuid

# Namespace of the UUIDs behind `deterministic_uid` (fixed: UIDs must not change between runs).
_UID_NAMESPACE = uuid.UUID("6f1f3f0e-6a51-4f43-9b53-0c3d2a8e7a10")


def deterministic_uid(*parts: str) -> str:
    """A DICOM UID (``2.25.<128-bit integer>``, PS3.5 B.2) derived from `parts` by UUIDv5, so
    the same parts always give the same UID and different parts practically never collide."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"
