"""Frozen deep-feature variants, deep only: COVID-CT (5-fold, patient level) and COVID-CT-MD.

    nice -n 19 python benchmarks/frozen_features_bench.py [--data DIR] [--cache DIR]
        [--extractions lite0,lite2,lite1,lite0_384] [--threads N] [--limit N]

What is compared: variants of the frozen vector that every served embedding contains (the
`deep_only` row of `evaluate_retrieval`: frozen backbone + GeM, L2, cosine top-1), each beside
the served one (`baseline`) in the same run, on the same prepared slices and folds. No
radiomics, no training: these are deep_only rows, not the adaptive headline.

Variants (`retrieval.engine.feature_variants`): horizontal-flip test-time augmentation (mean of
the L2-normalised vectors of the slice and its mirror); multi-level GeM (the GeM vectors of the
last 2 or 3 levels of the trunk, each L2-normalised, concatenated); EfficientNet-Lite1 / Lite2
instead of Lite0 (same 512 px input); Lite0 and Lite2 concatenated (each L2-normalised); Lite0
fed 384 px instead of 512 (the slice is prepared at 512 and resized, as `--input-size` does).

Datasets (under ILDREVIEW_REAL_DATA, default ../shared/datasets):
(A) `covid-ct/manifest.csv` read as `evaluate_retrieval` reads it (`read_manifest`,
    `check_images`, unreadable rows skipped), slices prepared by `prepare_slice` at 512 px,
    folds from the evaluation's own `_fold_splits(folds=5, seed=0)` (patient-level
    `patient_kfold`, so a query never finds its own patient), exact cosine search of the held-out
    fold among the training fold, pooled over folds, `metrics.retrieval_metrics`: macro F1 of the
    top-1 label and mAP@10. ΔF1 is the difference from the baseline with a 95 % interval from a
    paired bootstrap over patients (2000 draws).
(B) `covid-ct-md/`: the four patients with slice-level infection labels (P001, P002, cap001,
    cap002), read through the upload's DICOM path with the UID repair, exactly as
    `benchmarks/covid_ct_md_eval.py` does (its `slices_read`, `uids_repair`, `series_hu`,
    `fold_run` and `summarise` are reused): leave one patient out, each labelled usable slice
    queries the labelled slices of the other three, top-1 label -> F1 of "infected"; mAP@10.
    A slice is usable when its lung fraction is >= 0.05 (that script also asks pyradiomics to
    accept the mask; the bench does not run pyradiomics and prints the query count, which must
    be that script's 147 for the figures to be comparable).

Features are cached per dataset and extraction under `--cache` (default var/feature-variants/:
`<dataset>/<extraction>.npz` with the raw GeM vectors of every level and view, and
`<dataset>/slices.npz` with the lung fractions), written after every chunk, so an interrupted
run resumes and a rerun only evaluates. CPU s/img is the process CPU time of one backbone pass
per image (torch `--threads`, default 1), timed at the end of every run on the same first
`--timing-images` COVID-CT slices (batches of 8, after a warm-up), summed over the passes a
variant needs (a mirrored view is a second pass); preparing a slice (read, window, resize, lung
mask) is the same for all and printed apart. CPU time includes the kernel's (page faults of
the large 512 px activations), so it varies with the machine's load; compare within a run.

Writes `<cache>/report.json` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SIZE = 512
MD_MIN_LUNG_FRACTION = 0.05  # covid_ct_md_eval.MIN_LUNG_FRACTION
CT_MIN_LUNG_FRACTION = 0.0  # evaluate_retrieval's default --min-lung-fraction
CHUNK = 16
BOOTSTRAP = 2000

# One backbone pass each: which backbone, input side, mirrored view or not, how many levels.
EXTRACTIONS: dict[str, dict] = {
    "lite0": {"backbone": "efficientnet_lite0", "input_size": None, "flip": True, "levels": 3},
    "lite2": {"backbone": "efficientnet_lite2", "input_size": None, "flip": False, "levels": 1},
    "lite1": {"backbone": "efficientnet_lite1", "input_size": None, "flip": False, "levels": 1},
    "lite0_384": {"backbone": "efficientnet_lite0", "input_size": 384, "flip": False, "levels": 1},
}


@dataclass(frozen=True)
class Variant:
    name: str
    views: tuple[tuple[str, str], ...]  # (extraction, view) passes it needs
    build: Callable[[dict], np.ndarray]  # features[extraction][view][level] -> (N, D)


def _variants() -> list[Variant]:
    from retrieval.engine.feature_variants import concat_normalised, flip_mean

    o0, f0 = ("lite0", "orig"), ("lite0", "flip")
    return [
        Variant("baseline (lite0, served)", (o0,), lambda f: f["lite0"]["orig"][-1]),
        Variant(
            "hflip_tta",
            (o0, f0),
            lambda f: flip_mean(f["lite0"]["orig"][-1], f["lite0"]["flip"][-1]),
        ),
        Variant("gem_2levels", (o0,), lambda f: concat_normalised(*f["lite0"]["orig"][-2:])),
        Variant("gem_3levels", (o0,), lambda f: concat_normalised(*f["lite0"]["orig"][-3:])),
        Variant(
            "hflip_tta + gem_3levels",
            (o0, f0),
            lambda f: concat_normalised(
                *[
                    flip_mean(a, b)
                    for a, b in zip(f["lite0"]["orig"], f["lite0"]["flip"], strict=True)
                ]
            ),
        ),
        Variant("lite1", (("lite1", "orig"),), lambda f: f["lite1"]["orig"][-1]),
        Variant("lite2", (("lite2", "orig"),), lambda f: f["lite2"]["orig"][-1]),
        Variant(
            "lite0 + lite2",
            (o0, ("lite2", "orig")),
            lambda f: concat_normalised(f["lite0"]["orig"][-1], f["lite2"]["orig"][-1]),
        ),
        Variant("lite0 @384", (("lite0_384", "orig"),), lambda f: f["lite0_384"]["orig"][-1]),
    ]


# --- feature store ----------------------------------------------------------------------------


class Store:
    """Raw GeM vectors of one extraction on one dataset: one npz, rewritten atomically."""

    def __init__(self, path: Path, ids: list[str], meta: dict, dims: dict[str, list[int]]):
        self.path, self.ids, self.meta = path, ids, meta
        n = len(ids)
        self.arrays = {
            f"{view}_{lev}": np.zeros((n, d), np.float32)
            for view, ds in dims.items()
            for lev, d in enumerate(ds)
        }
        self.done = np.zeros(n, bool)
        self.cpu_s = 0.0
        self.n_fwd = 0
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    same = json.loads(str(z["meta"])) == meta and z["ids"].tolist() == ids
                    if same and all(z[k].shape == a.shape for k, a in self.arrays.items()):
                        self.arrays = {k: z[k] for k in self.arrays}
                        self.done = z["done"].copy()
                        self.cpu_s, self.n_fwd = float(z["cpu_s"]), int(z["n_fwd"])
            except (OSError, KeyError, ValueError):
                pass  # unreadable: recomputed

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(self.meta)),
                ids=np.array(self.ids),
                done=self.done,
                cpu_s=np.float64(self.cpu_s),
                n_fwd=np.int64(self.n_fwd),
                **self.arrays,
            )
        os.replace(tmp, self.path)

    def views(self) -> dict[str, list[np.ndarray]]:
        out: dict[str, list[np.ndarray]] = {}
        for key in sorted(self.arrays, key=lambda k: (k.split("_")[0], int(k.split("_")[1]))):
            view = key.split("_")[0]
            out.setdefault(view, []).append(self.arrays[key])
        return out


def _dims(extraction: dict) -> dict[str, list[int]]:
    """Width of each level (shallow to deep) of each view, from a tiny random-input pass."""
    import torch

    from retrieval.engine.feature_variants import level_maps

    net = _backbone(extraction["backbone"])
    with torch.inference_mode():
        maps = level_maps(net.features, torch.zeros(1, 3, 64, 64), levels=extraction["levels"])
    widths = [int(m.shape[1]) for m in maps]
    return {v: widths for v in (("orig", "flip") if extraction["flip"] else ("orig",))}


_BACKBONES: dict = {}


def _backbone(name: str):
    from retrieval.engine.backbones import build_backbone

    if name not in _BACKBONES:
        _BACKBONES[name] = build_backbone(name, weights="imagenet", device="cpu")
    return _BACKBONES[name]


def _meta(extraction: dict) -> dict:
    from retrieval.engine.preprocess import PREPROCESS_VERSION

    return {
        **extraction,
        "weights_sha256": _backbone(extraction["backbone"]).weights_sha256,
        "size": SIZE,
        "preprocess_version": PREPROCESS_VERSION,
    }


# --- datasets -------------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    ids: list[str]
    prepare: Callable[[list[int]], list]  # item indices -> PreparedSlices
    min_lung_fraction: float


def covid_ct(data: Path, limit: int | None):
    from retrieval.engine.manifest import check_images, read_manifest
    from retrieval.engine.preprocess import load_image_file, prepare_slice

    manifest = data / "covid-ct" / "manifest.csv"
    items = read_manifest(manifest, limit=limit, seed=0, strict=False)
    with warnings.catch_warnings():  # colour-to-grey notes: listed by evaluate_retrieval
        warnings.simplefilter("ignore", UserWarning)
        items = check_images(items, strict=False)

    def prepare(idx: list[int]) -> list:
        out = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for i in idx:
                pixels, windowed = load_image_file(items.paths[i])
                out.append(prepare_slice(pixels, is_windowed=windowed, size=SIZE))
        return out

    ids = [str(Path(p).relative_to(manifest.parent)) for p in items.paths]
    name = "covid-ct" if limit is None else f"covid-ct-limit{limit}"  # a subset: its own cache
    return Dataset(name, ids, prepare, CT_MIN_LUNG_FRACTION), items


def covid_ct_md(data: Path, work: Path):
    from benchmarks import covid_ct_md_eval as md
    from retrieval.engine.preprocess import prepare_slice

    folder = data / "covid-ct-md"
    rows = md.slices_read(folder, list(md.INFECTION_PATIENTS), None)
    md.uids_repair(rows, work)
    hu: dict = {}

    def prepare(idx: list[int]) -> list:
        missing = [rows[i] for i in idx if rows[i].path not in hu]
        if missing:  # a patient's files are read together, as one uploaded series
            todo = [r for r in rows if r.patient in {m.patient for m in missing}]
            hu.update(md.series_hu(todo))
        return [prepare_slice(hu.pop(rows[i].path), is_windowed=False, size=SIZE) for i in idx]

    ids = [str(r.path.relative_to(folder)) for r in rows]
    return Dataset("covid-ct-md", ids, prepare, MD_MIN_LUNG_FRACTION), rows


def extract(dataset: Dataset, names: list[str], cache: Path) -> tuple[dict, np.ndarray, dict]:
    """Raw vectors of every extraction in `names` (cached), lung fractions, CPU figures."""
    from retrieval.engine.feature_variants import extract_views

    n = len(dataset.ids)
    stores = {
        e: Store(
            cache / dataset.name / f"{e}.npz",
            dataset.ids,
            _meta(EXTRACTIONS[e]),
            _dims(EXTRACTIONS[e]),
        )
        for e in names
    }
    sl = Store(cache / dataset.name / "slices.npz", dataset.ids, {"size": SIZE}, {"lf": [1]})
    lf = sl.arrays["lf_0"][:, 0]
    lf[~sl.done] = np.nan
    for s in stores.values():  # too little lung: never embedded, done for every extraction
        s.done |= sl.done & (lf < dataset.min_lung_fraction)
    todo = [i for i in range(n) if not all(s.done[i] for s in stores.values())]
    started = time.perf_counter()
    for c in range(0, len(todo), CHUNK):
        idx = todo[c : c + CHUNK]
        t = time.process_time()
        prepared = dataset.prepare(idx)
        sl.cpu_s += time.process_time() - t
        sl.n_fwd += len(idx)
        for i, p in zip(idx, prepared, strict=True):
            sl.arrays["lf_0"][i, 0] = lf[i] = p.lung_fraction
            sl.done[i] = True
        for e, s in stores.items():
            pick = [
                j for j, i in enumerate(idx) if not s.done[i] and lf[i] >= dataset.min_lung_fraction
            ]
            if pick:
                ex = EXTRACTIONS[e]
                t = time.process_time()
                views = extract_views(
                    _backbone(ex["backbone"]),
                    [prepared[j].image for j in pick],
                    levels=ex["levels"],
                    flip=ex["flip"],
                    input_size=ex["input_size"],
                    batch_size=8,
                )
                s.cpu_s += time.process_time() - t
                s.n_fwd += len(pick)
                rows = [idx[j] for j in pick]
                for view, levels in views.items():
                    for lev, arr in enumerate(levels):
                        s.arrays[f"{view}_{lev}"][rows] = arr
            s.done[idx] = True
            s.save()
        sl.save()
        print(
            f"  {dataset.name}: {min(c + CHUNK, len(todo))}/{len(todo)} slices "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    features = {e: s.views() for e, s in stores.items()}
    cost = {
        "prepare": {"cpu_s": sl.cpu_s, "images": sl.n_fwd},
        **{
            e: {"cpu_s": s.cpu_s, "images": s.n_fwd, "views": len(s.views())}
            for e, s in stores.items()
        },
    }
    return features, lf, cost


# --- evaluation -----------------------------------------------------------------------------


def ct_evaluate(vectors: np.ndarray, items, splits, class_names) -> dict:
    """Pooled 5-fold deep_only figures of `vectors`, as evaluate_retrieval computes them."""
    from retrieval.engine import metrics
    from retrieval.engine.evaluation import SEARCH_K, _search

    labels = np.asarray(items.labels)
    query, retrieved, order = [], [], []
    for train_idx, test_idx in splits:
        tr = metrics.l2_normalise(vectors[train_idx])
        te = metrics.l2_normalise(vectors[test_idx])
        ids, _ = _search(tr, te, backend="exact", k=SEARCH_K, seed=0)
        query.extend(labels[test_idx].tolist())
        retrieved.append(labels[train_idx][ids])
        order.extend(test_idx.tolist())
    retrieved = np.vstack(retrieved)
    m = metrics.retrieval_metrics(query, retrieved, labels=class_names)
    return {
        "macro_f1": m["macro_f1"],
        "map_at_10": m["map_at_10"],
        "order": np.asarray(order),
        "predicted": retrieved[:, 0].astype(str),
    }


def _macro_f1_weighted(y: np.ndarray, p: np.ndarray, w: np.ndarray, classes) -> np.ndarray:
    """Macro F1 of one prediction under many weightings of the queries: w (B, Q) -> (B,)."""
    f1s = []
    for c in classes:
        tp = w @ ((y == c) & (p == c))
        fp = w @ ((y != c) & (p == c))
        fn = w @ ((y == c) & (p != c))
        f1s.append(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-12), 0))
    return np.mean(f1s, axis=0)


def bootstrap_delta(results: dict, base: str, items, class_names, seed: int = 0) -> dict:
    """95 % interval of each variant's macro F1 minus the baseline's: patients resampled with
    replacement (the same draws for every variant: a paired bootstrap)."""
    patients = np.asarray(items.patients)[results[base]["order"]]
    y = np.asarray(items.labels)[results[base]["order"]].astype(str)
    uniq, inv = np.unique(patients, return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = np.stack([np.bincount(rng.integers(0, len(uniq), len(uniq)), minlength=len(uniq))
                       for _ in range(BOOTSTRAP)])  # fmt: skip
    w = counts[:, inv].astype(np.float64)
    f_base = _macro_f1_weighted(y, results[base]["predicted"], w, class_names)
    out = {}
    for name, r in results.items():
        assert np.array_equal(r["order"], results[base]["order"])
        d = _macro_f1_weighted(y, r["predicted"], w, class_names) - f_base
        out[name] = (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
    return out


def md_evaluate(vectors: np.ndarray, rows, lf: np.ndarray) -> dict:
    """Infected-vs-clear leave-one-patient-out figures via covid_ct_md_eval's own functions."""
    from benchmarks import covid_ct_md_eval as md
    from benchmarks.covid_ct_md_report import chance, summarise

    for r, v, f in zip(rows, vectors, lf, strict=True):
        r.deep = np.asarray(v, np.float32)
        r.lung_fraction = float(f)
        r.rad = np.zeros(1) if f >= MD_MIN_LUNG_FRACTION else None  # `usable` marker
    folds = [
        md.fold_run(held, rows, ["deep_only"], None, "")
        for held in sorted({r.patient for r in rows})
    ]
    inf = summarise(folds, rows, ["deep_only"])["deep_only"]["infection"]
    return {
        "f1": inf["f1"],
        "map_at_10": inf["map@10"],
        "precision": inf["precision"],
        "recall": inf["recall"],
        "queries": inf["query_slices"],
        "infected_queries": inf["infected_queries"],
        "chance_f1": chance(folds)["infection"]["f1"],
    }


