"""Regression tests for the attacks of an independent SecAgg review (S1-S6).

Each attack recovered a client's exact input (or aborted a round) on the code before
the fix; here it runs against today's protocol and must fail: refused, rejected or
leaving nothing to subtract.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

import numpy as np
import pytest

from privfed.client.node import ClientNode
from privfed.client.stages import AppendMetricsStage, FixedPointStage, UploadPipeline
from privfed.client.trainer import LocalResult
from privfed.errors import ProtocolError
from privfed.secagg import KeyedRandom, SecAggAborted, SecAggClient, SecAggServer, run_secagg_round, shamir
from privfed.secagg.client import check_threshold
from privfed.secagg.crypto import MaskAccumulator, sign
from privfed.secagg.driver import DropoutPlan
from privfed.secagg.graph import harary_graph
from privfed.secagg.keys import pairwise_mask_key, self_mask_key
from privfed.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SetupRequest,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from privfed.transport.messages import SecureRoundRequest


def keyed(*parts: object) -> KeyedRandom:
    return KeyedRandom(hashlib.sha256(repr(parts).encode()).digest())


def setup(
    rnd: int, cid: int, session: bytes, cohort: tuple[int, ...], degree: int, t: int, bits: int, dim: int
) -> bytes:
    return SetupRequest(rnd, cid, session, cohort, degree, bytes(16), t, bits, dim).to_bytes()


# ---------------------------------------------------------------------------------------
# S1: a server that gives a client no (or one) neighbour and threshold 1.


def test_check_threshold_refuses_t1_and_tiny_neighbourhoods() -> None:
    for threshold, holders in [(1, 1), (1, 2), (2, 2), (1, 3)]:
        with pytest.raises(ProtocolError, match=r"too small|at least 2"):
            check_threshold(threshold, holders=holders)
    check_threshold(2, holders=3)  # the smallest accepted round: 2 neighbours, t = 2


@pytest.mark.parametrize(("cohort", "degree", "t"), [((7,), 0, 1), ((3, 7), 1, 1), ((3, 7), 1, 2), ((3, 7, 9), 2, 1)])
def test_zero_neighbour_attack_is_refused_at_setup(cohort: tuple[int, ...], degree: int, t: int) -> None:
    # Before the fix: SetupRequest(neighbours=(), threshold=1) was accepted, the seed "share"
    # was the seed itself, and the server recovered the exact input.
    x = np.arange(8, dtype=np.uint32)
    client = SecAggClient(client_id=7, round=3, values=x, random=keyed("victim"))
    with pytest.raises(ProtocolError):
        client.step(setup(3, 7, bytes(range(16)), cohort, degree, t, 16, 8))
    assert client.stage == "setup" and client.setup is None
    # Nothing was masked or shared, so later steps of the attack have nothing to act on.
    with pytest.raises(ProtocolError, match="expected SetupRequest"):
        client.step(KeyDirectory(3, 7, ()).to_bytes())


# ---------------------------------------------------------------------------------------
# S2: different neighbour views for different clients.


def asymmetric_views_attack() -> tuple[bool, list[str]]:
    """The reviewer's attack with today's messages: V is shown a small round (V, u, w1; t = 2),
    everyone else a big one (V, u, w1, w2, w3; t = 3). Every client's own threshold check
    passes. Returns (V's input recovered, the refusals met on the way)."""
    bits, dim, rnd, session = 16, 8, 5, b"S" * 16
    V, u, w1, w2, w3 = 0, 1, 2, 3, 4
    small, big = (V, u, w1), (V, u, w1, w2, w3)
    views = {V: (small, 2), u: (big, 3), w1: (big, 3), w2: (big, 3), w3: (big, 3)}
    rng = np.random.default_rng(1)
    inputs = {c: rng.integers(0, 2**bits, dim, dtype=np.uint32) for c in views}
    clients = {c: SecAggClient(client_id=c, round=rnd, values=inputs[c], random=keyed("asym", c)) for c in views}
    refusals: list[str] = []

    def step(c: int, message: bytes) -> bytes | None:
        try:
            return clients[c].step(message)
        except ProtocolError as exc:
            refusals.append(f"{c}: {exc}")
            return None

    adv = {}
    for c, (cohort, t) in views.items():
        reply = step(c, setup(rnd, c, session, cohort, len(cohort) - 1, t, bits, dim))
        assert reply is not None  # every client's local check passes
        adv[c] = AdvertiseKeys.from_bytes(reply)
    # The graphs the attack needs: V <-> u, u <-> w1, w2, w3.
    peers = {V: (u,), u: (V, w1, w2, w3), w1: (u, w2, w3), w2: (u, w1, w3), w3: (u, w1, w2)}
    sk = {}
    for c in views:
        reply = step(c, KeyDirectory(rnd, c, tuple(adv[p] for p in peers[c])).to_bytes())
        if reply is not None:
            sk[c] = ShareKeys.from_bytes(reply)
    masked = {}
    for c in sk:
        inbox = tuple((s, ct) for s in sorted(sk) for d, ct in sk[s].ciphertexts if d == c)
        reply = step(c, ShareDelivery(rnd, c, inbox).to_bytes())
        if reply is not None:
            masked[c] = MaskedInput.from_bytes(reply).masked
    if V not in masked or u not in sk:
        return False, refusals

    def ask(c: int, surv: set[int], drop: set[int]) -> UnmaskResponse | None:
        reply = step(c, UnmaskRequest(rnd, c, tuple(sorted(surv)), tuple(sorted(drop))).to_bytes())
        return None if reply is None else UnmaskResponse.from_bytes(reply)

    rV, ru = ask(V, {V, u}, set()), ask(u, {V, u, w1}, set())
    rw = [ask(w, {w1, w2, w3}, {u}) for w in (w1, w2, w3)]
    if rV is None or ru is None or any(r is None for r in rw):
        return False, refusals
    seed_v = shamir.combine(
        {V + 1: dict(rV.seed_shares)[V], u + 1: dict(ru.seed_shares)[V]}, threshold=2, secret_bytes=32
    )
    key_u = shamir.combine(
        {w + 1: dict(r.key_shares)[u] for w, r in zip((w1, w2, w3), rw, strict=True) if r is not None},
        threshold=3,
        secret_bytes=32,
    )
    acc = MaskAccumulator(masked[V].copy(), bits=bits)
    acc.subtract(self_mask_key(seed_v, session=session, client_id=V))
    acc.subtract(pairwise_mask_key(key_u, adv[V].mask_key, session=session, a=V, b=u))
    return bool(np.array_equal(acc.reduced(), inputs[V])), refusals


def test_asymmetric_neighbour_views_recover_nothing() -> None:
    # Before the fix this recovered V's exact input with every client's check passing.
    recovered, refusals = asymmetric_views_attack()
    assert not recovered
    # V refuses u's advertisement and u refuses V's: they signed different global setups.
    assert any(r.startswith("0: client 1 signed another round setup") for r in refusals)
    assert any(r.startswith("1: client 0 signed another round setup") for r in refusals)


def test_every_client_derives_the_servers_graph_and_refuses_a_foreign_setup_digest() -> None:
    n, k = 1000, 20
    cohort = tuple(range(0, 3 * n, 3))  # ids need not be 0..n-1
    server = SecAggServer(
        round=2, cohort=cohort, degree=k, graph_seed=b"g" * 16, threshold=11, bits=32, dim=4, session=b"s" * 16
    )
    outbox = server.start()
    size = len(outbox[cohort[0]])
    assert size == 9 + 16 + 16 + 4 + 4 + 4 + 8 + 4 + 4 * n  # 4,065 bytes for 1,000 clients
    assert {len(m) for m in outbox.values()} == {size}
    assert all(len(p) == k for p in server.neighbours.values())
    start = time.perf_counter()
    sampled = cohort[::97]
    for cid in sampled:
        client = SecAggClient(client_id=cid, round=2, values=np.zeros(4, np.uint32), random=keyed("big", cid))
        AdvertiseKeys.from_bytes(client.step(outbox[cid]))
        assert client.neighbours == server.neighbours[cid]
    per_client = (time.perf_counter() - start) / len(sampled)
    assert per_client < 0.5  # rebuilding a 1,000-client graph is milliseconds, not seconds


def test_a_setup_with_another_threshold_or_graph_is_caught_by_neighbours_and_server() -> None:
    ids = (0, 1, 2, 3, 4)
    clients = {c: SecAggClient(client_id=c, round=1, values=np.zeros(4, np.uint32), random=keyed("x", c)) for c in ids}
    server = SecAggServer(round=1, cohort=ids, degree=4, threshold=3, bits=32, dim=4, session=b"s" * 16)
    outbox = server.start()
    forged = SetupRequest(1, 4, b"s" * 16, ids, 4, bytes(16), 4, 32, 4).to_bytes()  # client 4: t = 4
    for c in ids:
        reply = clients[c].step(forged if c == 4 else outbox[c])
        if c == 4:
            with pytest.raises(ProtocolError, match="other round parameters"):
                server.receive(reply)
            odd_one = AdvertiseKeys.from_bytes(reply)
        else:
            server.receive(reply)
    directory = KeyDirectory(1, 0, (*(server.keys[p] for p in (1, 2, 3)), odd_one)).to_bytes()
    with pytest.raises(ProtocolError, match="client 4 signed another round setup"):
        clients[0].step(directory)
    assert clients[0].stage == "keys"


def test_graph_derivation_is_deterministic_and_symmetric() -> None:
    for n, k in [(3, 2), (10, 4), (11, 10), (64, 12)]:
        ids = list(range(100, 100 + n))
        graph = harary_graph(ids, degree=k, graph_seed=b"\x07" * 16)
        assert graph == harary_graph(list(reversed(ids)), degree=k, graph_seed=b"\x07" * 16)
        assert all(len(p) == k and c not in p for c, p in graph.items())
        assert all(c in graph[p] for c, peers in graph.items() for p in peers)
    assert harary_graph(range(20), degree=4, graph_seed=b"a" * 16) != harary_graph(
        range(20), degree=4, graph_seed=b"b" * 16
    )
    with pytest.raises(ValueError, match="degree"):
        harary_graph(range(10), degree=3, graph_seed=bytes(16))


# ---------------------------------------------------------------------------------------
# S3: the same round run twice with cohorts that differ by one client.

D, BITS, N = 6, 32, 16


class _DeterministicTrainer:
    def train(self, *, global_vector: Any, data: Any, seed: int) -> LocalResult:
        del global_vector, data
        r = np.random.default_rng(seed)
        return LocalResult(
            delta=r.normal(0, 0.1, D).astype(np.float32), num_examples=10, train_loss=float(r.random()), steps=1
        )


_PIPELINE = UploadPipeline(
    [
        AppendMetricsStage(names=["train_loss"]),
        FixedPointStage(bits=BITS, clip=1.0, extra_clip=10.0, dim=D, extra=1, num_summands=N),
    ]
)


def _secure_round(nodes: dict[int, ClientNode], cohort: list[int], rnd: int) -> tuple[np.ndarray | None, list[str]]:
    server = SecAggServer(
        round=rnd, cohort=cohort, degree=len(cohort) - 1, threshold=len(cohort) // 2 + 1, bits=BITS, dim=D + 1,
        session=np.random.default_rng(rnd).bytes(16),
    )  # fmt: skip
    refusals = []
    out = {
        c: SecureRoundRequest(round=rnd, vector=np.zeros(D, np.float32), stages=_PIPELINE.to_json(), setup=m).to_bytes()
        for c, m in server.start().items()
    }
    try:
        for _ in range(4):
            for c, m in out.items():
                try:
                    reply = nodes[c].handle(m)
                except ProtocolError as exc:
                    refusals.append(str(exc))
                    continue
                assert reply is not None
                server.receive(reply)
            out = server.finish_stage()
    except SecAggAborted:
        return None, refusals
    return server.result, refusals


def test_rerunning_a_secure_round_is_refused_by_every_node() -> None:
    # Before the fix the difference of the two sums decoded to client 0's exact delta.
    nodes = {c: ClientNode(client_id=c, trainer=_DeterministicTrainer(), data=None, seed=123) for c in range(5)}  # type: ignore[arg-type]
    first, refusals = _secure_round(nodes, [0, 1, 2, 3, 4], rnd=7)
    assert first is not None and refusals == []
    assert all(node.last_secure_round == 7 for node in nodes.values())
    second, refusals = _secure_round(nodes, [1, 2, 3, 4], rnd=7)
    assert second is None and len(refusals) == 4
    assert all("already answered secure round 7" in r for r in refusals)
    earlier, refusals = _secure_round(nodes, [1, 2, 3, 4], rnd=6)  # an older round too
    assert earlier is None and len(refusals) == 4
    later, refusals = _secure_round(nodes, [0, 1, 2, 3, 4], rnd=8)
    assert later is not None and refusals == []


def test_a_rebuilt_node_keeps_the_high_water_mark_it_is_given() -> None:
    node = ClientNode(client_id=0, trainer=_DeterministicTrainer(), data=None, seed=1, last_secure_round=9)  # type: ignore[arg-type]
    request = SecureRoundRequest(round=9, vector=np.zeros(D, np.float32), stages=_PIPELINE.to_json(), setup=b"")
    with pytest.raises(ProtocolError, match="already answered secure round 9"):
        node.handle(request.to_bytes())
    assert node.secagg_client is None and node.last_secure_round == 9


# ---------------------------------------------------------------------------------------
# S4: a low-order X25519 key from one client; a failure inside finish_stage.


@pytest.mark.parametrize("field", ["mask_key", "encryption_key"])
def test_a_low_order_key_makes_its_sender_a_rejected_dropout_not_an_abort(field: str) -> None:
    # Before the fix every honest neighbour refused and the round aborted.
    n, bits, dim, bad = 10, 16, 4, 0
    ids = list(range(n))
    server = SecAggServer(round=1, cohort=ids, degree=n - 1, threshold=6, bits=bits, dim=dim, session=b"s" * 16)
    rng = np.random.default_rng(0)
    inputs = {c: rng.integers(0, 2**bits, dim, dtype=np.uint32) for c in ids}
    clients = {c: SecAggClient(client_id=c, round=1, values=inputs[c], random=keyed("lo", c)) for c in ids}

    def tamper(stage: str, direction: str, cid: int, msg: bytes) -> bytes:
        if stage == "advertise" and direction == "up" and cid == bad:
            changes: dict[str, Any] = {field: bytes(32)}
            a = dataclasses.replace(AdvertiseKeys.from_bytes(msg), **changes)
            key = clients[bad]._signing_key
            assert key is not None
            return dataclasses.replace(a, signature=sign(key, a.transcript(b"s" * 16))).to_bytes()
        return msg

    outcome = run_secagg_round(server, clients, tamper=tamper)
    assert outcome.rejected == (bad,) and outcome.refused == ()
    assert outcome.contributors == tuple(ids[1:])
    expected = sum(inputs[c].astype(np.int64) for c in ids[1:]) % 2**bits
    np.testing.assert_array_equal(outcome.result, expected)


@pytest.mark.parametrize("error", [ProtocolError("boom"), RuntimeError("bug")])
def test_any_failure_in_finish_stage_leaves_the_server_aborted(
    error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [0, 1, 2, 3]
    server = SecAggServer(round=1, cohort=ids, degree=3, threshold=3, bits=32, dim=4, session=b"s" * 16)
    clients = {c: SecAggClient(client_id=c, round=1, values=np.zeros(4, np.uint32), random=keyed("f", c)) for c in ids}

    def failing() -> None:
        raise error

    monkeypatch.setattr(server, "_unmask", failing)
    with pytest.raises(SecAggAborted if isinstance(error, ProtocolError) else RuntimeError):
        run_secagg_round(server, clients)
    assert server.stage == "aborted" and server.result is None
    with pytest.raises(ProtocolError, match="no stage to finish in stage 'aborted'"):
        server.finish_stage()


# ---------------------------------------------------------------------------------------
# S6: shares left out name the share, not a culprit.


def test_shares_left_out_name_the_share_and_suspects_stays_an_alias() -> None:
    ids = list(range(7))
    server = SecAggServer(round=1, cohort=ids, degree=6, threshold=4, bits=32, dim=4, session=b"s" * 16)
    clients = {c: SecAggClient(client_id=c, round=1, values=np.zeros(4, np.uint32), random=keyed("l", c)) for c in ids}
    honest_holder, dealer = 2, 0

    def tamper(stage: str, direction: str, cid: int, msg: bytes) -> bytes:
        # What a malicious dealer sealing a bad share looks like: the honest holder holds,
        # and faithfully reveals, a share that does not fit the others.
        if stage == "unmask" and direction == "down" and cid == honest_holder:
            held = clients[honest_holder]._held_seed_shares
            held[dealer] = ((int.from_bytes(held[dealer], "big") + 1) % shamir.PRIME).to_bytes(
                shamir.SHARE_BYTES, "big"
            )
        return msg

    outcome = run_secagg_round(server, clients, tamper=tamper, dropouts=DropoutPlan())
    assert outcome.contributors == tuple(ids)
    assert server.shares_left_out == ((honest_holder, dealer, "seed"),)
    assert server.suspects == (honest_holder,)


# ---------------------------------------------------------------------------------------
# S5: the session of a secure round is fresh per execution; the results do not depend on it.


def test_each_execution_of_a_round_draws_a_fresh_session_and_results_match(monkeypatch: pytest.MonkeyPatch) -> None:
    import privfed.server.server as server_module
    from privfed.adapters import AdapterLayout
    from privfed.config import SecAggConfig
    from privfed.server import FedAvg, FederatedServer
    from privfed.transport.simulation import SimulationTransport

    sessions: list[bytes] = []

    class Recording(SecAggServer):
        def __init__(self, **kwargs: Any) -> None:
            sessions.append(kwargs["session"])
            super().__init__(**kwargs)

    monkeypatch.setattr(server_module, "SecAggServer", Recording)
    outcomes = []
    for _ in range(2):  # two executions of round 1 (fresh nodes: a restarted simulation)
        nodes = [ClientNode(client_id=i, trainer=_DeterministicTrainer(), data=None, seed=0) for i in range(5)]  # type: ignore[arg-type]
        server = FederatedServer(
            layout=AdapterLayout.from_shapes([("w", (D,))]),
            global_vector=np.zeros(D, np.float32),
            strategy=FedAvg(),
            num_clients=5,
            clients_per_round=5,
            seed=0,
            weighting="uniform",
            secagg=SecAggConfig(enabled=True),
        )
        result = server.run_round(1, SimulationTransport(nodes=nodes))
        assert result.aborted is None and result.num_clients == 5
        outcomes.append((server.global_vector.copy(), result.update_norm))
    assert len(sessions) == 2 and sessions[0] != sessions[1] and all(len(s) == 16 for s in sessions)
    np.testing.assert_array_equal(outcomes[0][0], outcomes[1][0])
    assert outcomes[0][1] == outcomes[1][1]
