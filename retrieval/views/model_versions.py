"""Pages of the retrieval app: the model versions and their evaluation reports.

Experts and admins only (clinicians get 403; anonymous users are sent to the login page by the
site-wide middleware). A version's report folder is served file by file through
`retrieval.selectors.model_report_file`, which refuses anything outside that folder.
"""

from __future__ import annotations

import json
import mimetypes

from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET

from cases import permissions
from retrieval import selectors

# The report page is generated from data, but it is served from our origin: it may show its
# own inline styles and images and nothing else (no scripts, no requests, no forms).
REPORT_CSP = (
    "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox; "
    "frame-ancestors 'self'"
)
# Headline figures shown in the list and on top of the detail page, in this order.
HEADLINE = (
    ("macro_f1", "macro F1"),
    ("accuracy", "accuracy"),
    ("map_at_10", "mAP@10"),
    ("precision_at_10", "P@10"),
)


def _require_expert_or_admin(request: HttpRequest) -> None:
    if not permissions.sees_all_studies(request.user):
        raise PermissionDenied("Model versions are shown to experts and admins.")


def _version_or_404(pk: int):
    version = selectors.model_version_get(pk=pk)
    if version is None:
        raise Http404("No such model version.")
    return version


def _headline(metrics: dict) -> list[tuple[str, float]]:
    return [
        (title, metrics[key])
        for key, title in HEADLINE
        if isinstance(metrics.get(key), int | float)
    ]


def _signed(value) -> str:
    return f"{value:+.3f}" if isinstance(value, int | float) else ""


def holdout_rows(table: dict) -> dict:
    """The held-out gate's table (`ModelVersion.holdout`) as rows for the pages and the admin:
    {"rows": [(title, macro F1, accuracy, mAP@10)] for the frozen backbone, the active version
    (at training time) and this version, then the differences of this version to each;
    "note": the split it was measured on, or why there is no table}."""
    from retrieval.engine.holdout import METRICS, ROW_TITLES, ROWS

    rows = (table or {}).get("rows") or {}
    if not rows:
        return {
            "rows": [],
            "note": (table or {}).get("skipped") or "Not evaluated on held-out patients.",
        }
    out = []
    for name in ROWS:
        row = rows.get(name)
        if not row:
            continue
        title = ROW_TITLES[name] + (f" ({row['version']})" if row.get("version") else "")
        out.append((title, *[_fmt(row.get(m)) for m in METRICS]))
    for key, delta in (table.get("deltas") or {}).items():
        other = ROW_TITLES.get(key.removeprefix("vs_"), key)
        out.append((f"this version − {other}", *[_signed(delta.get(m)) for m in METRICS]))
    note = (
        f"{table.get('n_heldout_slices', '?')} held-out slices of "
        f"{table.get('n_heldout_patients', '?')} patients; the recipe trained on "
        f"{table.get('n_train_patients', '?')} other patients (seed {table.get('seed', 0)})."
    )
    if table.get("serves"):
        note += f" This version serves the {table['serves']}."
    return {"rows": out, "note": note}


def _list_gate(table: dict) -> list[tuple[str, str]]:
    """(title, macro F1) of this version, the frozen backbone and the active version."""
    from retrieval.engine.holdout import ROW_TITLES

    rows = (table or {}).get("rows") or {}
    return [
        (ROW_TITLES[name], _fmt(rows[name].get("macro_f1")))
        for name in ("this", "frozen", "active")
        if name in rows
    ]


@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    """Every model version, newest first, the active one marked, with headline metrics and the
    held-out gate's macro F1 (this version, frozen backbone, active version)."""
    _require_expert_or_admin(request)
    rows = [
        {
            "version": v,
            "headline": _headline(v.metrics or {}),
            "gate": _list_gate(v.holdout or {}),
        }
        for v in selectors.model_version_list()
    ]
    return render(request, "retrieval/model_list.html", {"rows": rows})


@require_GET
def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Config, metrics and the evaluation report of one version: the report's HTML page in a
    frame when the folder has one, else the tables of its `report.json`."""
    _require_expert_or_admin(request)
    version = _version_or_404(pk)
    report = selectors.model_report_json(version=version)
    has_html = selectors.model_report_file(version=version, name="report.html") is not None
    return render(
        request,
        "retrieval/model_detail.html",
        {
            "version": version,
            "headline": _headline(version.metrics or {}),
            "gate": holdout_rows(version.holdout or {}),
            "config_rows": _rows(version.config or {}),
            "metric_rows": _rows(version.metrics or {}),
            "report": _report_tables(report) if report else None,
            "has_html": has_html,
        },
    )


@require_GET
@xframe_options_sameorigin
def model_report_file(request: HttpRequest, pk: int, name: str) -> FileResponse:
    """One file of the version's report folder (the HTML page, its PNGs, report.json)."""
    _require_expert_or_admin(request)
    version = _version_or_404(pk)
    path = selectors.model_report_file(version=version, name=name)
    if path is None:
        raise Http404("No such report file.")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    response = FileResponse(path.open("rb"), content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = REPORT_CSP
    return response


def _rows(data: dict) -> list[tuple[str, str]]:
    """(key, compact JSON value) of a config/metrics dict, for a two-column table."""
    out = []
    for key, value in data.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if isinstance(value, float):
            text = f"{value:.4g}"
        out.append((str(key), text))
    return out


def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else ""


def _report_tables(report: dict) -> dict:
    """The parts of an engine report (`retrieval.engine.report`) as plain rows for the
    template: headline, ablation, per class, confusion matrix, run description."""
    from retrieval.engine.report import TABLE_COLUMNS

    def cell(row: dict, key: str) -> str:
        if key.startswith("recall_at_") and key != "recall_at_k":
            return _fmt((row.get("recall_at_k") or {}).get(key.removeprefix("recall_at_")))
        return _fmt(row.get(key))

    ablation = report.get("ablation") or {}
    labels = [str(label) for label in report.get("labels") or []]
    matrix = report.get("confusion_matrix") or []
    return {
        "headline": [(title, _fmt(report.get(key))) for key, title in HEADLINE if key in report],
        "columns": [title for _, title in TABLE_COLUMNS],
        "ablation": [
            (name, [cell(row, key) for key, _ in TABLE_COLUMNS])
            for name, row in ablation.items()
            if isinstance(row, dict)
        ],
        "per_class": [
            (
                label,
                _fmt(v.get("precision")),
                _fmt(v.get("recall")),
                _fmt(v.get("f1")),
                v.get("support", ""),
            )
            for label, v in (report.get("per_class") or {}).items()
            if isinstance(v, dict)
        ],
        "labels": labels,
        "confusion": list(zip(labels, matrix, strict=False)),
        "meta": _rows(report.get("meta") or {}),
    }
