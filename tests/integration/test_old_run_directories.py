"""Run directories written before per-method config tables still resume and reproduce.

``data/run_before_method_tables`` was written by privfed before ``[server.fedadam]`` and
``[adapter.lora]`` existed (its ``config.resolved.toml`` sets ``server.beta1 = 0.8`` and
``adapter.rank = 4`` directly), interrupted after round 2 of 3;
``run_before_method_tables.uninterrupted_metrics.jsonl`` is the same run, uninterrupted, by
that same version. Losses are compared to 2e-5 (relative): FedAdam's beta1 = 0.9 instead of
the saved 0.8 moves them by 1.5e-4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from privfed.adapters.methods import LoraAdapterConfig
from privfed.experiments import RunDirectory, resume_experiment, run_experiment
from privfed.server.strategies import FedAdamConfig

DATA = Path(__file__).resolve().parent / "data"
OLD = DATA / "run_before_method_tables"
KEYS = ("train_loss", "eval_loss", "eval_accuracy")


def _metrics(path: Path) -> list[dict[str, float]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [{k: json.loads(line)[k] for k in ("round", *KEYS)} for line in lines if line.strip()]


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors.numpy import load_file

    return {name: tuple(array.shape) for name, array in load_file(str(path)).items()}


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    path = tmp_path / "old"
    shutil.copytree(OLD, path)
    return path


def test_the_old_config_loads_into_the_method_tables(old_run: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"server\.beta1 -> server\.fedadam\.beta1"):
        config = RunDirectory(old_run).load_config()
    assert config.server.strategy_config == FedAdamConfig(beta1=0.8)
    assert config.adapter.method_config == LoraAdapterConfig(rank=4, alpha=8)


def test_an_interrupted_old_run_resumes_to_the_uninterrupted_result(old_run: Path) -> None:
    digest = RunDirectory(old_run).config_digest()
    with pytest.warns(DeprecationWarning):
        resume_experiment(old_run, quiet=True)
    assert RunDirectory(old_run).config_digest() == digest  # the saved config is not rewritten
    expected = _metrics(DATA / "run_before_method_tables.uninterrupted_metrics.jsonl")
    resumed = _metrics(old_run / "metrics.jsonl")
    assert [r["round"] for r in resumed] == [1, 2, 3]
    for got, want in zip(resumed, expected, strict=True):
        assert got == pytest.approx(want, rel=2e-5), (got, want)


def test_reproducing_an_old_run_gives_its_metrics(old_run: Path, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning):
        config = RunDirectory(old_run).load_config()
    run_experiment(config, tmp_path / "again", quiet=True)
    expected = _metrics(DATA / "run_before_method_tables.uninterrupted_metrics.jsonl")
    again = _metrics(tmp_path / "again" / "metrics.jsonl")
    for got, want in zip(again, expected, strict=True):
        assert got == pytest.approx(want, rel=2e-5), (got, want)
    # Same adapter shapes (LoRA rank 4 from the old adapter.rank; rank 8 moves the losses by < 1e-6).
    assert _shapes(tmp_path / "again" / "checkpoint.safetensors") == _shapes(old_run / "checkpoint.safetensors")
    # The re-run's resolved config is written with the tables.
    text = (tmp_path / "again" / "config.resolved.toml").read_text()
    assert "[server.fedadam]\nbeta1 = 0.8" in text and "beta1" not in text.split("[server]")[1].split("[server.")[0]
