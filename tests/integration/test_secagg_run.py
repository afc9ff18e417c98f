"""Federated runs with secure aggregation switched on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from privfed.errors import ConfigError
from privfed.experiments import resume_experiment, run_experiment
from tests.conftest import tiny_config


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def secure(**extra: object) -> object:
    base = {
        "secagg.enabled": True,
        "server.weighting": "uniform",
        "server.clients_per_round": 5,
        "secagg.clip": 0.5,
    }
    return tiny_config(**{**base, **extra})


def test_secagg_round_matches_plain_fedavg_up_to_quantization(tmp_path: Path) -> None:
    run_experiment(
        tiny_config(**{"server.weighting": "uniform", "server.clients_per_round": 5}), tmp_path / "p", quiet=True
    )
    masked = run_experiment(secure(), tmp_path / "s", quiet=True)
    p, s = records(tmp_path / "p"), records(tmp_path / "s")
    for a, b in zip(p, s, strict=True):
        assert b["num_clients"] == 5 and b["secagg_aborted"] is None
        assert b["update_norm"] == pytest.approx(a["update_norm"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
        assert b["eval_loss"] == pytest.approx(a["eval_loss"], abs=1e-4)
        # keys, encrypted shares and unmasking cost extra bytes on top of the vector
        assert b["bytes_up"] > a["bytes_up"]
    assert masked["secagg"] is True and masked["secagg_aborted_rounds"] == 0


def test_secagg_with_dropouts_is_reproducible_and_resumable(tmp_path: Path) -> None:
    config = secure(
        **{
            "secagg.dropout_rate": 0.08,
            "server.rounds": 4,
            "partition.num_clients": 8,
            "server.clients_per_round": 7,
            "secagg.degree": 4,
        }
    )
    run_experiment(config, tmp_path / "a", quiet=True)
    run_experiment(config, tmp_path / "b", quiet=True, stop_after_round=2)
    resume_experiment(tmp_path / "b", quiet=True)

    def strip(rs: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]

    a = strip(records(tmp_path / "a"))
    assert a == strip(records(tmp_path / "b"))
    assert sum(int(r["dropped_clients"]) for r in a) > 0  # dropouts really happened
    for r in a:
        assert int(r["num_clients"]) + int(r["dropped_clients"]) + int(r["rejected_updates"]) == 7


def test_aborted_round_keeps_the_global_adapter(tmp_path: Path) -> None:
    config = secure(**{"secagg.dropout_rate": 0.6, "server.rounds": 2})
    run_experiment(config, tmp_path / "r", quiet=True)
    rs = records(tmp_path / "r")
    aborted = [r for r in rs if r["secagg_aborted"]]
    assert aborted, "a 60% dropout rate per stage must abort some round of 5 clients with threshold 3"
    for r in aborted:
        assert r["num_clients"] == 0 and r["update_norm"] == 0.0 and "threshold" in str(r["secagg_aborted"])


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({"server.weighting": "examples"}, "server.weighting = 'uniform'"),
        ({"server.clients_per_round": 2}, "clients_per_round >= 3"),
        ({"secagg.degree": 3}, "secagg.degree must be even"),
        ({"secagg.threshold": 9}, "secagg.threshold must be between 2 and secagg.degree + 1 (5)"),
        ({"secagg.bits": 3}, "secagg.bits must be at least 4 to sum 5 clients"),
    ],
)
def test_secagg_config_errors(extra: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        secure(**extra)
    assert fragment in str(info.value)


def test_server_sees_only_masked_vectors(tmp_path: Path) -> None:
    """The masked uploads the server stores are far from the clients' encoded updates."""
    from privfed.compression import FixedPointCodec
    from privfed.secagg import SecAggClient, SecAggServer, run_secagg_round

    rng = np.random.default_rng(0)
    codec = FixedPointCodec(bits=32, clip=1.0, num_summands=5)
    updates = {c: rng.normal(0, 0.01, size=500) for c in range(5)}
    encoded = {c: codec.encode(u, rng=rng) for c, u in updates.items()}
    server = SecAggServer(
        round=1,
        cohort=range(5),
        degree=4,
        threshold=3,
        bits=32,
        dim=500,
        session=bytes(16),
    )
    outcome = run_secagg_round(server, {c: SecAggClient(client_id=c, round=1, values=encoded[c]) for c in range(5)})
    for c in range(5):
        seen = codec.decode_sum(server.masked[c].masked)
        assert np.abs(seen - updates[c]).mean() > 100 * np.abs(updates[c]).mean()
    total = codec.decode_sum(outcome.result)
    np.testing.assert_allclose(total, sum(updates.values()), atol=5 / codec.scale)
