"""Every example script runs in its --dry-run mode."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", ["configs/demo.toml", "configs/smollm2_fortunes.toml"])
def test_federated_lora_example_dry_run(config: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "examples/federated_lora.py", config, "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["rounds"] == 2 and summary["completed"] is True
    assert summary["model"] in ("tiny-bert", "tiny-llama")
    assert (out / "adapter" / "adapter_config.json").exists()


@pytest.mark.parametrize("config", ["configs/cohort_tweets.toml", "configs/cohort_tweets_gpu.toml"])
def test_cohort_curve_example_dry_run(config: str, tmp_path: Path) -> None:
    out = tmp_path / "cohorts"
    proc = subprocess.run(
        [sys.executable, "examples/cohort_curve.py", config, "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "cohorts.csv").open()))
    assert [int(r["clients_per_round"]) for r in rows] == [3, 10]
    # Every DP point is accounted within the config's budget; the non-private twin has no epsilon.
    assert all(0 < float(r["epsilon"]) <= 8.0 + 1e-6 for r in rows)
    assert float(rows[0]["noise_multiplier"]) > 0
    assert all((out / f"cohorts.{fmt}").stat().st_size > 1000 for fmt in ("png", "pdf", "svg"))
    assert "smallest cohort" in (out / "cohorts.md").read_text()


def test_device_grid_dry_run_trains_and_assembles_a_sweep(tmp_path: Path) -> None:
    """scripts/device_grid.py (the GPU-session driver) on the tiny model: two sweep points run as
    separate processes, then the sweep table, its plot and the recipes plot are written."""
    out = tmp_path / "grid"
    proc = subprocess.run(
        [sys.executable, "scripts/device_grid.py", "--out", str(out), "--dry-run", "--procs", "2", "--only", "2,3"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = list(csv.DictReader((out / "local-adamw" / "sweep.csv").open()))
    assert [float(r["target_epsilon"]) for r in rows] == [8.0, float("inf")]
    assert 0 < float(rows[0]["epsilon_sample_max"]) <= 8.0 + 1e-6 and rows[1]["epsilon_sample_max"] == ""
    assert all((out / f"recipes.{fmt}").stat().st_size > 1000 for fmt in ("png", "pdf", "svg"))
    assert (out / "local-adamw" / "privacy_utility.png").exists()
    log = json.loads((out / "grid.json").read_text())
    assert [entry["rc"] for entry in log["jobs"]] == [0, 0]
    assert "cohorts" not in log["results"]  # no cohort point was asked for
