"""Secret Sharer exposure: the rank formula, the record and its re-runs, and a federated run that memorises
a repeated secret (slow)."""

from __future__ import annotations

import json
import math
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attacks.membership import ExposureRecord, SecretExposure, SecretSharerSettings, exposure, run_exposure
from attacks.membership.exposure import _canaried
from attacks.metrics import load_scores
from privfed import ConfigError, Dataset, dataset_names, load_dataset, register_dataset, run_experiment
from privfed.config import replace_path
from privfed.data import DatasetSpec
from tests.conftest import tiny_config


def test_exposure_is_log_rank() -> None:
    candidates = np.arange(1.0, 1024.0)  # 1023 candidates
    assert exposure(0.5, candidates) == pytest.approx(10.0)  # most likely of all: log2(1024)
    assert exposure(2000.0, candidates) == pytest.approx(10.0 - math.log2(1024))  # least likely: 0 bits
    assert exposure(1.0, candidates) == pytest.approx(10.0 - math.log2(1.5))  # a tie counts half
    # A secret drawn like the candidates has exposure about 1.44 bits on average (log2 e).
    rng = np.random.default_rng(0)
    mean = np.mean([exposure(rng.normal(), rng.normal(size=999)) for _ in range(400)])
    assert abs(mean - math.log2(math.e)) < 0.15
    with pytest.raises(ValueError):
        exposure(1.0, [])
    with pytest.raises(ConfigError):
        SecretSharerSettings(repeats=(0,))


def _small_corpus() -> str:
    """80 fortunes in two natural groups, registered once per process."""
    name = "fortunes-small-test"
    if name not in dataset_names():
        base = load_dataset("fortunes")
        texts = tuple(base.texts[:80]) if base.texts else ()
        dataset = Dataset(
            name=name,
            modality="text",
            labels=np.zeros(80, dtype=np.int64),
            label_names=("fortune",),
            source=base.source,
            license=base.license,
            groups=np.array(["a", "b"] * 40),
            texts=texts,
        )
        register_dataset(DatasetSpec(name, "text", "language_modeling", lambda: dataset, "80 fortunes"))
    return name


def _config(**overrides: object) -> Any:
    """tiny-llama on the 80 fortunes, one client per natural group."""
    base = {
        "model.name": "tiny-llama",
        "data.name": _small_corpus(),
        "data.max_train_examples": 0,
        "partition.method": "natural",
        "partition.num_clients": 2,
        "server.clients_per_round": 2,
        "adapter.rank": 16,
    }
    return tiny_config(**(base | overrides))


def _recomputes(out: Path, record: Mapping[str, Any], candidates: int) -> None:
    """The saved log-perplexities hold the secrets then the candidates, and give every exposure exactly."""
    views = load_scores(out / "exposure_scores.npz")
    assert sorted(views) == ["after", "before"]
    for stage in ("before", "after"):
        values, is_secret = views[stage]
        assert int(is_secret.sum()) == len(record["secrets"]) and int((~is_secret).sum()) == candidates
        assert bool(np.all(is_secret[: len(record["secrets"])]))
        for j, secret in enumerate(record["secrets"]):
            assert secret[f"exposure_{stage}"] == exposure(values[is_secret][j], values[~is_secret])


def test_exposure_record_is_typed_recomputes_and_is_reused(tmp_path: Path) -> None:
    # One training step per client: what is checked is the record, its scores and the driver, not memorisation.
    config = _config(**{"server.rounds": 1, "client.local_steps": 1})
    settings = SecretSharerSettings(repeats=(1, 3), candidates=20, max_base_examples=8)
    record = run_exposure(config, settings, tmp_path)
    written = json.loads((tmp_path / "exposure_results.json").read_text())
    assert written == json.loads(json.dumps(record))
    assert list(written) == list(typing.get_type_hints(ExposureRecord))
    assert [list(s) for s in written["secrets"]] == [list(typing.get_type_hints(SecretExposure))] * 2
    assert [s["inserted"] for s in record["secrets"]] == [1, 3]
    assert all(0 <= s["copies_in_training"] <= s["inserted"] for s in record["secrets"])
    assert record["candidates"] == 20 and record["max_exposure"] == pytest.approx(math.log2(21))
    exposures = [e for s in record["secrets"] for e in (s["exposure_before"], s["exposure_after"])]
    assert all(0.0 <= e <= record["max_exposure"] for e in exposures)
    fingerprints = record["provenance"]["fingerprints"]
    assert {"attack_settings", "experiment_config", "run/initial_adapter"} <= set(fingerprints)
    _recomputes(tmp_path, record, 20)

    # The same command again: the finished record is returned, nothing is trained or scored again.
    run_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()}
    scores_mtime = (tmp_path / "exposure_scores.npz").stat().st_mtime_ns
    assert run_exposure(config, settings, tmp_path) == written
    assert (tmp_path / "exposure_scores.npz").stat().st_mtime_ns == scores_mtime

    # Without the result file, the finished federation is reused (not trained again) and scores the same.
    (tmp_path / "exposure_results.json").unlink()
    again = run_exposure(config, settings, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if p.is_file()} == run_files
    assert again["secrets"] == record["secrets"]


@pytest.mark.slow
def test_repeated_secret_is_exposed_after_training(tmp_path: Path) -> None:
    # Measured on this config: the 16-copy secret goes from 0.63 to 7.65 of 7.65 bits (3 rounds of 10 steps at
    # learning rate 0.03 on the whole corpus gave the same); the 1-copy secret is in the held-out split here.
    config = _config(**{"server.rounds": 1, "client.local_steps": 10, "client.learning_rate": 0.05})
    settings = SecretSharerSettings(repeats=(1, 16), candidates=200, max_base_examples=16)
    record = run_exposure(config, settings, tmp_path)
    _, many = record["secrets"]
    assert many["copies_in_training"] >= 10
    assert record["max_exposure"] == pytest.approx(math.log2(201))
    # Before training neither secret stands out; the one inserted 16 times moves up the ranking.
    assert many["exposure_before"] < 3.0
    assert many["exposure_after"] > record["max_exposure"] - 1.0
    _recomputes(tmp_path, record, 200)


@pytest.mark.slow
def test_an_interrupted_exposure_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    config = _config(**{"server.rounds": 2, "client.local_steps": 1})
    settings = SecretSharerSettings(repeats=(1, 3), candidates=20, max_base_examples=8)
    straight = run_exposure(config, settings, tmp_path / "straight")
    # The same attack stopped after its first round (the canaried corpus is what run_exposure trains on).
    name, _ = _canaried(config.data.name, settings, config.seed)
    partial = run_experiment(
        replace_path(config, "data.name", name), tmp_path / "resumed" / "run", quiet=True, stop_after_round=1
    )
    assert partial["completed"] is False and partial["rounds"] == 1
    metrics = tmp_path / "resumed" / "run" / "metrics.jsonl"
    (first,) = metrics.read_text().splitlines()
    resumed = run_exposure(config, settings, tmp_path / "resumed")
    lines = metrics.read_text().splitlines()
    # Resumed, not run again: round 1's line (its timings too) is the interrupted run's.
    assert lines[0] == first and [json.loads(line)["round"] for line in lines] == [1, 2]
    assert resumed["secrets"] == straight["secrets"]
    assert resumed["final_eval_perplexity"] == straight["final_eval_perplexity"]
