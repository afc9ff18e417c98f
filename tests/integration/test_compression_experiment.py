"""examples/compression_experiment.py: the headline numbers from records, and the --quick smoke run."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compression_experiment", REPO / "examples/compression_experiment.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rec(name: str, base: str, accuracy: float | None, ratio: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "base": base,
        "final_eval_accuracy": accuracy,
        "uplink_ratio_vs_fp32_model": ratio,
        "mechanism": extra.get("mechanism"),
        "bits_per_coordinate": extra.get("bits", 32),
    }


def test_headline_numbers_from_synthetic_records() -> None:
    exp = _script()
    records = [
        _rec("fp32", "demo", 0.90, 3e-3),
        _rec("plain-8bit", "demo", 0.895, 8e-4),  # within 1 point
        _rec("plain-2bit", "demo", 0.889, 2e-4),  # 1.1 points below: out
        _rec("sparsity-0.9", "demo", 0.92, 5e-4),  # better than fp32: in
        _rec("nodp", "cohort", 0.80, 3e-3),
        _rec("central", "cohort", 0.78, 3e-3, mechanism="central"),
        _rec("distributed_gaussian-16bit", "cohort", 0.77, 3e-3, mechanism="distributed_gaussian", bits=16),
        _rec("skellam-16bit", "cohort", 0.775, 3e-3, mechanism="skellam", bits=16),
        _rec("skellam-32bit", "cohort", 0.79, 3e-3, mechanism="skellam", bits=32),  # > 16 bits: not counted
    ]
    h = exp.headline(records)
    assert h["best_setting_within_1pt"] == "sparsity-0.9" and h["best_uplink_ratio_within_1pt"] == 5e-4
    assert h["ddp_gap_vs_central_points"] == pytest.approx(0.5)
    assert h["ddp_gap_by_mechanism_points"] == pytest.approx({"distributed_gaussian": 1.0, "skellam": 0.5})
    assert h["central_gap_vs_nodp_points"] == pytest.approx(2.0)
    missing = exp.headline([r for r in records if r["name"] != "central"])
    assert missing["ddp_gap_vs_central_points"] is None and missing["best_setting_within_1pt"] == "sparsity-0.9"


def test_every_knob_of_the_issue_is_planned() -> None:
    exp = _script()
    demo = {s.name: s for s in exp.demo_settings(5)}
    assert {f"plain-{b}bit" for b in (2, 4, 8, 16, 32)} <= set(demo)
    # 2 bits cannot hold a sum of 5 clients (2^1 - 1 < 5): only 4..32 bits under SecAgg.
    assert {n for n in demo if n.startswith("secagg-") and n.endswith("bit")} == {
        f"secagg-{b}bit" for b in (4, 8, 16, 32)
    }
    assert {"fp32", "fp32-uniform", "secagg-32bit-norotation", "sparsity-0.5", "sparsity-0.9", "ffa-lora"} <= set(demo)
    assert all(s.overrides.get("server.weighting") == "uniform" for n, s in demo.items() if n.startswith("secagg"))
    assert {"lora-r2", "lora-r1", "lora-r2+4bit", "lora-r1+4bit"} <= set(demo)
    assert demo["lora-r1"].overrides == {"adapter.lora.rank": 1, "adapter.lora.alpha": 2}
    cohort = {s.name: s for s in exp.cohort_settings()}
    assert cohort["distributed_gaussian-16bit"].overrides["secagg.bits"] <= 16
    assert cohort["skellam-16bit"].overrides["privacy.user.mechanism"] == "skellam"


@pytest.mark.slow
def test_quick_run_writes_results_whose_headline_numbers_follow_from_the_records(tmp_path: Path) -> None:
    """The --quick smoke run (tiny-bert, 2 rounds, 26 runs: about 3.5 minutes on 2 busy cores)."""
    out = tmp_path / "compression"
    proc = subprocess.run(
        [sys.executable, "examples/compression_experiment.py", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[26/26] cohort/skellam-16bit" in proc.stdout
    results = json.loads((out / "compression_results.json").read_text())
    records = results["records"]
    assert results["quick"] is True and results["skipped"] == []
    names = {(r["base"], r["name"]) for r in records}
    assert len(names) == len(records) == 26
    for r in records:
        assert 0.0 <= r["final_eval_accuracy"] <= 1.0
        assert r["uplink_bytes_per_client_round"] > 0
        # The ratio is bytes per client-round over the fp32 base model, as summary.json defines it.
        assert r["uplink_ratio_vs_fp32_model"] == pytest.approx(
            r["uplink_bytes_per_client_round"] / (4 * r["base_params"])
        )
        assert (out / r["run_dir"] / "summary.json").exists()
    by = {r["name"]: r for r in records}
    # Fewer bits, fewer bytes (plain uploads are bit-packed); sparsity 0.9 sends about a tenth.
    plain = [by[f"plain-{b}bit"]["uplink_bytes_per_client_round"] for b in (2, 4, 8, 16, 32)]
    assert plain == sorted(plain) and plain[0] < plain[-1] / 8
    assert by["sparsity-0.9"]["uplink_bytes_per_client_round"] < 0.15 * by["fp32"]["uplink_bytes_per_client_round"]
    # Every user-level DP run is charged at most the target epsilon; the non-private one has none.
    for name in ("central", "central-secagg-16bit", "distributed_gaussian-16bit", "skellam-16bit"):
        assert 0 < by[name]["epsilon"] <= 8.0 + 1e-6
    assert by["nodp"]["epsilon"] is None
    # The headline numbers, recomputed from the records.
    reference = by["fp32"]["final_eval_accuracy"]
    within = [
        r["uplink_ratio_vs_fp32_model"]
        for r in records
        if r["base"] == "demo" and r["final_eval_accuracy"] >= reference - 0.01
    ]
    assert results["best_uplink_ratio_within_1pt"] == min(within)
    central = by["central"]["final_eval_accuracy"]
    gaps = [100 * (central - by[f"{m}-16bit"]["final_eval_accuracy"]) for m in ("distributed_gaussian", "skellam")]
    assert math.isclose(results["ddp_gap_vs_central_points"], min(gaps), abs_tol=1e-12)
    table = (out / "compression_results.md").read_text()
    assert "best_uplink_ratio_within_1pt" in table and "| skellam-16bit |" in table


def test_the_committed_results_hold_the_headline_numbers_their_records_give() -> None:
    """docs/compression_results.json (the full run): its headline numbers recomputed from its records."""
    exp = _script()
    results = json.loads((REPO / "docs" / "compression_results.json").read_text())
    assert results["quick"] is False and results["skipped"] == []
    names = {(r["base"], r["name"]) for r in results["records"]}
    planned = {("demo", s.name) for s in exp.demo_settings(5)} | {("cohort", s.name) for s in exp.cohort_settings()}
    assert names == planned, names ^ planned
    fresh = exp.headline(results["records"])
    for key, value in fresh.items():
        assert results[key] == (pytest.approx(value, abs=1e-12) if isinstance(value, float) else value), key
    for r in results["records"]:
        ratio = r["uplink_bytes_per_client_round"] / (4 * r["base_params"])
        assert r["uplink_ratio_vs_fp32_model"] == pytest.approx(ratio), r["name"]
        if r["mechanism"] is not None:
            assert 0 < r["epsilon"] <= 8.0 + 1e-6, r["name"]