def time_passes(dataset: Dataset, names: list[str], n: int) -> dict[str, float]:
    """CPU seconds per image of one backbone pass (one view) of each extraction, on the same
    first `n` slices of `dataset`, after a warm-up pass: the cost column, measured the same way
    for every variant whatever the cache held."""
    from retrieval.engine.feature_variants import extract_views

    images = [p.image for p in dataset.prepare(list(range(min(n, len(dataset.ids)))))]
    out = {}
    for e in names:
        ex = EXTRACTIONS[e]
        kwargs = {"levels": ex["levels"], "input_size": ex["input_size"], "batch_size": 8}
        extract_views(_backbone(ex["backbone"]), images[:1], **kwargs)
        t = time.process_time()
        extract_views(_backbone(ex["backbone"]), images, **kwargs)
        out[e] = (time.process_time() - t) / len(images)
    return out


def _per_image(key: str, *costs: dict) -> float:
    """CPU seconds per image (and view) of one pass, over both datasets' computed images."""
    cpu = sum(c[key]["cpu_s"] for c in costs)
    images = sum(c[key]["images"] * c[key].get("views", 1) for c in costs)
    return cpu / images if images else float("nan")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    default_data = Path(os.environ.get("ILDREVIEW_REAL_DATA", ROOT.parent / "shared" / "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data)
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "feature-variants")
    parser.add_argument("--extractions", default=",".join(EXTRACTIONS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--limit", type=int, help="about N COVID-CT rows (quick runs)")
    parser.add_argument("--timing-images", type=int, default=16, help="slices the cost is timed on")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    names = [e for e in EXTRACTIONS if e in args.extractions.split(",")]
    if "lite0" not in names:
        parser.error("the baseline needs the lite0 extraction")
    for sub in ("covid-ct/manifest.csv", "covid-ct-md/slices.csv"):
        if not (args.data / sub).exists():
            print(f"no {sub} under {args.data} (set ILDREVIEW_REAL_DATA or --data)")
            return 2
    started = time.perf_counter()
    cpu0 = time.process_time()
    loads = [_load()]
    cache = args.cache
    with tempfile.TemporaryDirectory(prefix="frozen-features-") as work:
        md_set, md_rows = covid_ct_md(args.data, Path(work))
        md_feat, md_lf, md_cost = extract(md_set, names, cache)
        loads.append(_load())
        ct_set, ct_items = covid_ct(args.data, args.limit)
        ct_feat, _, ct_cost = extract(ct_set, names, cache)
        loads.append(_load())

        from retrieval.engine.evaluation import _fold_splits

        class_names = sorted(set(ct_items.labels))
        splits = _fold_splits(ct_items, folds=5, seed=0)
        per_image = time_passes(ct_set, names, args.timing_images)  # per view
        rows, ct_results = [], {}
        for v in _variants():
            if any(e not in names for e, _ in v.views):
                continue
            ct_vec = v.build(ct_feat)
            ct_results[v.name] = ct_evaluate(ct_vec, ct_items, splits, class_names)
            md_res = md_evaluate(v.build(md_feat), md_rows, md_lf)
            rows.append(
                {
                    "variant": v.name,
                    "dim": int(ct_vec.shape[1]),
                    "cpu_s_per_image": float(sum(per_image[e] for e, _ in v.views)),
                    "covid_ct": {k: ct_results[v.name][k] for k in ("macro_f1", "map_at_10")},
                    "covid_ct_md": md_res,
                }
            )
        base = rows[0]["variant"]
        ci = bootstrap_delta(ct_results, base, ct_items, class_names)
    for r in rows:
        r["covid_ct"]["delta_f1"] = r["covid_ct"]["macro_f1"] - rows[0]["covid_ct"]["macro_f1"]
        r["covid_ct"]["delta_f1_ci95"] = ci[r["variant"]]
        r["covid_ct_md"]["delta_f1"] = r["covid_ct_md"]["f1"] - rows[0]["covid_ct_md"]["f1"]

    head = (
        f"{'variant':<26}{'dim':>6}{'CPU s/img':>10}{'CT F1':>8}{'dF1 [95% CI]':>24}"
        f"{'CT mAP@10':>10}{'MD F1':>8}{'dF1':>8}{'MD mAP@10':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ct, md = r["covid_ct"], r["covid_ct_md"]
        lo, hi = ct["delta_f1_ci95"]
        delta = f"{ct['delta_f1']:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        lines.append(
            f"{r['variant']:<26}{r['dim']:>6}{r['cpu_s_per_image']:>10.3f}{ct['macro_f1']:>8.3f}"
            f"{delta:>24}{ct['map_at_10']:>10.3f}"
            f"{md['f1']:>8.3f}{md['delta_f1']:>+8.3f}{md['map_at_10']:>10.3f}"
        )
    md0 = rows[0]["covid_ct_md"]
    lines.append(
        f"COVID-CT: {len(ct_items)} slices, {len(set(ct_items.patients))} patients, 5 folds. "
        f"COVID-CT-MD: {md0['queries']} queries ({md0['infected_queries']} infected), chance "
        f"F1 {md0['chance_f1']:.3f}. Preparing a slice: "
        f"{_per_image('prepare', md_cost, ct_cost):.3f} CPU s"
    )
    wall = time.perf_counter() - started
    lines.append(
        f"wall {wall:.0f} s, CPU {time.process_time() - cpu0:.0f} s, torch threads "
        f"{args.threads}, load {' -> '.join(loads)}"
    )
    report = {
        "command": "python benchmarks/frozen_features_bench.py " + " ".join(argv or sys.argv[1:]),
        "rows": rows,
        "cost": {"covid-ct": ct_cost, "covid-ct-md": md_cost, "cpu_s_per_pass": per_image},
        "extractions": {e: EXTRACTIONS[e] for e in names},
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "torch": torch.__version__,
            "load": loads,
        },
        "wall_s": round(wall, 1),
    }
    cache.mkdir(parents=True, exist_ok=True)
    report_name = "report.json" if args.limit is None else f"report-limit{args.limit}.json"
    (cache / report_name).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
