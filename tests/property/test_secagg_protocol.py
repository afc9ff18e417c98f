"""SecAgg/SecAgg+ end to end: exact sums under dropouts, aborts below threshold,
rejection of malformed/replayed/out-of-order messages with unchanged state."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from privfed.errors import ProtocolError
from privfed.secagg import (
    DropoutPlan,
    KeyedRandom,
    SecAggAborted,
    SecAggClient,
    SecAggServer,
    run_secagg_round,
)
from privfed.secagg.crypto import mask_dtype
from privfed.secagg.driver import STAGES
from privfed.testing import check_secure_sum_of_survivors
from privfed.testing import strategies as pst


def keyed(*parts: object) -> KeyedRandom:
    return KeyedRandom(hashlib.sha256(repr(parts).encode()).digest())


def make_round(
    n: int, degree: int, threshold: int, bits: int, dim: int, seed: int
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, np.ndarray], dict[int, tuple[int, ...]]]:
    rng = np.random.default_rng(seed)
    ids = [int(c) for c in rng.choice(10_000, size=n, replace=False)]  # ids need not be 0..n-1
    dtype = mask_dtype(bits)
    inputs = {c: (rng.integers(0, 2**bits, size=dim, dtype=np.uint64)).astype(dtype) for c in ids}
    server = SecAggServer(
        round=7,
        cohort=ids,
        degree=degree,
        graph_seed=keyed("graph", seed)(16),
        threshold=threshold,
        bits=bits,
        dim=dim,
        session=keyed("session", seed)(16),
    )
    graph = server.neighbours
    clients = {c: SecAggClient(client_id=c, round=7, values=inputs[c], random=keyed("client", seed, c)) for c in ids}
    return server, clients, inputs, graph


@settings(max_examples=60)
@given(cohort=pst.secagg_cohorts(), data=st.data())
def test_result_is_the_exact_modular_sum_of_survivors_or_the_round_aborts(
    cohort: pst.SecAggCohort, data: st.DataObject
) -> None:
    """privfed.testing's checker runs the round with the drawn dropouts and compares it with an independent
    model of the protocol (``expected_survivors``): the contributors are exactly the model's survivors and
    the result exactly their modular sum, or the round aborts (server left without a result) exactly when
    the model says it must."""
    inputs = data.draw(pst.secagg_inputs(cohort))
    plan = data.draw(pst.dropout_plans(cohort.client_ids))
    outcome = check_secure_sum_of_survivors(
        inputs,
        bits=cohort.bits,
        dropouts=plan,
        degree=cohort.degree,
        threshold=cohort.threshold,
        seed=data.draw(st.integers(0, 2**32)),
    )
    event("aborted" if outcome is None else "summed")


def test_classic_secagg_below_threshold_aborts_before_unmasking() -> None:
    server, clients, _, graph = make_round(6, 5, 4, 32, 10, seed=1)
    ids = sorted(graph)
    plan = DropoutPlan({"collect": frozenset(ids[:3])})  # 3 of 6 left < t = 4
    with pytest.raises(SecAggAborted, match="threshold is 4"):
        run_secagg_round(server, clients, dropouts=plan)
    assert server.stage == "aborted" and server.responses == {} and server._requests == {}
    with pytest.raises(ProtocolError):
        server.finish_stage()


def test_server_never_receives_both_secrets_of_any_client() -> None:
    server, clients, inputs, graph = make_round(12, 4, 3, 32, 64, seed=5)
    ids = sorted(graph)
    plan = DropoutPlan({"collect": frozenset(ids[:2]), "unmask": frozenset(ids[2:3])})
    outcome = run_secagg_round(server, clients, dropouts=plan)
    seeds_revealed = {c for r in server.responses.values() for c, _ in r.seed_shares}
    keys_revealed = {c for r in server.responses.values() for c, _ in r.key_shares}
    assert not seeds_revealed & keys_revealed
    assert keys_revealed == set(ids[:2])  # only dropped clients' mask keys
    # For a survivor, what the server holds after removing its self mask is still
    # masked by pairwise masks it cannot compute: it is not the input.
    from privfed.secagg import shamir
    from privfed.secagg.crypto import MaskAccumulator
    from privfed.secagg.keys import self_mask_key

    survivor = outcome.contributors[0]
    shares = {
        responder + 1: share for responder, r in server.responses.items() for c, share in r.seed_shares if c == survivor
    }
    seed = shamir.combine(shares, threshold=3, secret_bytes=32)
    partial = MaskAccumulator(server.masked[survivor].masked.copy(), bits=32)
    partial.subtract(self_mask_key(seed, session=server.session, client_id=survivor))
    residue = partial.reduced()
    assert not np.array_equal(residue, inputs[survivor])
    assert np.mean(residue == inputs[survivor]) < 0.01


def snapshot(obj: Any) -> Any:
    state = {k: v for k, v in vars(obj).items() if k != "random"}
    return copy.deepcopy(
        {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in state.items()},
    )


def assert_same_state(before: Any, after: Any) -> None:
    assert before.keys() == after.keys()
    for key in before:
        a, b = before[key], after[key]
        if isinstance(a, dict):
            assert a.keys() == b.keys(), key
        else:
            assert repr(a) == repr(b), key


def test_server_rejects_bad_messages_and_keeps_its_state() -> None:
    server, clients, _, _graph = make_round(5, 4, 3, 16, 8, seed=2)
    outbox = server.start()
    previous_replies: list[bytes] = []
    for _stage in STAGES:
        replies = [clients[c].step(m) for c, m in outbox.items()]
        server.receive(replies[0])
        bad = [
            replies[0],  # duplicate / replay within the stage
            replies[1][:-1],  # truncated
            replies[1] + b"\x00",  # trailing byte
            b"\xff" + replies[1][1:],  # unknown tag
            replies[1][:1] + (99).to_bytes(4, "little") + replies[1][5:],  # wrong round
            replies[1][:5] + (424242).to_bytes(4, "little") + replies[1][9:],  # unknown client
            *previous_replies[1:3],  # out of order: a previous stage's messages
            b"",
        ]
        for message in bad:
            before = snapshot(server)
            with pytest.raises(ProtocolError):
                server.receive(message)
            assert_same_state(before, snapshot(server))
        for reply in replies[1:]:
            server.receive(reply)
        previous_replies = replies
        outbox = server.finish_stage()
    assert server.result is not None


@settings(max_examples=200)
@given(data=st.data())
def test_fuzzed_messages_only_raise_protocol_error_and_leave_state(data: st.DataObject) -> None:
    server, clients, _, _graph = make_round(4, 3, 3, 16, 4, seed=3)
    outbox = server.start()
    stop = data.draw(st.sampled_from(STAGES))
    for stage in STAGES:
        replies = [clients[c].step(m) for c, m in outbox.items()]
        if stage == stop:
            victim = data.draw(st.sampled_from(replies))
            position = data.draw(st.integers(0, max(0, len(victim) - 1)))
            mutated = bytearray(victim)
            if mutated:
                mutated[position] ^= data.draw(st.integers(1, 255))
            cut = data.draw(st.integers(0, len(mutated)))
            candidate = bytes(mutated[:cut]) if data.draw(st.booleans()) else bytes(mutated)
            before = snapshot(server)
            try:
                server.receive(candidate)
            except ProtocolError:
                assert_same_state(before, snapshot(server))
            return
        for reply in replies:
            server.receive(reply)
        outbox = server.finish_stage()


def test_client_rejects_out_of_order_and_misaddressed_messages() -> None:
    server, clients, _, graph = make_round(4, 3, 3, 32, 4, seed=4)
    ids = sorted(graph)
    setup = server.start()
    client = clients[ids[0]]
    for message in (setup[ids[1]], b"junk", setup[ids[0]][:-2]):
        before = snapshot(client)
        with pytest.raises(ProtocolError):
            client.step(message)
        assert_same_state(before, snapshot(client))
    for c, m in setup.items():
        server.receive(clients[c].step(m))
    directory = server.finish_stage()
    before = snapshot(client)
    with pytest.raises(ProtocolError):
        client.step(setup[ids[0]])  # replay of an earlier stage
    assert_same_state(before, snapshot(client))
    client.step(directory[ids[0]])
    assert client.stage == "shares"


def test_client_refuses_to_reveal_both_secrets_of_a_peer() -> None:
    from privfed.secagg.messages import UnmaskRequest

    server, clients, _, graph = make_round(4, 3, 3, 32, 4, seed=6)
    outbox = server.start()
    for _ in range(3):
        for c, m in outbox.items():
            server.receive(clients[c].step(m))
        outbox = server.finish_stage()
    me = sorted(graph)[0]
    peer = sorted(graph)[1]
    evil = UnmaskRequest(7, me, survivors=(me, peer), dropped=(peer,)).to_bytes()
    with pytest.raises(ProtocolError, match="both survivor and dropped"):
        clients[me].step(evil)
    assert clients[me].stage == "unmask"


def test_rounds_replay_bit_for_bit_with_keyed_randomness() -> None:
    def transcript() -> list[bytes]:
        server, clients, _, _ = make_round(6, 4, 3, 32, 16, seed=9)
        out: list[bytes] = []
        outbox = server.start()
        for _ in STAGES:
            for c, m in sorted(outbox.items()):
                reply = clients[c].step(m)
                out += [m, reply]
                server.receive(reply)
            outbox = server.finish_stage()
        return out

    assert transcript() == transcript()
