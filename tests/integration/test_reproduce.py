"""Provenance in every run directory, and `privfed reproduce` comparing a re-run round by round."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from privfed.cli import main
from privfed.experiments import run_experiment
from privfed.experiments.provenance import diff_provenance, fingerprint_arrays, fingerprint_rows
from privfed.experiments.reproduce import compare_runs, format_report
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("orig") / "run"
    run_experiment(tiny_config(**{"server.rounds": 2}), out, quiet=True)
    return out


def test_summary_carries_provenance(finished: Path) -> None:
    prov = json.loads((finished / "summary.json").read_text())["provenance"]
    assert prov["packages"]["torch"] and prov["packages"]["transformers"] and prov["packages"]["numpy"]
    assert prov["python"]["version"].count(".") == 2
    assert prov["hardware"]["cpu_count"] >= 1 and prov["hardware"]["device"] == "cpu"
    assert prov["torch"]["deterministic_algorithms"] is True
    for key in ("dataset_rows", "partition", "base_model", "initial_adapter"):
        assert len(prov["fingerprints"][key]) == 64, key
    assert "commit" in prov["git"] and "dirty" in prov["git"]


def test_reproduce_gives_identical_metrics(finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rerun = tmp_path / "rerun"
    assert main(["reproduce", str(finished), "--out", str(rerun), "--quiet"]) == 0
    report = compare_runs(finished, rerun)
    assert report.identical and report.same_provenance and report.rounds_compared == 2
    assert "IDENTICAL" in capsys.readouterr().out


def test_a_changed_package_version_is_reported_not_passed(finished: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(finished, copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["provenance"]["packages"]["transformers"] = "4.0.0"
    (copy / "summary.json").write_text(json.dumps(summary))
    lines = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
    lines[-1]["eval_loss"] += 0.25
    (copy / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    report = compare_runs(finished, copy)
    assert not report.identical and not report.same_provenance
    original, changed = next((a, b) for f, a, b in report.provenance_diffs if f == "packages.transformers")
    assert changed == "4.0.0" and original != "4.0.0"
    [drift] = report.drifts
    assert drift.metric == "eval_loss" and drift.rounds_differing == 1 and drift.max_abs_diff == pytest.approx(0.25)
    text = format_report(report)
    assert "packages.transformers" in text and "4.0.0" in text and "eval_loss" in text


def test_reproduce_refuses_an_unfinished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err


def test_fingerprints_change_exactly_with_content() -> None:
    texts = ("a", "bb", "ccc")
    labels = np.array([0, 1, 0])
    base = fingerprint_rows(texts=texts, labels=labels, rows=[0, 2])
    assert base == fingerprint_rows(texts=list(texts), labels=labels.copy(), rows=np.array([0, 2]))
    assert base != fingerprint_rows(texts=texts, labels=labels, rows=[2, 0])
    assert base != fingerprint_rows(texts=("a", "bb", "ccd"), labels=labels, rows=[0, 2])
    assert base != fingerprint_rows(texts=texts, labels=np.array([1, 1, 0]), rows=[0, 2])
    # Boundaries are encoded: ["ab", "c"] and ["a", "bc"] differ.
    assert fingerprint_rows(texts=("ab", "c"), labels=np.zeros(2, np.int64), rows=[0, 1]) != fingerprint_rows(
        texts=("a", "bc"), labels=np.zeros(2, np.int64), rows=[0, 1]
    )
    assert fingerprint_arrays([np.arange(3)]) != fingerprint_arrays([np.arange(3).astype(np.int32)])
    assert diff_provenance({"a": {"b": 1}, "argv": ["x"]}, {"a": {"b": 2}, "argv": ["y"]}) == [("a.b", 1, 2)]
