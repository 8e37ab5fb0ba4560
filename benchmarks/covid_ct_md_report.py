"""Figures of benchmarks/covid_ct_md_eval.py from its folds: the rows' case-level and
infected-vs-clear metrics, the chance level of a random ranking, and the printed table."""

from __future__ import annotations

import numpy as np

MAP_K = 10


def _case_ap(ranked: list[tuple], label: str, n_relevant: int) -> float:
    hits, total = 0, 0.0
    for rank, (_, case_label, _) in enumerate(ranked, start=1):
        if case_label == label:
            hits += 1
            total += hits / rank
    return total / n_relevant if n_relevant else 0.0


def summarise(folds: list, rows: list, row_names) -> dict:
    """Figures per row: case level (a) and infected-vs-clear slice level (b)."""
    from retrieval.engine.metrics import average_precision_at_k

    labels = {r.patient: r.label for r in rows}
    out = {}
    for name in row_names:
        done = [f for f in folds if name in f.cases]
        if not done:
            out[name] = {"skipped": "no fold produced this row"}
            continue
        same = [
            sum(1 for p, lab in labels.items() if lab == f.label and p != f.patient) for f in done
        ]
        q_slices = [lab == f.label for f in done for lab in f.slice_top1[name]]
        row = {
            "folds": len(done),
            "case_top1": float(np.mean([f.cases[name][0][1] == f.label for f in done])),
            "case_map": float(
                np.mean(
                    [_case_ap(f.cases[name], f.label, n) for f, n in zip(done, same, strict=True)]
                )
            ),
            "case_vote": float(np.mean([f.suggested[name] == f.label for f in done])),
            "slice_top1": float(np.mean(q_slices)),
            "query_slices": len(q_slices),
        }
        inf = [f.infection[name] for f in done if name in f.infection]
        if inf:
            y = np.array([v for q, _ in inf for v in q])
            pred = np.array([ret[0] for _, r in inf for ret in r])
            tp = int(((pred == 1) & (y == 1)).sum())
            precision = tp / max(int((pred == 1).sum()), 1)
            recall = tp / max(int((y == 1).sum()), 1)
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            aps = []
            for q, r in inf:
                rel = np.array(r) == np.array(q)[:, None]
                aps.extend(average_precision_at_k(rel).tolist())
            row["infection"] = {
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "accuracy": float((pred == y).mean()),
                f"map@{MAP_K}": float(np.mean(aps)),
                "query_slices": int(len(y)),
                "infected_queries": int((y == 1).sum()),
            }
        out[name] = row
    return out


def chance(folds: list, draws: int = 2000, seed: int = 0) -> dict:
    """Expected figures of a random ranking on the same folds (exact where simple, else the
    mean over `draws` random orders): the level a row must beat to have found anything."""
    from retrieval.engine.metrics import average_precision_at_k

    rng = np.random.default_rng(seed)
    done = [f for f in folds if f.library_labels]
    top1, aps = [], []
    for f in done:
        rel = np.array([lab == f.label for lab in f.library_labels])
        top1.append(rel.mean())
        orders = np.array([rng.permutation(rel) for _ in range(draws)])
        hits = np.cumsum(orders, axis=1) * orders / np.arange(1, len(rel) + 1)
        aps.append(float(hits.sum(axis=1).mean() / max(rel.sum(), 1)))
    row = {
        "folds": len(done),
        "case_top1": float(np.mean(top1)),
        "case_map": float(np.mean(aps)),
        "case_vote": None,
        "slice_top1": float(np.mean([v for f in done for v in f.same_share])),
        "query_slices": sum(len(f.same_share) for f in done),
    }
    pairs = [pair for f in done for pair in f.infection_refs]
    if pairs:
        y = np.array([q for q, _ in pairs])
        p = np.array([np.mean(np.array(refs) == 1) for _, refs in pairs])
        precision = float((p * (y == 1)).sum() / max(p.sum(), 1e-12))
        recall = float(p[y == 1].mean()) if (y == 1).any() else 0.0
        ap = []
        for q, refs in pairs:
            k = min(MAP_K, len(refs))
            draws_q = np.array([rng.permutation(refs)[:k] for _ in range(50)]) == q
            ap.append(float(average_precision_at_k(draws_q).mean()))
        row["infection"] = {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
            "accuracy": float(np.mean(np.where(y == 1, p, 1 - p))),
            f"map@{MAP_K}": float(np.mean(ap)),
            "query_slices": int(len(y)),
            "infected_queries": int((y == 1).sum()),
        }
    return row


def table(summary: dict) -> str:
    head = (
        f"{'row':<16}{'case top-1':>11}{'case mAP':>10}{'vote':>7}{'slice top-1':>12}"
        f"{'inf P':>8}{'inf R':>8}{'inf F1':>8}{'inf mAP@10':>11}"
    )
    lines = [head, "-" * len(head)]
    for name, row in summary.items():
        if "skipped" in row:
            lines.append(f"{name:<16}skipped: {row['skipped']}")
            continue
        inf = row.get("infection", {})

        def fmt(v):
            return f"{v:.3f}" if isinstance(v, float) else "-"

        lines.append(
            f"{name:<16}{fmt(row['case_top1']):>11}{fmt(row['case_map']):>10}"
            f"{fmt(row['case_vote']):>7}{fmt(row['slice_top1']):>12}"
            f"{fmt(inf.get('precision')):>8}{fmt(inf.get('recall')):>8}{fmt(inf.get('f1')):>8}"
            f"{fmt(inf.get(f'map@{MAP_K}')):>11}"
        )
    return "\n".join(lines)
