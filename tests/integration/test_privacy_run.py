"""Federated runs with record-level and user-level DP: ledger in metrics, budget stop, resume."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from privfed.cli import main
from privfed.config import dump_config
from privfed.errors import ConfigError, PrivacyBudgetExceeded
from privfed.experiments import RunDirectory, resume_experiment, run_experiment
from tests.conftest import tiny_config


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def strip(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]


SAMPLE = {"privacy.mode": "sample", "privacy.delta": 1e-3, "privacy.sample.target_epsilon": 8.0}
USER = {"privacy.mode": "user", "privacy.delta": 1e-2, "privacy.user.target_epsilon": 3.0}


def test_record_level_dp_reports_epsilon_within_target(run_dir: Path) -> None:
    summary = run_experiment(tiny_config(**SAMPLE), run_dir, quiet=True)
    eps = [r["epsilon_sample_max"] for r in records(run_dir)]
    assert all(a <= b for a, b in itertools.pairwise(eps))  # spent budget never shrinks
    assert 0 < eps[-1] <= 8.0
    assert summary["epsilon_sample_max"] == eps[-1]
    assert summary["sample_noise_multiplier"] > 0.3


def test_user_level_dp_with_adaptive_clipping_and_resume(tmp_path: Path) -> None:
    config = tiny_config(
        **USER,
        **{"privacy.user.adaptive_clipping": True, "privacy.user.count_stddev": 2.0, "server.rounds": 4},
    )
    straight = run_experiment(config, tmp_path / "a", quiet=True)
    run_experiment(config, tmp_path / "b", quiet=True, stop_after_round=2)
    resumed = resume_experiment(tmp_path / "b", quiet=True)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert strip(a) == strip(b)  # resumed epsilon and clip norms equal the uninterrupted run's
    assert resumed["epsilon_user"] == straight["epsilon_user"] <= 3.0
    assert straight["epsilon_user"] >= 0.95 * 3.0  # calibrated for exactly these rounds
    clip_norms = [r["clip_norm"] for r in a]
    assert len(set(clip_norms)) > 1  # adaptive clipping moved C
    # Poisson cohorts: sizes vary around clients_per_round
    assert {r["num_clients"] for r in a} != {3}


def test_run_stops_before_exceeding_the_budget_and_keeps_its_checkpoint(run_dir: Path) -> None:
    config = tiny_config(
        **{
            "privacy.mode": "user",
            "privacy.delta": 1e-2,
            "privacy.user.noise_multiplier": 1.0,
            "privacy.user.target_epsilon": 3.0,  # with sigma fixed, the target is the budget
            "server.rounds": 10,
        }
    )
    with pytest.raises(PrivacyBudgetExceeded, match="budget 3"):
        run_experiment(config, run_dir, quiet=True)
    done = records(run_dir)
    assert 1 <= len(done) < 10 and all(r["epsilon_user"] <= 3.0 for r in done)
    checkpoint = RunDirectory(run_dir).load_checkpoint()
    assert checkpoint is not None and checkpoint.round == len(done)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["completed"] is False and "privacy budget" in summary["stopped"]
    with pytest.raises(PrivacyBudgetExceeded):  # resuming cannot spend more
        resume_experiment(run_dir, quiet=True)
    assert len(records(run_dir)) == len(done)


def test_cli_reports_budget_stop_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        dump_config(
            tiny_config(
                **{
                    "privacy.mode": "user",
                    "privacy.delta": 1e-2,
                    "privacy.user.noise_multiplier": 0.8,
                    "privacy.user.target_epsilon": 2.0,
                    "server.rounds": 10,
                }
            )
        )
    )
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("privfed: error: the next round would raise user-level epsilon")


def test_user_dp_under_secure_aggregation(run_dir: Path) -> None:
    config = tiny_config(
        **USER,
        **{"secagg.enabled": True, "server.weighting": "uniform", "server.clients_per_round": 4, "server.rounds": 3},
    )
    summary = run_experiment(config, run_dir, quiet=True)
    rs = records(run_dir)
    assert all(r["update_norm"] > 0 for r in rs)  # noise is added even if a round's protocol aborts
    assert any(r["num_clients"] >= 3 and r["secagg_aborted"] is None for r in rs)
    assert summary["epsilon_user"] <= 3.0


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"privacy.mode": "user"}, "privacy.user needs noise_multiplier > 0 or target_epsilon > 0"),
        ({**USER, "privacy.delta": 0.2}, "privacy.delta must be < 1/partition.num_clients"),
        ({**USER, "privacy.user.clip_norm": 0.0}, "privacy.user.clip_norm must be > 0.0"),
        ({**SAMPLE, "privacy.sample.target_epsilon": -1.0}, "must be 0.0 (off) or > 0.0 and <= 100.0; got -1.0"),
        ({"privacy.mode": "everything"}, "privacy.mode must be one of"),
    ],
)
def test_privacy_config_errors(extra: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        tiny_config(**extra)
    assert fragment in str(info.value)


def test_privacy_errors_found_when_the_data_is_known(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="smallest client"):
        run_experiment(tiny_config(**{**SAMPLE, "privacy.delta": 0.5}), run_dir, quiet=True)
    with pytest.raises(ConfigError, match="Opacus cannot"):
        run_experiment(tiny_config(**{**SAMPLE, "adapter.method": "ia3"}), run_dir / "x", quiet=True)
    assert not (run_dir / "x").exists()  # checked before anything is written
    with pytest.raises(ConfigError, match="count_stddev"):
        run_experiment(tiny_config(**{**USER, "privacy.user.adaptive_clipping": True}), run_dir / "y", quiet=True)
