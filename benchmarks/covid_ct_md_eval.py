"""Real Hounsfield units: retrieval on COVID-CT-MD read through the pipeline's DICOM path.

    python benchmarks/covid_ct_md_eval.py [--data DIR] [--out DIR] [--patients P001,cap001,...]
        [--slices-per-patient N] [--epochs N] [--rows a,b] [--cache DIR] [--threads N]

Data: `covid-ct-md/` under ILDREVIEW_REAL_DATA (default ../shared/datasets from the project root):
6 low-dose chest CT series (COVID-19 P001 P002, CAP cap001 cap002, Normal normal001 normal002),
JPEG-Lossless DICOM, every third slice kept, `slices.csv` with slice-level infection labels.

Three series (P002, cap002, normal002) carry an empty SOPInstanceUID and UUID strings as Study
and Series UID, which the upload path refuses; they are read from copies whose UIDs only are
repaired in the standard way (`cases.real_data.series_uids_repair`, PS3.5 B.2), in a temporary
folder. Every file then goes the way an upload goes: `cases.dicom.reading.ct_instance_read`
(the upload's checks and JPEG-Lossless decoding, stored values -> HU), each patient's files
grouped and ordered as one series (`ct_studies_group`), then the engine's `prepare_slice` (lung
window -500/1500, 512 px, k-means lung mask) and features (`FeatureExtractor`: frozen
efficientnet_lite0 ImageNet + GeM, pyradiomics). A slice is used, as in the app, when its lung
fraction is at least `MIN_LUNG_FRACTION` and pyradiomics accepts its mask. Features are cached
(FeatureCache, keyed by the DICOM file's SHA-256), so a second run only trains.

Leave one patient out. For each held-out patient the other patients are the reference library:
a) case level (all 6 patients, 3 classes): every usable slice of the held-out patient queries the
   library's slices; `retrieval.engine.query.rank_cases` (exact index, the app's defaults:
   k_slices 20, "sum" aggregation) ranks the library's patients. Figures: top-1 case label,
   case mAP (relevant = the other patient(s) of the same class), the vote's suggested label, and
   slice-level top-1 accuracy (class of the nearest library slice).
b) slice level, infected vs clear (P001, P002, cap001, cap002; `infection` 0/1): each labelled
   slice of the held-out patient queries the labelled slices of the other three; the top-1
   slice's infection label is the prediction (precision / recall / F1 of "infected") and mAP@10
   counts retrieved slices with the query's infection label.

Rows: `radiomics_only` (standardised on the library, L2), `deep_only` (frozen GeM vector, L2),
and two models of the app's recipe (`retrieval.engine.recipe.train_retrieval_model`, the
function that trains the bootstrap model, with the bootstrap's settings: up to 16 usable slices
per case, seed 0, 20 epochs, reduced ILD-FFN on CPU), trained per fold on the library's
diagnosis labels only (the held-out patient is never seen; infection labels are never used):
`headline` = the recipe's default embedding (the adaptive one chosen on an inner patient split,
`retrieval.engine.selection`), `ildffn_head` = its `embedding="head"` (the paper's ILD-FFN
trained with the contrastive loss, the bootstrap's model before the adaptive embedding).

Writes OUT/report.json and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.covid_ct_md_report import MAP_K, chance, summarise, table  # noqa: E402

MIN_LUNG_FRACTION = 0.05  # the app's default ILDREVIEW_MIN_LUNG_FRACTION
MAX_SLICES_PER_CASE = 16  # the bootstrap's training cap (retrieval/pipeline/bootstrap.py)
SIZE = 512
# Physical field of view (mm) every slice is resampled to (--fov-mm); None: whole image resized.
FOV_MM: float | None = None
LUNG_CROP = False  # --lung-crop: prepared slices show the lung box (prepare_slice(lung_crop))


def _fov_tag() -> str:
    return (f"fov{FOV_MM:g}:" if FOV_MM else "") + ("lungcrop:" if LUNG_CROP else "")


K_SLICES = 20  # rank_cases default, as the app
INFECTION_PATIENTS = ("P001", "P002", "cap001", "cap002")
ROWS = ("radiomics_only", "deep_only", "headline", "ildffn_head")
# Trained rows: the recipe's `embedding` for each.
TRAINED = {"headline": "adaptive", "ildffn_head": "head"}


@dataclass
class SliceRow:
    """One kept DICOM file of slices.csv and, once extracted, its features."""

    path: Path  # the dataset's file (its SHA-256 keys the feature cache)
    label: str
    patient: str
    slice_index: int
    infection: int | None
    deep: np.ndarray | None = None
    rad: np.ndarray | None = None  # None: not usable (too little lung or no radiomics)
    lung_fraction: float = 0.0
    source: Path | None = None  # what is read: the file, or its UID-repaired copy

    @property
    def read_path(self) -> Path:
        return self.source or self.path

    @property
    def usable(self) -> bool:
        return self.rad is not None


@dataclass
class Fold:
    """What one held-out patient's queries found, per row."""

    patient: str
    label: str
    cases: dict = field(default_factory=dict)  # row -> ranked [(patient, label, score)]
    suggested: dict = field(default_factory=dict)  # row -> suggested label
    slice_top1: dict = field(default_factory=dict)  # row -> list of top-1 labels per query
    infection: dict = field(default_factory=dict)  # row -> (query labels, retrieved (Q, k))
    training: dict = field(default_factory=dict)
    # What a random ranking would see: library patients' labels, each query slice's share of
    # same-class library slices, and (infection query label, reference infection labels).
    library_labels: list = field(default_factory=list)
    same_share: list = field(default_factory=list)
    infection_refs: list = field(default_factory=list)


