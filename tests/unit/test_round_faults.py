"""Faults and bad input on the in-process transport: who answered, who was dropped or rejected, the wait.

A wrapping transport corrupts or withholds chosen clients' replies as a faulty or
malicious network would; the server must count them (``RoundResult`` and
``metrics.jsonl``), never aggregate them, and keep running.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privfed.adapters import AdapterLayout
from privfed.client.node import ClientNode
from privfed.client.trainer import LocalResult
from privfed.config import SecAggConfig
from privfed.server import FedAvg, FederatedServer
from privfed.transport import ClientUpdate, Exchange, Reply
from privfed.transport.simulation import SimulationTransport, seeded_dropouts
from tests.conftest import tiny_config
from tests.fakes import ScriptedTransport

DIM = 6


class StubTrainer:
    """Local training replaced by a delta of ``(client id + 1) / 10`` in every coordinate (``data`` is the id)."""

    def __init__(self, sleep: Mapping[int, float] | None = None) -> None:
        self.sleep = dict(sleep or {})

    def train(self, *, global_vector: np.ndarray, data: Any, seed: int) -> LocalResult:
        time.sleep(self.sleep.get(int(data), 0.0))
        return LocalResult(
            delta=np.full(global_vector.size, (float(data) + 1.0) / 10, np.float32),
            num_examples=4,
            train_loss=0.5,
            steps=1,
        )


def make_nodes(n: int, trainer: StubTrainer | None = None) -> list[ClientNode]:
    trainer = trainer or StubTrainer()
    return [ClientNode(client_id=i, trainer=trainer, data=i, seed=0) for i in range(n)]  # type: ignore[arg-type]


def make_server(n: int, *, per_round: int | None = None, secagg: bool = False) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (DIM,))]),
        global_vector=np.zeros(DIM, np.float32),
        strategy=FedAvg(),
        num_clients=n,
        clients_per_round=per_round or n,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True) if secagg else None,
    )


def _with_delta(raw: bytes, delta: np.ndarray) -> bytes:
    u = ClientUpdate.from_bytes(raw)
    return ClientUpdate(
        round=u.round, client_id=u.client_id, num_examples=u.num_examples, train_loss=u.train_loss, delta=delta
    ).to_bytes()


def _nan(raw: bytes) -> bytes:
    delta = ClientUpdate.from_bytes(raw).delta.copy()
    delta[1] = np.nan
    return _with_delta(raw, delta)


def _inf(raw: bytes) -> bytes:
    delta = ClientUpdate.from_bytes(raw).delta.copy()
    delta[0] = -np.inf
    return _with_delta(raw, delta)


#: Bad replies a client (or the network) may send in a plain round, each rejected by the server.
CORRUPT: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"\x00not a privfed message",
    "truncated": lambda raw: raw[: len(raw) // 2],
    "nan": _nan,
    "inf": _inf,
    "wrong-shape": lambda raw: _with_delta(raw, ClientUpdate.from_bytes(raw).delta[:-1]),
    "oversized": lambda raw: _with_delta(raw, np.zeros(DIM * 10_000, np.float32)),
    "trailing-megabyte": lambda raw: raw + bytes(1 << 20),
}


class FaultyTransport:
    """Wraps a transport: ``corrupt[client](reply)`` replaces a reply, ``silent`` clients never answer."""

    def __init__(
        self,
        inner: Any,
        *,
        corrupt: Mapping[int, Callable[[bytes], bytes]] | None = None,
        silent: set[int] | frozenset[int] = frozenset(),
        stages: tuple[str, ...] = ("train",),
    ) -> None:
        self.inner, self.corrupt, self.silent, self.stages = inner, dict(corrupt or {}), silent, stages

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        got: Exchange = self.inner.exchange(messages, round=round, stage=stage, on_reply=on_reply)
        if stage not in self.stages:
            return got
        replies = []
        for r in got.replies:
            if r.sender in self.silent:
                continue
            bad = self.corrupt.get(r.sender)
            replies.append(Reply(r.sender, bad(r.data)) if bad is not None else r)
        up = sum(len(r.data) for r in replies)
        return Exchange(tuple(replies), got.bytes_down, up, seconds_waiting=got.seconds_waiting)


@pytest.mark.parametrize("fault", sorted(CORRUPT))
def test_a_bad_reply_is_rejected_counted_and_never_aggregated(fault: str) -> None:
    server = make_server(5)
    transport = FaultyTransport(SimulationTransport(nodes=make_nodes(5)), corrupt={2: CORRUPT[fault]}, silent={4})
    result = server.run_round(1, transport)
    assert (len(result.cohort), result.answered, result.unanswered) == (5, 4, 1)
    assert result.num_clients == 3 and result.rejected_clients == 1 and result.rejected_updates == 1
    assert result.answered == result.num_clients + result.rejected_clients
    # uniform mean over clients 0, 1, 3 only (deltas 0.1, 0.2, 0.4): the bad and the silent client are not in it
    np.testing.assert_allclose(server.global_vector, np.full(DIM, 7 / 30), rtol=1e-6)
    # the server keeps running: the next round averages everyone who answers properly
    nxt = server.run_round(2, SimulationTransport(nodes=make_nodes(5)))
    assert nxt.num_clients == 5 and nxt.unanswered == 0 and nxt.rejected_clients == 0


def test_plain_round_counts_add_up_and_the_wait_is_measured() -> None:
    server = make_server(8, per_round=5)
    result = server.run_round(
        1, SimulationTransport(nodes=make_nodes(8, StubTrainer(sleep={c: 0.02 for c in range(8)})))
    )
    assert len(result.cohort) == 5 and result.answered == 5 and result.unanswered == 0
    assert result.num_clients == 5 and result.rejected_clients == 0
    # five clients answered one after another, each after 20 ms
    assert 0.1 <= result.seconds_waiting < 5.0


def test_a_client_slower_than_the_reply_timeout_is_dropped() -> None:
    server = make_server(4)
    slow = StubTrainer(sleep={1: 0.5})
    started = time.perf_counter()
    result = server.run_round(1, SimulationTransport(nodes=make_nodes(4, slow), reply_timeout=0.2))
    assert result.unanswered == 1 and result.answered == 3 and result.num_clients == 3
    np.testing.assert_allclose(server.global_vector, np.full(DIM, (1 + 3 + 4) / 30), rtol=1e-6)
    assert result.seconds_waiting >= 0.5 and time.perf_counter() - started < 5.0
    # without a timeout the same client is waited for
    server = make_server(4)
    assert server.run_round(1, SimulationTransport(nodes=make_nodes(4, slow))).num_clients == 4


def test_secure_round_counts_dropouts_and_rejections() -> None:
    server = make_server(8, secagg=True)
    dropouts = seeded_dropouts(seed=2, rate=0.08)  # this seed: one drops early, one after sending its input
    result = server.run_round(1, SimulationTransport(nodes=make_nodes(8), dropouts=dropouts))
    assert result.aborted is None
    assert len(result.cohort) == result.answered + result.unanswered == 8
    # a SecAgg+ contributor that drops at the last stage is unanswered, yet its input is in the sum
    assert (result.unanswered, result.dropped_clients, result.num_clients) == (2, 1, 7)
    assert result.rejected_clients == 0

    # a corrupted masked input (stage collect) is refused by the server: rejected, not a contributor
    server = make_server(6, secagg=True)
    transport = FaultyTransport(
        SimulationTransport(nodes=make_nodes(6)), corrupt={3: lambda raw: raw[:-7] + b"\x01" * 7}, stages=("collect",)
    )
    result = server.run_round(1, transport)
    assert result.aborted is None and result.rejected_clients == 1 and result.unanswered == 0
    assert result.num_clients == 5 and result.answered == 6
    np.testing.assert_allclose(server.global_vector, np.full(DIM, (1 + 2 + 3 + 5 + 6) / 50), atol=1e-3)
    assert result.seconds_waiting > 0


def test_the_wait_is_summed_over_the_exchanges_of_a_round() -> None:
    class Timed(ScriptedTransport):
        def exchange(self, messages: Mapping[int, bytes], **kw: Any) -> Exchange:
            got = super().exchange(messages, **kw)
            return Exchange(got.replies, got.bytes_down, got.bytes_up, seconds_waiting=1.25)

    server = make_server(5, per_round=3)
    result = server.run_round(
        1, Timed(lambda cohort: [ClientUpdate(1, c, 4, 0.5, np.ones(DIM, np.float32)).to_bytes() for c in cohort])
    )
    assert result.seconds_waiting == 1.25 and result.answered == 3 and result.rejected_clients == 0
    # a transport that does not measure (the scripted one) reports 0; a cohort too small for SecAgg sends nothing
    assert make_server(5, per_round=3).run_round(1, ScriptedTransport(lambda c: [])).seconds_waiting == 0.0
    tiny = make_server(2, secagg=True).run_round(1, SimulationTransport(nodes=make_nodes(2)))
    assert tiny.aborted and (tiny.answered, tiny.unanswered, tiny.rejected_clients) == (0, 0, 0)


def test_metrics_jsonl_records_participation_of_each_round(tmp_path: Path) -> None:
    from privfed.experiments.runner import run_experiment

    config = tiny_config(**{"server.rounds": 3, "server.clients_per_round": 4})
    bad = {c: CORRUPT["nan"] for c in range(6) if c % 2 == 0}  # every even client sends NaN
    run_experiment(
        config, tmp_path / "run", quiet=True, transport_hook=lambda t: FaultyTransport(t, corrupt=bad, silent={1})
    )
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3  # the server kept running
    for r in records:
        assert r["clients_sampled"] == 4 == r["clients_answered"] + r["clients_dropped"]
        assert r["clients_answered"] == r["num_clients"] + r["clients_rejected"]
        assert r["clients_rejected"] == r["rejected_updates"]
        assert r["seconds_waiting_slowest"] > 0
    # the round's cohort, from the seed: the even members are rejected, client 1 is dropped
    from privfed.server import sample_cohort

    for r in records:
        cohort = [int(c) for c in sample_cohort(seed=3, round=r["round"], num_clients=6, clients_per_round=4)]
        assert r["clients_rejected"] == sum(1 for c in cohort if c % 2 == 0)
        assert r["clients_dropped"] == (1 if 1 in cohort else 0)
