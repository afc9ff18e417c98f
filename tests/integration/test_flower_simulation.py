"""transport.kind = "flower-simulation": the same run on Flower's Simulation Engine (Ray) as in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import tiny_config
from safetensors.numpy import load_file

from privfed.experiments.runner import run_experiment

USER_DP_SECAGG = {
    "secagg.enabled": True,
    "server.weighting": "uniform",
    "server.clients_per_round": 4,
    "privacy.mode": "user",
    "privacy.delta": 1e-2,
    "privacy.user.target_epsilon": 3.0,
}
COMPARED = ("round", "num_clients", "train_loss", "eval_accuracy", "dropped_clients", "secagg_aborted")


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _adapter(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


@pytest.mark.parametrize("extra", [{}, USER_DP_SECAGG], ids=["plain", "secagg-user-dp"])
def test_flower_simulation_matches_in_process(tmp_path: Path, extra: dict[str, Any]) -> None:
    import ray

    base = {"server.rounds": 2, **extra}
    run_experiment(tiny_config(**base), tmp_path / "inproc", quiet=True)
    flower = tiny_config(**base, **{"transport.kind": "flower-simulation", "transport.reply_timeout": 120.0})
    summary = run_experiment(flower, tmp_path / "flower", quiet=True)
    assert not ray.is_initialized()  # the transport's close() ended the simulation and Ray

    assert summary["completed"] and summary["trained"]
    local, remote = _records(tmp_path / "inproc"), _records(tmp_path / "flower")
    assert len(remote) == 2
    for a, b in zip(local, remote, strict=True):
        assert b["num_clients"] >= 3  # every sampled client answered over Flower
        for key in COMPARED:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], abs=1e-5), key
            else:
                assert b[key] == a[key], key
        assert b["bytes_up"] == a["bytes_up"] and b["bytes_down"] == a["bytes_down"]
    want, got = _adapter(tmp_path / "inproc"), _adapter(tmp_path / "flower")
    assert sorted(want) == sorted(got) and want
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    # the run trained: the adapter moved away from its initialisation in both engines
    assert max(float(np.abs(v).max()) for v in got.values()) > 0


def test_flower_transports_are_registered_and_configurable() -> None:
    from privfed.config import config_from_dict
    from privfed.transport.base import transport_names

    assert {"flower-simulation", "flower-deployment"} <= set(transport_names())
    config = config_from_dict({"name": "x", "transport": {"kind": "flower-simulation", "num_gpus": 0.5}})
    assert config.transport.num_gpus == 0.5


def test_flower_deployment_transport_needs_the_server_app() -> None:
    from privfed.errors import ConfigError
    from privfed.transport.base import make_transport

    config = tiny_config(**{"transport.kind": "flower-deployment"})
    with pytest.raises(ConfigError, match="only inside privfed's Flower ServerApp"):
        make_transport("flower-deployment", nodes=[], config=config)


@pytest.mark.slow
def test_flower_simulation_reports_the_nodes_record_level_epsilon(tmp_path: Path) -> None:
    """Under record-level DP each virtual node keeps its own ledger (node-local policy) and reports its
    epsilon; metrics.jsonl's client_record_epsilon_max is the largest, and it never exceeds what the
    server accounts for the same partition (the nodes hold exactly the partition's data here)."""
    base = {
        "server.rounds": 2,
        "privacy.mode": "sample",
        "privacy.delta": 1e-3,
        "privacy.sample.noise_multiplier": 1.0,
        "transport.kind": "flower-simulation",
        "transport.reply_timeout": 120.0,
    }
    summary = run_experiment(tiny_config(**base), tmp_path / "flower", quiet=True)
    assert summary["completed"]
    records = _records(tmp_path / "flower")
    reported = [r["client_record_epsilon_max"] for r in records]
    assert all(e > 0 for e in reported) and reported == sorted(reported)  # spent epsilon only grows
    for record, epsilon in zip(records, reported, strict=True):
        assert epsilon <= record["epsilon_sample_max"] * (1 + 1e-6)
