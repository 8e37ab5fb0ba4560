"""benchmarks/covid_ct_md_eval.py on a small subset of the real COVID-CT-MD series: the DICOM
path reads them (repairing the series with invalid UIDs), every row is reported, every figure is
a fraction, and the features land in the cache for the next run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.conftest import REAL_DATA, real_data_or_skip

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "covid_ct_md_eval.py"


def _script():
    spec = importlib.util.spec_from_file_location("covid_ct_md_eval", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


def _fractions(row: dict) -> list[float]:
    values = [row[k] for k in ("case_top1", "case_map", "case_vote", "slice_top1")]
    inf = row.get("infection", {})
    values += [inf[k] for k in ("precision", "recall", "f1", "accuracy", "map@10") if k in inf]
    return values


@pytest.mark.slow
def test_covid_ct_md_evaluation_on_four_patients_reports_every_row_with_fractions(tmp_path, capsys):
    data = real_data_or_skip(REAL_DATA / "covid-ct-md")
    script = _script()
    code = script.main(
        [
            "--data",
            str(data),
            "--patients",
            "P001,P002,cap001,normal001",
            "--slices-per-patient",
            "2",
            "--epochs",
            "1",
            "--rows",
            "radiomics_only,deep_only,headline",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["rows"]) == {"radiomics_only", "deep_only", "headline", "chance"}
    # Chance level: P001 and P002 each have one same-class patient among three, the others none.
    assert report["rows"]["chance"]["case_top1"] == pytest.approx((1 / 3 + 1 / 3) / 4)
    report["rows"]["chance"]["case_vote"] = 0.0  # no vote without a ranking
    for name, row in report["rows"].items():
        assert name in printed
        assert "skipped" not in row, row
        assert row["folds"] == 4 and row["query_slices"] == 8
        assert all(0.0 <= v <= 1.0 for v in _fractions(row)), (name, row)
        # P001, P002 and cap001 carry infection labels: each queries the other two.
        assert row["infection"]["query_slices"] == 6
    # P002's series has an empty SOPInstanceUID and UUID Study/Series UIDs: read repaired.
    assert report["uids_repaired"] == ["P002"]
    assert report["slices"]["P002"] == {"kept": 2, "usable": 2}
    # The headline is the app's recipe, trained without the held-out patient.
    for fold in report["folds"]:
        assert fold["training"]["headline"]["train_slices"] == 6
        ranked = [p for p, _, _ in fold["ranking"]["deep_only"]]
        assert fold["held_out"] not in ranked and len(ranked) == 3
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 8