def slices_read(data: Path, patients: list[str] | None, per_patient: int | None) -> list[SliceRow]:
    """Rows of slices.csv (optionally some patients, `per_patient` slices each, evenly spread
    over the middle of the series where the lungs are)."""
    rows: dict[str, list[SliceRow]] = defaultdict(list)
    with open(data / "slices.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if patients and r["patient_id"] not in patients:
                continue
            rows[r["patient_id"]].append(
                SliceRow(
                    path=data / r["path"],
                    label=r["label"],
                    patient=r["patient_id"],
                    slice_index=int(r["slice_index"]),
                    infection=int(r["infection"]) if r["infection"].strip() else None,
                )
            )
    out = []
    for patient in sorted(rows):
        items = sorted(rows[patient], key=lambda s: s.slice_index)
        if per_patient and len(items) > per_patient:
            pick = np.linspace(0.3 * len(items), 0.7 * len(items), per_patient).astype(int)
            items = [items[i] for i in sorted(set(pick.tolist()))]
        out.extend(items)
    return out


def uids_repair(rows: list[SliceRow], work_dir: Path) -> list[str]:
    """Point the rows of series with invalid UIDs at repaired copies in `work_dir`
    (`cases.real_data.series_uids_repair`); returns the repaired patients."""
    from cases.real_data import series_needs_repair, series_uids_repair

    repaired = []
    for folder in sorted({r.path.parent for r in rows}):
        if series_needs_repair(folder):
            series_uids_repair(folder=folder, out=work_dir / folder.name)
            repaired.append(folder.name)
            for r in rows:
                if r.path.parent == folder:
                    r.source = work_dir / folder.name / r.path.name
    return repaired


def series_hu(rows: list[SliceRow]) -> dict[Path, object]:
    """The read instance (HU and pixel spacing) of each file, read and checked as one uploaded
    series per patient."""
    from cases.dicom.reading import ct_instance_read, ct_studies_group

    out = {}
    by_patient = defaultdict(list)
    for r in rows:
        by_patient[r.patient].append(r)
    for patient, members in by_patient.items():
        instances = [ct_instance_read(path=r.read_path, name=r.path.name) for r in members]
        studies = ct_studies_group(instances=instances)
        if len(studies) != 1 or len(studies[0].series) != 1:
            raise SystemExit(f"{patient}: expected one series, got {len(studies)} studies")
        for r, inst in zip(members, instances, strict=True):
            out[r.path] = inst
    return out


def _prepare(inst, size: int):
    """`prepare_slice` of a read DICOM instance, normalised to `FOV_MM` when it is set."""
    from retrieval.engine.preprocess import prepare_slice

    return prepare_slice(
        inst.hu,
        is_windowed=False,
        size=size,
        pixel_spacing=inst.pixel_spacing,
        fov_mm=FOV_MM,
        lung_crop=LUNG_CROP,
    )


def features_extract(rows: list[SliceRow], extractor, cache, progress: bool) -> None:
    """Deep and radiomics features of every row (through the cache), as the app computes them."""
    from retrieval.engine.features import CachedFeatures
    from retrieval.engine.radiomics import RadiomicsError

    keys = {
        r.path: extractor.cache_key(
            source=f"dicom-hu:{_fov_tag()}" + hashlib.sha256(r.path.read_bytes()).hexdigest(),
            size=SIZE,
        )
        for r in rows
    }
    todo = []
    for r in rows:
        hit = cache.get(keys[r.path]) if cache else None
        if hit is None:
            todo.append(r)
        else:
            _features_set(r, hit)
    if todo:
        hu = series_hu(todo)
        for n, r in enumerate(todo, start=1):
            prepared = _prepare(hu.pop(r.path), SIZE)
            rad = np.full(len(extractor.radiomics.feature_names), np.nan)
            if prepared.lung_fraction >= MIN_LUNG_FRACTION:
                try:
                    rad = np.asarray(extractor.radiomics.extract(prepared.image, prepared.mask))
                except RadiomicsError:
                    pass  # the app skips such a slice too
            item = CachedFeatures(
                deep=extractor.deep([prepared.image])[0],
                rad=rad,
                lung_fraction=prepared.lung_fraction,
                mask_fallback=prepared.mask_fallback,
            )
            if cache:
                cache.put(keys[r.path], item)
            _features_set(r, item)
            if progress and (n % 25 == 0 or n == len(todo)):
                print(f"  features {n}/{len(todo)}", flush=True)


def _features_set(row: SliceRow, item) -> None:
    row.deep = np.asarray(item.deep, np.float32)
    row.lung_fraction = float(item.lung_fraction)
    usable = row.lung_fraction >= MIN_LUNG_FRACTION and np.isfinite(item.rad).all()
    row.rad = np.asarray(item.rad, np.float64) if usable else None


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def trained_model(library: list[SliceRow], args, frozen_sha: str, embedding: str):
    """The recipe's model (`embedding` "adaptive": the headline, "head": the ILD-FFN head)
    trained on the library; (None, {"skipped": reason}) when it cannot train."""
    from cases.dicom.reading import ct_instance_read
    from retrieval.engine.recipe import RecipeConfig, train_retrieval_model
    from retrieval.engine.training import TrainConfig

    by_patient = defaultdict(list)
    for r in library:
        by_patient[r.patient].append(r)
    picks = []
    for patient in sorted(by_patient):
        usable = by_patient[patient]
        if len(usable) > MAX_SLICES_PER_CASE:
            idx = np.linspace(0, len(usable) - 1, MAX_SLICES_PER_CASE).round().astype(int)
            usable = [usable[i] for i in idx]
        picks.extend(usable)
    prepared = [_prepare(ct_instance_read(path=r.read_path), SIZE) for r in picks]
    on_gpu = args.device.startswith("cuda")
    config = RecipeConfig(
        size=SIZE,
        train=TrainConfig(
            epochs=args.epochs,
            mode="head",
            fusion="ildffn",
            seed=0,
            reduce_deep=None if on_gpu else 32,
        ),
        feature_batch=8,
        device=args.device,
        embedding=embedding,
    )
    kwargs = {"class_names": sorted({r.label for r in picks})}
    if "patients" in inspect.signature(train_retrieval_model).parameters:
        kwargs["patients"] = [r.patient for r in picks]
    started = time.perf_counter()
    try:
        model = train_retrieval_model(prepared, [r.label for r in picks], config, **kwargs)
    except ValueError as exc:
        return None, {"skipped": str(exc)}
    info = {
        "train_slices": len(picks),
        "train_s": round(time.perf_counter() - started, 1),
        "config": {k: v for k, v in model.config.items() if isinstance(v, (str, int, float))},
    }
    if "selection" in model.config:  # the adaptive embedding's choice on its inner split
        info["selection"] = model.config["selection"]
    same_backbone = model.backbone_weights_sha256 == frozen_sha and not getattr(
        model.backbone, "fine_tuned_sha256", ""
    )
    info["frozen_backbone"] = bool(same_backbone)
    return model, info


def embed(row_name: str, rows: list[SliceRow], library: list[SliceRow], model) -> np.ndarray:
    """Embeddings of `rows` for one table row (`library` fits the radiomics standardiser;
    `model` is trained_model's (net, info) for a trained row)."""
    from retrieval.engine.radiomics import Standardizer

    if row_name == "deep_only":
        return _l2(np.vstack([r.deep for r in rows]))
    if row_name == "radiomics_only":
        std = Standardizer().fit(np.vstack([r.rad for r in library]))
        return _l2(std.transform(np.vstack([r.rad for r in rows])))
    net, info = model
    rad = np.vstack([r.rad for r in rows])
    if info["frozen_backbone"]:  # the very features the cache holds: no second forward pass
        return net.embed_features(np.vstack([r.deep for r in rows]), rad)
    from cases.dicom.reading import ct_instance_read

    size = int(net.config.get("size", SIZE))
    prepared = [_prepare(ct_instance_read(path=r.read_path), size) for r in rows]
    return net.embed(prepared, radiomics=rad, batch_size=8)


def _index(vectors: np.ndarray):
    from retrieval.engine.index import build_index

    index = build_index("exact", dim=vectors.shape[1], seed=0)
    index.add(np.arange(len(vectors), dtype=np.int64), vectors.astype(np.float32))
    return index


def fold_run(held: str, rows: list[SliceRow], row_names, args, frozen_sha: str) -> Fold:
    """Leave `held` out: the other patients' usable slices are the library."""
    from retrieval.engine.query import rank_cases

    usable = [r for r in rows if r.usable]
    query = [r for r in usable if r.patient == held]
    library = [r for r in usable if r.patient != held]
    fold = Fold(patient=held, label=next(r.label for r in rows if r.patient == held))
    if not query:
        fold.training = {"all": {"skipped": "no usable query slice"}}
        return fold
    patients = sorted({r.patient for r in library})
    meta = {i: (patients.index(r.patient), r.label) for i, r in enumerate(library)}
    models = {}
    for name in row_names:
        if name in TRAINED:
            net, info = trained_model(library, args, frozen_sha, TRAINED[name])
            fold.training[name] = info
            if net is not None:
                models[name] = (net, info)
    fold.library_labels = [next(r.label for r in library if r.patient == p) for p in patients]
    fold.same_share = [float(np.mean([r.label == fold.label for r in library]))] * len(query)
    infected_q = [i for i, r in enumerate(query) if r.infection is not None]
    infected_ref = [
        i
        for i, r in enumerate(library)
        if r.patient in INFECTION_PATIENTS and r.infection is not None
    ]
    if held in INFECTION_PATIENTS and infected_q and infected_ref:
        refs = [library[i].infection for i in infected_ref]
        fold.infection_refs = [(query[i].infection, refs) for i in infected_q]
    for name in row_names:
        if name in TRAINED and name not in models:
            continue
        lib_vec = embed(name, library, library, models.get(name))
        q_vec = embed(name, query, library, models.get(name))
        index = _index(lib_vec)
        result = rank_cases(
            query_vectors=q_vec,
            index=index,
            slice_meta=meta,
            k_slices=K_SLICES,
            k_cases=len(patients),
        )
        fold.cases[name] = [(patients[c.case_id], c.label, round(c.score, 4)) for c in result.cases]
        fold.suggested[name] = result.suggested_label
        ids, _ = index.search(q_vec.astype(np.float32), 1)
        fold.slice_top1[name] = [library[int(i)].label for i in ids[:, 0]]
        if held in INFECTION_PATIENTS and infected_q and infected_ref:
            sub = _index(lib_vec[infected_ref])
            ids, _ = sub.search(q_vec[infected_q].astype(np.float32), min(MAP_K, len(infected_ref)))
            fold.infection[name] = (
                [query[i].infection for i in infected_q],
                [[library[infected_ref[int(j)]].infection for j in row] for row in ids],
            )
    return fold


def _machine(device: str, threads: int) -> dict:
    import torch

    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    default_data = Path(os.environ.get("ILDREVIEW_REAL_DATA", ROOT.parent / "shared" / "datasets"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data / "covid-ct-md")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "covid-ct-md-eval")
    parser.add_argument("--cache", type=Path, default=ROOT / "var" / "feature-cache")
    parser.add_argument("--patients", help="comma-separated subset (default: all six)")
    parser.add_argument("--slices-per-patient", type=int, help="subset of each series (tests)")
    parser.add_argument("--epochs", type=int, default=20, help="the bootstrap's default, 20")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--fov-mm",
        type=float,
        default=None,
        help="resample every slice to this physical field of view before preparation "
        "(retrieval.engine.geometry); default: the whole image resized, as the app did",
    )
    parser.add_argument(
        "--lung-crop",
        action="store_true",
        help="prepare every slice as the square around its segmented lungs",
    )
    args = parser.parse_args(argv)
    global FOV_MM, LUNG_CROP
    FOV_MM, LUNG_CROP = args.fov_mm, args.lung_crop

    import torch

    torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not (args.data / "slices.csv").exists():
        print(f"no COVID-CT-MD data at {args.data} (set ILDREVIEW_REAL_DATA or --data)")
        return 2
    from retrieval.engine.backbones import build_backbone
    from retrieval.engine.features import FeatureCache, FeatureExtractor
    from retrieval.engine.radiomics import RadiomicsExtractor

    started = time.perf_counter()
    patients = [p.strip() for p in args.patients.split(",")] if args.patients else None
    rows = slices_read(args.data, patients, args.slices_per_patient)
    work = tempfile.TemporaryDirectory(prefix="covid-ct-md-")
    repaired = uids_repair(rows, Path(work.name))
    backbone = build_backbone("efficientnet_lite0", weights="imagenet", device=args.device)
    extractor = FeatureExtractor(backbone, RadiomicsExtractor(), batch_size=8)
    cache = FeatureCache(args.cache) if str(args.cache) else None
    features_extract(rows, extractor, cache, progress=True)
    features_s = time.perf_counter() - started
    row_names = [r for r in ROWS if r in args.rows.split(",")]
    folds = []
    for held in sorted({r.patient for r in rows}):
        print(f"  fold: {held} held out", flush=True)
        folds.append(fold_run(held, rows, row_names, args, backbone.weights_sha256))
    work.cleanup()
    summary = summarise(folds, rows, row_names)
    summary["chance"] = chance(folds)
    wall = time.perf_counter() - started
    usable = defaultdict(lambda: [0, 0])
    for r in rows:
        usable[r.patient][0] += 1
        usable[r.patient][1] += int(r.usable)
    report = {
        "dataset": "COVID-CT-MD sample (every third slice), read through cases.dicom.reading",
        "command": "python benchmarks/covid_ct_md_eval.py " + " ".join(argv or sys.argv[1:]),
        "rows": summary,
        "uids_repaired": repaired,
        "slices": {p: {"kept": k, "usable": u} for p, (k, u) in sorted(usable.items())},
        "folds": [
            {
                "held_out": f.patient,
                "label": f.label,
                "ranking": f.cases,
                "suggested": f.suggested,
                "training": f.training,
            }
            for f in folds
        ],
        "settings": {
            "min_lung_fraction": MIN_LUNG_FRACTION,
            "size": SIZE,
            "k_slices": K_SLICES,
            "epochs": args.epochs,
            "index": "exact",
            "train_slices_per_case": MAX_SLICES_PER_CASE,
            "fov_mm": FOV_MM,
            "lung_crop": LUNG_CROP,
        },
        "machine": _machine(args.device, args.threads),
        "wall_s": round(wall, 1),
        "features_s": round(features_s, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(table(summary))
    print(f"wall {wall:.0f} s (features {features_s:.0f} s); report: {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
