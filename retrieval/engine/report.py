"""Write an evaluation report as `report.json` and a self-contained `report.html`.

The HTML embeds its images (confusion matrix, 2-D projection of the embeddings) as base64 PNG,
so the one file can be mailed or archived; the PNGs are also written beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("macro_f1", "macro F1"),
    ("accuracy", "accuracy"),
    ("map_at_10", "mAP@10"),
    ("precision_at_10", "P@10"),
    ("recall_at_1", "R@1"),
    ("recall_at_8", "R@8"),
    ("silhouette", "silhouette"),
    ("intra_class_distance", "intra-class d"),
    ("inter_class_distance", "inter-class d"),
    ("case_macro_f1", "case F1"),
    ("case_map_at_10", "case mAP@10"),
    ("coverage", "coverage"),
    ("accuracy_at_coverage", "acc@coverage"),
)


def chosen_per_fold_markdown(report: dict) -> str:
    """One line per fold: the headline's chosen candidate, k and inner-validation scores."""
    lines = []
    for fold in report.get("folds", []):
        c = fold.get("chosen") or {}
        if not c:
            continue
        guard = c.get("guard") or {}
        note = ""
        if guard:
            verdict = "kept" if guard.get("kept") else "refused: frozen served"
            note = (
                f"; guard on {guard.get('candidate')}: gain {guard.get('gain', 0):+.3f}, "
                f"lower bound {guard.get('lower', 0):+.3f}, {verdict}"
            )
        lines.append(
            f"- fold {fold['fold']}: {c.get('candidate')} k {c.get('k')} (inner macro F1 "
            f"{c.get('inner_macro_f1', float('nan')):.3f}; frozen "
            f"{c.get('inner_macro_f1_frozen', float('nan')):.3f}; best "
            f"{c.get('inner_macro_f1_best', float('nan')):.3f}{note})"
        )
    return "\n".join(lines)


def _cell(row: dict, key: str) -> str:
    if key.startswith("recall_at_") and key != "recall_at_k":
        value = row.get("recall_at_k", {}).get(key.removeprefix("recall_at_"))
    else:
        value = row.get(key)
    return "" if value is None else f"{value:.3f}"


def ablation_table_markdown(report: dict) -> str:
    """The ablation rows as a Markdown table (for docs and the console)."""
    header = "| variant | " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [header, sep]
    for name, row in report.get("ablation", {}).items():
        lines.append(f"| {name} | " + " | ".join(_cell(row, k) for k, _ in TABLE_COLUMNS) + " |")
    return "\n".join(lines)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def confusion_matrix_png(matrix: list[list[int]], labels: list[str], *, title: str) -> bytes:
    """A labelled confusion-matrix heat map (rows: true label, columns: top-1 retrieved)."""
    m = np.asarray(matrix, dtype=float)
    size = 2.0 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("decided label")
    ax.set_ylabel("true label")
    ax.set_title(title)
    threshold = m.max() / 2 if m.size else 0
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            colour = "white" if m[i, j] > threshold else "black"
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def projection_png(
    embeddings: np.ndarray, labels: list[str], *, title: str, held_out: np.ndarray | None = None
) -> bytes:
    """PCA projection of the embeddings to 2-D, coloured by class; held-out points as crosses."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels_arr = np.asarray(labels).astype(str)
    n_comp = min(2, x.shape[1], x.shape[0])
    xy = PCA(n_components=n_comp, random_state=0).fit_transform(x)
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(xy), 2 - xy.shape[1]))])
    mask_test = np.zeros(len(x), bool) if held_out is None else np.asarray(held_out, bool)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(sorted(set(labels_arr.tolist()))):
        sel = labels_arr == label
        colour = cmap(i % 10)
        ax.scatter(*xy[sel & ~mask_test].T, s=10, alpha=0.6, color=colour, label=label)
        if mask_test.any():
            ax.scatter(*xy[sel & mask_test].T, s=24, marker="x", color=colour)
    ax.set_title(title)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(markerscale=2, fontsize=8)
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(report: dict) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in TABLE_COLUMNS)
    rows = []
    for name, row in report.get("ablation", {}).items():
        cells = "".join(f"<td>{_cell(row, k)}</td>" for k, _ in TABLE_COLUMNS)
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return f"<table><tr><th>variant</th>{head}</tr>{''.join(rows)}</table>"


def _per_class_html(report: dict) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v.get('support', '')}</td></tr>"
        for label, v in report.get("per_class", {}).items()
    )
    return (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>n</th></tr>"
        f"{rows}</table>"
    )


def write_report(
    report: dict,
    out_dir: Path,
    *,
    projection: tuple[np.ndarray, list[str], np.ndarray | None] | None = None,
) -> tuple[Path, Path]:
    """Write `report.json` and `report.html` (plus the PNGs) into `out_dir`.

    `report` must hold the headline metrics (`per_class`, `confusion_matrix`, `labels`, ...) and
    `ablation`; `projection` is (embeddings, labels, held-out mask) for the scatter plot.
    Returns the JSON and HTML paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=False, default=float))

    headline = report.get("headline", "adaptive")
    cm_png = confusion_matrix_png(
        report.get("confusion_matrix", []),
        report.get("labels", []),
        title=f"{headline}: decision",
    )
    (out_dir / "confusion_matrix.png").write_bytes(cm_png)
    proj_html = ""
    if projection is not None:
        emb, labels, held_out = projection
        proj_png = projection_png(
            emb, labels, title=f"{headline} embeddings (PCA), fold 1", held_out=held_out
        )
        (out_dir / "projection.png").write_bytes(proj_png)
        proj_html = (
            "<h2>Embeddings (PCA, fold 1)</h2><p>Dots: indexed (train) slices; crosses: "
            "held-out queries.</p>" + _img(proj_png, "2-D projection of the embeddings")
        )
    meta = report.get("meta", {})
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
        for k, v in meta.items()
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ildreview retrieval evaluation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 1100px; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Retrieval evaluation</h1>
<p>Headline variant <b>{html.escape(headline)}</b>: macro F1 {report.get("macro_f1", 0):.3f},
accuracy {report.get("accuracy", 0):.3f}, mAP@10 {report.get("map_at_10", 0):.3f}.</p>
<h2>Ablation (same folds, same run)</h2>
{_table_html(report)}
<h2>Headline choice per fold (inner validation)</h2>
<pre>{html.escape(chosen_per_fold_markdown(report))}</pre>
<h2>Per class ({html.escape(headline)})</h2>
{_per_class_html(report)}
<h2>Confusion matrix</h2>
{_img(cm_png, "confusion matrix")}
{proj_html}
<h2>Run</h2>
<table>{meta_rows}</table>
</body></html>
"""
    html_path = out_dir / "report.html"
    html_path.write_text(page)
    return json_path, html_path
