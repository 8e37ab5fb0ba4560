"""`manage.py evaluate_retrieval` on a generated manifest of PNGs."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from tests.retrieval_tests.eval_data import write_manifest


@pytest.mark.slow
def test_evaluate_retrieval_writes_report_json_and_html(tmp_path):
    manifest = write_manifest(
        tmp_path / "data", classes=("normal", "reticular"), patients_per_class=4, size=64
    )
    out = tmp_path / "report"
    stdout = StringIO()
    call_command(
        "evaluate_retrieval",
        str(manifest),
        "--folds", "1",
        "--out", str(out),
        "--weights", "random",
        "--size", "64",
        "--epochs", "1",
        "--embed-dim", "16",
        "--reduce-deep", "8",
        "--no-extras",
        "--fused",
        "--cache-dir", str(tmp_path / "cache"),
        stdout=stdout,
        verbosity=0,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    assert set(report["ablation"]) == {
        "radiomics_only",
        "deep_only",
        "deep_contrastive",
        "fused_contrastive",
        "adaptive",
    }
    assert report["headline"] == "adaptive"
    assert report["folds"][0]["chosen"]["candidate"]  # the headline's choice is recorded
    assert report["meta"]["fold_source"] == "manifest split column"
    # the split column's test patients are exactly the held-out ones
    assert report["folds"][0]["test_patients"] == ["normal-p3", "reticular-p3"]
    assert "<table>" in (out / "report.html").read_text()
    assert "fused_contrastive" in stdout.getvalue()


def test_evaluate_retrieval_reports_a_missing_manifest_clearly(tmp_path):
    with pytest.raises(CommandError, match="manifest not found"):
        call_command("evaluate_retrieval", str(tmp_path / "none.csv"), "--out", str(tmp_path))


def test_evaluate_retrieval_folds_1_needs_a_split_column(tmp_path):
    manifest = write_manifest(tmp_path, classes=("a", "b"), patients_per_class=2, size=32)
    text = manifest.read_text().splitlines()
    manifest.write_text("\n".join(",".join(line.split(",")[:3]) for line in text) + "\n")
    with pytest.raises(CommandError, match="split"):
        call_command(
            "evaluate_retrieval",
            str(manifest),
            "--folds", "1",
            "--out", str(tmp_path / "o"),
            "--weights", "random",
            "--size", "32",
            "--cache-dir", str(tmp_path / "cache"),
            verbosity=0,
        )  # fmt: skip
    assert not (tmp_path / "o" / "report.json").exists()
