"""Header values behind the review page's image-quality warnings, read from a source DICOM
dataset before de-identification: the body part examined and whether contrast was given.

Malformed values never fail an import: an unreadable tag counts as absent.
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

# Values of ContrastBolusAgent that mean "no contrast" (sites write these instead of leaving
# the tag empty).
NO_CONTRAST = {"", "NONE", "NO", "N", "NIL", "0", "NATIVE", "NON-CONTRAST", "NONCONTRAST"}


def _value(ds: Dataset, keyword: str):
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - a tag that pydicom cannot parse counts as absent
        return None


def body_part_examined(ds: Dataset) -> str:
    """BodyPartExamined as an upper-case code string ("CHEST"), "" when absent; characters
    outside the CS alphabet are dropped and the value is cut to 16 characters."""
    raw = _value(ds, "BodyPartExamined")
    text = str(raw or "").upper()
    return re.sub(r"[^A-Z0-9 _]", "", text).strip()[:16]


def contrast_enhanced(ds: Dataset) -> bool | None:
    """True when the header records a contrast agent (ContrastBolusAgent other than a "none"
    word, a ContrastBolusAgentSequence item, or a ContrastBolusVolume above 0), False when a
    contrast tag is present but says none, None when no contrast tag is present at all."""
    agent = _value(ds, "ContrastBolusAgent")
    sequence = _value(ds, "ContrastBolusAgentSequence")
    volume = _value(ds, "ContrastBolusVolume")
    route = _value(ds, "ContrastBolusRoute")
    if sequence:
        return True
    try:
        if volume not in (None, "") and float(volume) > 0:
            return True
    except (TypeError, ValueError):
        pass
    if agent is not None:
        return str(agent).strip().upper() not in NO_CONTRAST
    if volume is not None or route is not None:
        return False
    return None
