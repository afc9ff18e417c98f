"""privfed sweep --grid ... --seeds ...: the grid's points, typed values, seed intervals, reuse."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from privfed.cli import main
from privfed.config import dump_config
from privfed.errors import ConfigError
from privfed.experiments.sweep import GridAxis, parse_grid, parse_seeds, plan_sweep, seed_interval
from tests.conftest import tiny_config


def test_parse_grid_and_seeds() -> None:
    axes = parse_grid(["privacy.user.target_epsilon=1, 3.0,inf", 'adapter.target_modules=["query"],["query","value"]'])
    assert axes == [
        GridAxis("privacy.user.target_epsilon", ("1", "3", "inf")),
        GridAxis("adapter.target_modules", ('["query"]', '["query","value"]')),
    ]
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad, match in [
        (["adapter.rank"], "KEY=VALUE"),
        (["adapter.rank=4,,8"], "empty value"),
        (["adapter.rank=4,4"], "repeated"),
        (["adapter.rank=4", "adapter.rank=8"], "twice"),
        (["privacy.user.target_epsilon=0,1"], "> 0"),
        (["privacy.sample.target_epsilon=x"], "numbers"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_grid(bad)
    for bad_seeds in ("0,-1", "1,1", "a"):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad_seeds)


def test_seed_interval_is_the_t_interval() -> None:
    stats = seed_interval([0.5, 0.6, 0.7, None])
    assert stats["n"] == 3 and stats["mean"] == pytest.approx(0.6)
    # s = 0.1, t_{0.975,2} = 4.302653
    assert stats["ci95_half_width"] == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert stats["ci95_low"] == pytest.approx(0.6 - stats["ci95_half_width"])
    one = seed_interval([0.5])
    assert one["mean"] == 0.5 and one["ci95_half_width"] is None and one["std"] is None
    assert seed_interval([2.0, 2.0 + 1e-16])["ci95_half_width"] == 0.0


def test_plan_sweep_is_the_cartesian_product_typed_by_the_schema(tmp_path: Path) -> None:
    base = tiny_config()  # no privacy section: the grid turns user-level DP on per point
    axes = parse_grid(["privacy.user.target_epsilon=2,inf", "adapter.rank=4,8", "server.strategy=fedavg,fedadam"])
    runs = plan_sweep(base, tmp_path, axes, seeds=[0, 5])
    assert len(runs) == 2 * 2 * 2 * 2
    first = runs[0]
    assert first.name == "eps-2_rank-4_strategy-fedavg" and first.path == tmp_path / first.name / "seed-0"
    assert first.config.privacy.mode == "user" and first.config.privacy.user.target_epsilon == 2.0
    assert first.config.privacy.user.noise_multiplier == 0.0 and first.config.adapter.method_config.rank == 4
    assert [r.seed for r in runs[:2]] == [0, 5] and runs[1].config.seed == 5
    off = next(r for r in runs if r.name == "eps-inf_rank-8_strategy-fedadam")
    assert off.config.privacy.mode == "none" and off.config.adapter.method_config.rank == 8
    assert off.config.server.strategy == "fedadam"
    single = plan_sweep(base, tmp_path, parse_grid(["adapter.rank=4"]))
    assert single[0].path == tmp_path / "rank-4" and single[0].config.seed == base.seed
    with pytest.raises(ConfigError, match=r"adapter\.rnak"):
        plan_sweep(base, tmp_path, parse_grid(["adapter.rnak=4"]))
    with pytest.raises(ConfigError, match=r"adapter\.rank"):
        plan_sweep(base, tmp_path, parse_grid(["adapter.rank=4,four"]))


def test_run_sweep_rows_keep_numeric_epsilons(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from privfed.experiments import sweep

    config = tiny_config(**{"privacy.mode": "user", "privacy.user.target_epsilon": 1.0})
    monkeypatch.setattr(sweep, "run_sweep_point", lambda *a, **k: {"final_eval_accuracy": 0.5})
    rows = sweep.run_sweep(config, tmp_path / "s", [1.0, math.inf], quiet=True)
    assert [r["target_epsilon"] for r in rows] == [1.0, math.inf] and rows[0]["final_eval_accuracy"] == 0.5
    assert rows[0]["final_eval_accuracy_ci95"] is None and rows[0]["seeds"] == 1


def test_cli_grid_with_seeds_writes_intervals_and_reuses_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tiny_config(**{"server.rounds": 1, "privacy.delta": 1e-2})
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    out = tmp_path / "sweep"
    argv = ["sweep", str(path), "--grid", "privacy.user.target_epsilon=2,inf", "--seeds", "0,1", "--out", str(out)]
    assert main([*argv, "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "point 1/4: ε=2, seed=0" in printed and "point 4/4: ε=inf, seed=1" in printed
    manifest = json.loads((out / "sweep.json").read_text())
    assert manifest["seeds"] == [0, 1] and manifest["privacy_unit"] == "user" and manifest["delta"] == 1e-2
    point = manifest["points"][0]
    assert point["name"] == "eps-2" and [r["path"] for r in point["runs"]] == ["eps-2/seed-0", "eps-2/seed-1"]
    accuracies = [
        json.loads((out / r["path"] / "summary.json").read_text())["final_eval_accuracy"] for r in point["runs"]
    ]
    assert point["stats"]["final_eval_accuracy"]["values"] == accuracies
    assert point["stats"]["final_eval_accuracy"] == seed_interval(accuracies)
    assert json.loads((out / "results" / "eps-2.json").read_text()) == point
    assert manifest["points"][1]["privacy_mode"] == "none"
    assert manifest["points"][1]["stats"]["epsilon_user"]["n"] == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["privacy.user.target_epsilon"] for r in rows] == ["2", "inf"] and rows[0]["seeds"] == "2"
    assert float(rows[0]["epsilon_user"]) <= 2.0 and "final_eval_accuracy_ci95" in rows[0]
    for suffix in ("png", "pdf", "svg"):
        assert (out / f"privacy_utility.{suffix}").stat().st_size > 5000
    svg = (out / "privacy_utility.svg").read_text()
    assert "δ = 0.01" in svg and "user-level" in svg  # text kept as text, the ε axis says unit and δ
    before = (out / "eps-2" / "seed-1" / "metrics.jsonl").read_bytes()
    assert main([*argv, "--quiet"]) == 0  # every run reused
    assert (out / "eps-2" / "seed-1" / "metrics.jsonl").read_bytes() == before
    capsys.readouterr()
    assert main([*argv, "--quiet", "--set", "server.rounds=2"]) == 2  # another config: refused, not mixed in
    assert "holds a run of another config (differs at server.rounds)" in capsys.readouterr().err
