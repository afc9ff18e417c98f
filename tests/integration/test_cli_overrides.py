"""The CLI from a user's CSV: ``--set``, ``--plugin``, ``privfed validate``'s plan, epsilon in the run's last line."""

from __future__ import annotations

import csv
import json
import random
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from privfed.cli import main
from privfed.config import config_from_dict, config_to_dict, load_config
from tests.conftest import tiny_config


def _write_csv(path: Path, *, rows: int = 240, sites: int = 4) -> Path:
    rng = random.Random(0)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "mountain",
        "cloud",
        "stone",
        "fire",
        "water",
        "green",
        "blue",
        "quick",
        "slow",
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "stars", "hospital"])
        for i in range(rows):
            label = rng.choice(["good", "bad"])
            cue = "great" if label == "good" else "awful"
            writer.writerow([f"{' '.join(rng.choice(words) for _ in range(6))} {cue} {i}", label, f"h{i % sites}"])
    return path


def _config_file(tmp_path: Path, **overrides: object) -> Path:
    csv_path = _write_csv(tmp_path / "reviews.csv")
    config = tiny_config(
        **{
            "data.name": "bbc_news",
            "data.path": str(csv_path),
            "data.text_column": "review",
            "data.label_column": "stars",
            "data.client_column": "hospital",
            "partition.method": "natural",
            "partition.num_clients": 4,
            "partition.alpha": 0.5,  # the default: natural partitions do not use it
            "server.clients_per_round": 2,
            **overrides,
        }
    )
    raw = config_to_dict(config)
    path = tmp_path / "reviews.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


def test_validate_prints_the_plan_and_only_the_keys_that_apply(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config_file(tmp_path)
    status = main(
        [
            "validate",
            str(path),
            "--set",
            "privacy.mode=sample",
            "--set",
            "privacy.sample.target_epsilon=3",
            "--set",
            "privacy.delta=1e-3",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0
    comments = [line for line in out.splitlines() if line.startswith("#")]
    assert any("record level" in c and "sigma = " in c and "calibrated to target epsilon 3" in c for c in comments)
    assert any("projected epsilon <= " in c and "delta = 0.001" in c for c in comments)
    assert any("on 4 clients" in c for c in comments)  # one client per hospital
    raw = tomllib.loads(out)
    assert "user" not in raw["privacy"] and raw["privacy"]["sample"]["target_epsilon"] == 3.0
    assert raw["data"]["client_column"] == "hospital" and raw["data"]["name"] == "reviews"
    expected = load_config(
        path, overrides=["privacy.mode=sample", "privacy.sample.target_epsilon=3", "privacy.delta=1e-3"]
    )
    assert config_from_dict(raw) == expected  # the printed keys rebuild the experiment

    assert main(["validate", str(path), "--set", "privacy.mode=user", "--set", "privacy.user.noise_multiplier=1"]) == 0
    out = capsys.readouterr().out
    assert "user level (DP-FedAvg, privacy unit: user): sigma = 1 (given)" in out
    assert "q = 2/4 = 0.5" in out and "record level" not in out


def test_set_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path)
    assert main(["validate", str(path), "--set", "server.roundz=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privfed: error: --set server.roundz: unknown key 'roundz' in server") and "\n" not in err
    assert main(["validate", str(path), "--set", "data.label_column=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no column 'nope' (data.label_column); columns found: 'review', 'stars', 'hospital'" in err


PLUGIN = """
from privfed import Dataset, DatasetSpec, register_dataset
import numpy as np

def _load():
    texts = tuple(f"{w} example {i}" for i, w in enumerate(["good", "bad"] * 60))
    return Dataset(name="plugged", modality="text", labels=np.array([i % 2 for i in range(120)], dtype=np.int64),
                   label_names=("good", "bad"), texts=texts, source="test", license="test")

register_dataset(DatasetSpec("plugged", "text", "classification", _load, "a plugin's dataset"), overwrite=True)
"""


@pytest.fixture
def forget_plugged() -> Iterator[None]:
    """The plugin registers a dataset: remove it afterwards so other tests see only the shipped ones."""
    yield
    from privfed.data.registry import _DATASETS

    if "plugged" in _DATASETS:
        _DATASETS.unregister("plugged")


def test_plugins_register_before_the_config_is_validated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, forget_plugged: None
) -> None:
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(PLUGIN, encoding="utf-8")
    path = tmp_path / "c.toml"
    path.write_text('name = "p"\n[data]\nname = "plugged"\n', encoding="utf-8")
    assert main(["validate", str(path), "--plugin", str(plugin)]) == 0
    assert 'name = "plugged"' in capsys.readouterr().out
    monkeypatch.chdir(tmp_path)  # a module name is imported from the working directory
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["datasets", "--plugin", "my_plugin"]) == 0
    assert "plugged" in capsys.readouterr().out

    assert main(["validate", str(path), "--plugin", "no_such_plugin_module"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privfed: error: --plugin 'no_such_plugin_module': no module named") and "\n" not in err
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('bad\\nplugin')\n", encoding="utf-8")
    assert main(["validate", str(path), "--plugin", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "failed to import: RuntimeError: bad plugin" in err and "\n" not in err
    assert main(["validate", str(path), "--plugin", str(tmp_path / "missing.py")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_from_a_csv_with_natural_clients(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config_file(tmp_path)
    out = tmp_path / "run"
    status = main(
        [
            "run",
            str(path),
            "--out",
            str(out),
            "--quiet",
            "--set",
            "server.rounds=2",
            "--set",
            "privacy.mode=user",
            "--set",
            "privacy.user.noise_multiplier=0.8",
            "--set",
            "privacy.delta=1e-2",
        ]
    )
    printed = capsys.readouterr().out
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["dataset"] == "reviews" and summary["num_clients_total"] == 4
    assert summary["train_examples"] + summary["eval_examples"] == 240
    assert summary["epsilon_user"] > 0
    last = printed.strip().splitlines()[-1]
    assert last.startswith("final: 2 round(s), accuracy ") and f"ε_user={summary['epsilon_user']:.3g}" in last
    assert "(δ=0.01)" in last
    resolved = tomllib.loads((out / "config.resolved.toml").read_text())
    assert resolved["server"]["rounds"] == 2 and resolved["data"]["client_column"] == "hospital"


def test_plan_partitions_the_data_as_a_run_does(tmp_path: Path) -> None:
    from privfed.experiments import build_experiment
    from privfed.experiments.plan import client_sizes

    config = load_config(_config_file(tmp_path, **{"partition.method": "dirichlet", "partition.num_clients": 5}))
    assert client_sizes(config) == [len(d) for d in build_experiment(config).client_data]
