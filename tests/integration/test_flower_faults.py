"""Faults on Flower's Simulation Engine: a client past the reply timeout, clients sending bad replies.

Faults are injected by privfed's ClientApp from ``PRIVFED_TEST_FAULTS`` (a test-only hook,
see :mod:`privfed.transport.flower.client_app`), which the Ray workers inherit. The same
run in process, with the same clients silenced or corrupted by a wrapping transport,
gives the reference adapter: the bad replies were never averaged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

from conftest import tiny_config
from safetensors.numpy import load_file

from privfed.experiments.runner import run_experiment
from privfed.server import sample_cohort
from privfed.transport import Exchange, Reply

REPLY_TIMEOUT = 5.0
SLEEP = 10.0
# Cohorts (seed 3, 4 of 6): round 1 = [0, 1, 2, 4], round 2 = [0, 2, 3, 5].
FAULTS = [
    {"client": 1, "round": 1, "action": "sleep", "seconds": SLEEP},  # never answers in time
    {"client": 2, "action": "reply", "reply": "nan"},  # every round
    {"client": 4, "round": 1, "action": "reply", "reply": "oversized"},
    {"client": 3, "round": 2, "action": "reply", "reply": "wrong-shape"},
    {"client": 5, "round": 2, "action": "reply", "reply": "garbage"},
]


class _SameFaultsInProcess:
    """The reference: the same clients silenced or garbled on the in-process transport."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def exchange(
        self, messages: Mapping[int, bytes], *, round: int, stage: str, on_reply: Callable[[int], None] | None = None
    ) -> Exchange:
        got: Exchange = self.inner.exchange(messages, round=round, stage=stage, on_reply=on_reply)
        bad = {(r["client"], r.get("round", round)) for r in FAULTS}
        replies = tuple(
            Reply(r.sender, b"garbage") if (r.sender, round) in bad else r
            for r in got.replies
            if not (r.sender == 1 and round == 1)
        )
        return Exchange(replies, got.bytes_down, sum(len(r.data) for r in replies))


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # about 30 s on 2 cores (Ray start-up, model load, a 5 s timeout)
def test_flower_simulation_drops_a_timed_out_client_and_rejects_bad_replies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"server.rounds": 2, "server.clients_per_round": 4, "server.weighting": "uniform"}
    assert [int(c) for c in sample_cohort(seed=3, round=1, num_clients=6, clients_per_round=4)] == [0, 1, 2, 4]
    assert [int(c) for c in sample_cohort(seed=3, round=2, num_clients=6, clients_per_round=4)] == [0, 2, 3, 5]
    monkeypatch.setenv("PRIVFED_TEST_FAULTS", json.dumps(FAULTS))
    flower = tiny_config(**base, **{"transport.kind": "flower-simulation", "transport.reply_timeout": REPLY_TIMEOUT})
    started = time.monotonic()
    summary = run_experiment(flower, tmp_path / "flower", quiet=True)
    seconds = time.monotonic() - started
    monkeypatch.delenv("PRIVFED_TEST_FAULTS")
    assert summary["completed"]  # the server kept running
    r1, r2 = _records(tmp_path / "flower")
    print(f"flower simulation with faults: {seconds:.1f} s; rounds {r1['seconds']:.2f} s, {r2['seconds']:.2f} s")
    # round 1: client 1 timed out (dropped); 2 (NaN) and 4 (oversized) rejected; only 0 averaged
    assert (r1["clients_sampled"], r1["clients_answered"], r1["clients_dropped"]) == (4, 3, 1)
    assert (r1["clients_rejected"], r1["rejected_updates"], r1["num_clients"]) == (2, 2, 1)
    # the exchange waited for the timeout, not for the sleeping client
    assert REPLY_TIMEOUT <= r1["seconds_waiting_slowest"] < REPLY_TIMEOUT + 2.0
    assert r1["seconds"] < SLEEP
    # round 2: 2 (NaN), 3 (wrong shape), 5 (garbage) rejected; everyone answered in time
    assert (r2["clients_sampled"], r2["clients_answered"], r2["clients_dropped"]) == (4, 4, 0)
    assert (r2["clients_rejected"], r2["num_clients"]) == (3, 1)
    assert r2["seconds_waiting_slowest"] < REPLY_TIMEOUT

    run_experiment(tiny_config(**base), tmp_path / "ref", quiet=True, transport_hook=_SameFaultsInProcess)
    ref = _records(tmp_path / "ref")
    for a, b in zip(ref, (r1, r2), strict=True):
        for key in ("num_clients", "clients_dropped", "clients_rejected", "train_loss", "eval_accuracy"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), key
    want = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "flower" / "adapter" / "adapter_model.safetensors"))
    assert sorted(want) == sorted(got) and want
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
