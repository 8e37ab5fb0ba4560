"""End-to-end evaluation on generated images: report keys, sane values, patient-disjoint folds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.engine.evaluation import (
    BASE_VARIANTS,
    EvalConfig,
    ManifestError,
    evaluate,
    read_manifest,
)
from retrieval.engine.report import write_report
from tests.retrieval_tests.eval_data import write_manifest

REQUIRED = (
    "per_class",
    "macro_f1",
    "accuracy",
    "silhouette",
    "intra_class_distance",
    "inter_class_distance",
    "map_at_10",
    "precision_at_10",
    "recall_at_k",
)


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evalset")
    manifest = write_manifest(folder, patients_per_class=4, slices_per_patient=2, size=64)
    items = read_manifest(manifest)
    config = EvalConfig(
        weights="random",
        size=64,
        epochs=1,
        embed_dim=16,
        reduce_deep=8,
        cache_dir=str(folder / "cache"),
    )
    report, projection = evaluate(items=items, folds=3, config=config)
    return items, report, projection, folder


@pytest.mark.slow
def test_report_has_every_required_key_for_headline_and_each_ablation_row(tiny_report):
    _, report, _, _ = tiny_report
    for key in REQUIRED:
        assert key in report, key
    assert set(BASE_VARIANTS) <= set(report["ablation"])
    for name, row in report["ablation"].items():
        for key in REQUIRED:
            assert key in row, (name, key)
        assert set(row["recall_at_k"]) == {"1", "2", "4", "8"}
        assert set(row["per_class"]) == {"normal", "ground_glass", "reticular", "nodular"}


@pytest.mark.slow
def test_report_values_are_in_range_and_recall_grows_with_k(tiny_report):
    _, report, _, _ = tiny_report
    for row in report["ablation"].values():
        for key in ("macro_f1", "accuracy", "map_at_10", "precision_at_10"):
            assert 0.0 <= row[key] <= 1.0
        assert -1.0 <= row["silhouette"] <= 1.0
        assert 0.0 <= row["intra_class_distance"] <= 2.0
        r = row["recall_at_k"]
        assert r["1"] <= r["2"] <= r["4"] <= r["8"]
        # every held-out slice was queried exactly once over the folds
        assert sum(v["support"] for v in row["per_class"].values()) == 32
    # The class textures are obvious, even to unnormalised radiomics: far above chance (0.25).
    assert report["ablation"]["radiomics_only"]["accuracy"] > 0.5


@pytest.mark.slow
def test_folds_are_patient_disjoint_and_cover_every_patient(tiny_report):
    items, report, _, _ = tiny_report
    held_out = [set(f["test_patients"]) for f in report["folds"]]
    assert len(held_out) == 3
    for i in range(3):
        for j in range(i + 1, 3):
            assert not held_out[i] & held_out[j]
    assert set().union(*held_out) == set(items.patients)


@pytest.mark.slow
def test_write_report_produces_json_and_self_contained_html(tiny_report):
    _, report, projection, folder = tiny_report
    json_path, html_path = write_report(report, folder / "out", projection=projection)
    loaded = json.loads(json_path.read_text())
    assert loaded["macro_f1"] == pytest.approx(report["macro_f1"])
    page = html_path.read_text()
    assert page.count("data:image/png;base64,") == 2  # confusion matrix + projection
    for name in BASE_VARIANTS:
        assert name in page
    assert (folder / "out" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_read_manifest_names_the_missing_file(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,patient_id\nnope.png,a,p1\n")
    with pytest.raises(ManifestError, match="nope.png does not exist"):
        read_manifest(manifest)


def test_read_manifest_rejects_missing_columns(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nx.png,a\n")
    with pytest.raises(ManifestError, match="patient_id"):
        read_manifest(manifest)


def test_limit_keeps_whole_patients_and_both_classes(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=5, size=32)
    items = read_manifest(manifest, limit=8)
    assert 8 <= len(items) <= 9
    counts = {p: items.patients.count(p) for p in set(items.patients)}
    assert set(counts.values()) == {2}  # no patient cut in half
    assert set(items.labels) == {"a", "b"}
    assert np.unique(items.labels).size == 2
