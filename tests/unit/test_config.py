from __future__ import annotations

from pathlib import Path

import pytest

from privfed.cli import main
from privfed.config import ExperimentConfig, config_from_dict, dump_config, load_config, replace_path, replace_paths
from privfed.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_round_trip(tmp_path: Path) -> None:
    config = config_from_dict({})
    assert config == ExperimentConfig()
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "name",
    [
        "demo.toml",
        "smollm2_fortunes.toml",
        "tiny.toml",
        "dp_tweets_gpu.toml",
        "dp_tweets_gpu_fedadam.toml",
        "cohort_tweets_gpu.toml",
    ],
)
def test_shipped_configs_load_and_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / name)
    path = tmp_path / "again.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"sever": {}}, ["unknown key sever", "allowed keys"]),
        ({"server": {"roundz": 3}}, ["server.roundz", "rounds"]),
        ({"server": {"rounds": "3"}}, ["server.rounds", "integer", "'3'"]),
        ({"server": {"rounds": True}}, ["server.rounds", "integer", "True"]),
        ({"server": {"rounds": 0}}, ["server.rounds", ">= 1", "got 0"]),
        ({"client": {"learning_rate": -0.1}}, ["client.learning_rate", "> 0.0", "-0.1"]),
        ({"client": {"learning_rate": float("nan")}}, ["client.learning_rate", "finite"]),
        ({"data": {"eval_fraction": 1.0}}, ["data.eval_fraction", "< 1.0", "1.0"]),
        ({"model": {"name": "gpt-5"}}, ["model.name", "'minilm'", "'gpt-5'"]),
        ({"model": {"device": "tpu"}}, ["model.device", "'cuda'", "'tpu'"]),
        ({"client": {"sampling_rate": 1.5}}, ["client.sampling_rate", "<= 1.0", "1.5"]),
        ({"adapter": {"method": "dora"}}, ["adapter.method", "'lora'", "'dora'"]),
        ({"adapter": {"target_modules": "query"}}, ["adapter.target_modules", "list"]),
        ({"adapter": {"target_modules": ["query", 3]}}, ["adapter.target_modules[1]", "string"]),
        ({"partition": {"method": "zipf"}}, ["partition.method", "'dirichlet'"]),
        ({"server": {"clients_per_round": 20}}, ["server.clients_per_round", "partition.num_clients (10)", "20"]),
        ({"model": 3}, ["model", "table"]),
        ({"seed": -1}, ["seed", ">= 0", "-1"]),
    ],
)
def test_bad_values_name_field_value_and_rule(raw: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(info.value, ValueError)


def test_load_config_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nrounds = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_replace_path_revalidates() -> None:
    config = config_from_dict({})
    assert replace_path(config, "server.rounds", 7).server.rounds == 7
    with pytest.raises(ConfigError, match=r"server\.rounds"):
        replace_path(config, "server.rounds", -7)
    with pytest.raises(ConfigError, match="unknown config key"):
        replace_path(config, "server.nope", 1)


def test_replace_paths_validates_once_all_changes_are_in() -> None:
    config = config_from_dict({})
    # Switching privacy on needs its budget in the same step: one at a time the first change fails.
    with pytest.raises(ConfigError, match="target_epsilon"):
        replace_path(config, "privacy.mode", "sample")
    both = replace_paths(config, {"privacy.mode": "sample", "privacy.sample.target_epsilon": 4.0})
    assert both.privacy.mode == "sample" and both.privacy.sample.target_epsilon == 4.0
    assert config.privacy.mode == "none"  # the input is left alone
    with pytest.raises(ConfigError, match=r"privacy\.nope"):
        replace_paths(config, {"privacy.mode": "sample", "privacy.nope": 1})


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[client]\nbatch_size = 0\n")
    status = main(["run", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert lines == ["privfed: error: client.batch_size must be >= 1 and <= 65536; got 0"]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()  # nothing created for an invalid config
