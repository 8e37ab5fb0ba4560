"""Image-quality warnings shown beside the suggested diagnosis.

Read from what the import stored from the DICOM headers (`cases.models.Series`: slice
thickness, body part, contrast) and from the pipeline's count of slices with enough lung
(`StudyResult.query_slice_count`). Each warning says why the suggestion may be less reliable;
the library is thin-section, non-contrast chest HRCT.
"""

from __future__ import annotations

from dataclasses import dataclass

from cases.models import Series

HRCT_MAX_THICKNESS_MM = 2.0
MIN_LUNG_SLICES = 20
CHEST_BODY_PARTS = {"CHEST", "LUNG", "THORAX", "CHESTABDOMEN", "CHEST_ABDOMEN", "CHESTABDPELVIS"}


@dataclass(frozen=True)
class QualityWarning:
    code: str
    title: str
    detail: str


def _chest(body_part: str) -> bool:
    part = body_part.replace(" ", "").upper()
    return part in CHEST_BODY_PARTS or part.startswith("CHEST") or "LUNG" in part


def series_quality_warnings(
    *, series: Series | None, lung_slice_count: int | None
) -> list[QualityWarning]:
    """Warnings for the query series (the one the review shows) and the number of its slices
    that show enough lung to be queried (None: not known yet)."""
    out: list[QualityWarning] = []
    if series is not None:
        thickness = series.slice_thickness
        if thickness is not None and thickness > HRCT_MAX_THICKNESS_MM:
            out.append(
                QualityWarning(
                    code="thick-slices",
                    title=f"{thickness:g} mm slices: not HRCT",
                    detail=(
                        f"High-resolution CT has slices of {HRCT_MAX_THICKNESS_MM:g} mm or "
                        "thinner; fine reticulation and ground glass blur on thicker slices."
                    ),
                )
            )
        if series.body_part and not _chest(series.body_part):
            out.append(
                QualityWarning(
                    code="not-chest",
                    title=f"Body part {series.body_part}, not chest",
                    detail="The header names another body part than the chest.",
                )
            )
        if series.contrast_enhanced:
            out.append(
                QualityWarning(
                    code="contrast",
                    title="Contrast-enhanced",
                    detail=(
                        "The header records a contrast agent; vessels and lung density look "
                        "different from the non-contrast library."
                    ),
                )
            )
    if lung_slice_count is not None and lung_slice_count < MIN_LUNG_SLICES:
        out.append(
            QualityWarning(
                code="few-lung-slices",
                title=f"Only {lung_slice_count} slice{'s' if lung_slice_count != 1 else ''} "
                "with lung",
                detail=(
                    f"Fewer than {MIN_LUNG_SLICES} slices show enough lung to compare; the "
                    "suggestion rests on a small part of the lungs."
                ),
            )
        )
    return out
