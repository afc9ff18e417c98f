"""Secret Sharer exposure: the rank formula, and a tiny federated run that memorises a repeated secret."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from attacks.membership import SecretSharerSettings, exposure, run_exposure
from attacks.metrics import load_scores
from privfed import ConfigError, Dataset, dataset_names, load_dataset, register_dataset
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


def test_repeated_secret_is_exposed_after_training(tmp_path: Path) -> None:
    config = tiny_config(
        **{
            "model.name": "tiny-llama",
            "data.name": _small_corpus(),
            "data.max_train_examples": 0,
            "partition.method": "natural",
            "partition.num_clients": 2,
            "server.clients_per_round": 2,
            "server.rounds": 3,
            "client.local_steps": 10,
            "client.learning_rate": 0.03,
            "adapter.rank": 16,
        }
    )
    settings = SecretSharerSettings(repeats=(1, 16), candidates=200)
    record = run_exposure(config, settings, tmp_path)
    _, many = record["secrets"]
    assert many["copies_in_training"] >= 10
    assert record["max_exposure"] == pytest.approx(math.log2(201))
    # Before training neither secret stands out; the one inserted 16 times moves up the ranking.
    assert many["exposure_before"] < 3.0
    assert many["exposure_after"] > record["max_exposure"] - 1.0  # measured: 0.67 -> 7.65 of 7.65 bits
    assert (tmp_path / "exposure_results.json").exists()
    # The log-perplexities behind every exposure are saved and recompute it exactly.
    views = load_scores(tmp_path / "exposure_scores.npz")
    for stage in ("before", "after"):
        values, is_secret = views[stage]
        assert int(is_secret.sum()) == 2 and int((~is_secret).sum()) == 200
        for j, secret in enumerate(record["secrets"]):
            assert secret[f"exposure_{stage}"] == exposure(values[is_secret][j], values[~is_secret])
