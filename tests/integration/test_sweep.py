"""privfed sweep: one run per epsilon, table, plot, reuse of finished runs."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from privfed.cli import main
from privfed.config import dump_config
from privfed.errors import ConfigError
from privfed.experiments.sweep import parse_epsilons, sweep_config
from tests.conftest import tiny_config


def test_parse_epsilons() -> None:
    assert parse_epsilons("1, 3,8,inf") == [1.0, 3.0, 8.0, math.inf]
    with pytest.raises(ConfigError, match="> 0"):
        parse_epsilons("1,0")
    with pytest.raises(ConfigError, match="numbers"):
        parse_epsilons("1,x")


def test_sweep_config_calibrates_each_active_level() -> None:
    base = tiny_config(
        **{
            "privacy.mode": "both",
            "privacy.delta": 1e-3,
            "privacy.user.noise_multiplier": 1.0,
            "privacy.sample.noise_multiplier": 1.0,
        }
    )
    swept = sweep_config(base, 2.0)
    assert swept.privacy.user.target_epsilon == 2.0 and swept.privacy.user.noise_multiplier == 0.0
    assert swept.privacy.sample.target_epsilon == 2.0
    assert sweep_config(base, math.inf).privacy.mode == "none"
    with pytest.raises(ConfigError, match=r"privacy\.mode"):
        sweep_config(tiny_config(), 1.0)


def test_cli_sweep_writes_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(
        **{"privacy.mode": "user", "privacy.delta": 1e-2, "privacy.user.target_epsilon": 1.0, "server.rounds": 2}
    )
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    out = tmp_path / "sweep"
    assert main(["sweep", str(path), "--epsilons", "1,8,inf", "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["target_epsilon"] for r in rows] == ["1", "8", "inf"]
    assert float(rows[0]["epsilon_user"]) <= 1.0 < float(rows[1]["epsilon_user"]) <= 8.0
    assert float(rows[0]["user_noise_multiplier"]) > float(rows[1]["user_noise_multiplier"])
    assert rows[2]["privacy_mode"] == "none" and rows[2]["epsilon_user"] == ""
    png = (out / "privacy_utility.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "| target_epsilon |" in capsys.readouterr().out
    before = (out / "eps-1" / "metrics.jsonl").read_bytes()
    assert main(["sweep", str(path), "--epsilons", "1", "--out", str(out), "--quiet"]) == 0  # reused, not rerun
    assert (out / "eps-1" / "metrics.jsonl").read_bytes() == before
