"""SecAgg under hostile input: a server that splits unmask requests, altered messages,
clients that sign bad shares. An accepted round's sum must be *right*; otherwise the
round aborts with a typed error. Each test here failed on the unauthenticated protocol."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from privfed.errors import ProtocolError
from privfed.secagg import KeyedRandom, SecAggAborted, SecAggClient, SecAggServer, run_secagg_round, shamir
from privfed.secagg.crypto import MaskAccumulator, mask_dtype
from privfed.secagg.driver import STAGES, DropoutPlan
from privfed.secagg.keys import pairwise_mask_key, self_mask_key
from privfed.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    SetupRequest,
    UnmaskRequest,
    UnmaskResponse,
    decode,
)

HEADER = 9  # tag (1) + round (4) + client id (4)


def keyed(*parts: object) -> KeyedRandom:
    return KeyedRandom(hashlib.sha256(repr(parts).encode()).digest())


def complete_round(
    n: int, threshold: int, *, bits: int = 32, dim: int = 8, seed: int = 0, **client_kwargs: Any
) -> tuple[SecAggServer, dict[int, SecAggClient], dict[int, np.ndarray]]:
    ids = list(range(n))
    rng = np.random.default_rng(seed)
    dtype = mask_dtype(bits)
    inputs = {c: rng.integers(0, 2**bits, size=dim, dtype=np.uint64).astype(dtype) for c in ids}
    server = SecAggServer(
        round=1,
        cohort=ids,
        degree=n - 1,
        threshold=threshold,
        bits=bits,
        dim=dim,
        session=keyed("session", seed)(16),
    )
    clients = {
        c: SecAggClient(client_id=c, round=1, values=inputs[c], random=keyed("client", seed, c), **client_kwargs)
        for c in ids
    }
    return server, clients, inputs


def plain_sum(inputs: dict[int, np.ndarray], contributors: tuple[int, ...], bits: int) -> list[int]:
    dim = next(iter(inputs.values())).size
    total = sum((inputs[c].astype(object) for c in contributors), np.zeros(dim, dtype=object)) % 2**bits
    return [int(v) for v in total]


# ---------------------------------------------------------------------------------------
# A malicious server that announces a low threshold and splits its unmask requests.


def split_request_attack(n: int, t: int) -> bool:
    """True if the server recovers client 0's exact input.

    The server runs the first three stages honestly but announces threshold
    ``t``; then it tells ``t`` clients that client 0 survived (they reveal
    shares of its self-mask seed) and the others that it dropped (they reveal
    shares of its mask key), and finally asks every client again with the
    roles swapped.
    """
    server, clients, inputs = complete_round(n, max(2, n // 2 + 1), seed=n * 10 + t)
    server.threshold = t  # what it announces; its own checks would refuse this
    outbox = server.start()
    try:
        for _ in range(3):
            for c, m in outbox.items():
                server.receive(clients[c].step(m))
            outbox = server.finish_stage()
    except ProtocolError:
        return False
    ids, victim = sorted(clients), 0
    others = ids[1:]
    as_survivor = UnmaskRequest(1, 0, tuple(ids), ())
    as_dropped = UnmaskRequest(1, 0, tuple(others), (victim,))
    seed_shares: dict[int, bytes] = {}
    key_shares: dict[int, bytes] = {}
    for group_order in ([others[:t], others[t:]], [others[t:], others[:t]]):
        for kind, group in zip((as_survivor, as_dropped), group_order, strict=True):
            for c in group:
                request = UnmaskRequest(1, c, kind.survivors, kind.dropped).to_bytes()
                try:
                    response = UnmaskResponse.from_bytes(clients[c].step(request))
                except ProtocolError:
                    continue
                for owner, share in response.seed_shares:
                    if owner == victim:
                        seed_shares[c + 1] = share
                for owner, share in response.key_shares:
                    if owner == victim:
                        key_shares[c + 1] = share
    if len(seed_shares) < t or len(key_shares) < t:
        return False
    seed = shamir.combine(dict(list(seed_shares.items())[:t]), threshold=t, secret_bytes=32)
    key = shamir.combine(dict(list(key_shares.items())[:t]), threshold=t, secret_bytes=32)
    unmasked = MaskAccumulator(server.masked[victim].masked.copy(), bits=32)
    unmasked.subtract(self_mask_key(seed, session=server.session, client_id=victim))
    for peer in others:
        pairwise = pairwise_mask_key(key, server.keys[peer].mask_key, session=server.session, a=victim, b=peer)
        unmasked.subtract(pairwise)  # victim 0 < peer: it added the mask
    return bool(np.array_equal(unmasked.reduced(), inputs[victim]))


@pytest.mark.parametrize(("n", "t"), [(5, 1), (5, 2), (7, 3), (9, 4)])
def test_split_unmask_requests_with_a_low_threshold_recover_nothing(n: int, t: int) -> None:
    # Before the fix the attack recovered client 0's exact input in each of these cases.
    assert not split_request_attack(n, t)
    _, clients, _ = complete_round(n, n // 2 + 1)
    setup = SetupRequest(1, 0, bytes(16), tuple(range(n)), n - 1, bytes(16), t, 32, 8).to_bytes()
    with pytest.raises(ProtocolError, match="exceed half of the largest"):
        clients[0].step(setup)
    assert clients[0].stage == "setup"


@pytest.mark.parametrize(("n", "t"), [(5, 3), (7, 4), (9, 5)])
def test_split_unmask_requests_at_the_minimum_threshold_recover_nothing(n: int, t: int) -> None:
    assert not split_request_attack(n, t)


def test_a_client_never_reveals_both_secrets_of_one_owner_whatever_the_order() -> None:
    server, clients, _ = complete_round(5, 3)
    outbox = server.start()
    for _ in range(3):
        for c, m in outbox.items():
            server.receive(clients[c].step(m))
        outbox = server.finish_stage()
    me = clients[4]
    first = UnmaskRequest(1, 4, (1, 2, 3, 4), (0,)).to_bytes()
    swapped = UnmaskRequest(1, 4, (0, 1, 2, 3, 4), ()).to_bytes()
    UnmaskResponse.from_bytes(me.step(first))  # reveals 0's key share
    before = copy.deepcopy(me.revealed)
    with pytest.raises(ProtocolError, match="other secret of clients \\[0\\]"):
        me.step(swapped)
    assert me.revealed == before
    assert UnmaskResponse.from_bytes(me.step(first)).key_shares[0][0] == 0  # a retry is answered alike

    other = clients[3]
    UnmaskResponse.from_bytes(other.step(UnmaskRequest(1, 3, (0, 1, 2, 3, 4), ()).to_bytes()))  # seed first
    with pytest.raises(ProtocolError, match="other secret"):
        other.step(UnmaskRequest(1, 3, (1, 2, 3, 4), (0,)).to_bytes())


# ---------------------------------------------------------------------------------------
# Altered messages: the round either aborts (typed) or releases the right sum.


def flip(data: bytes, position: int, mask: int) -> bytes:
    out = bytearray(data)
    out[position] ^= mask
    return bytes(out)


def run_with(
    server: SecAggServer,
    clients: dict[int, SecAggClient],
    tamper: Callable[[str, str, int, bytes], bytes],
    *,
    dropouts: DropoutPlan | None = None,
) -> tuple[int, ...] | None:
    """Drive the round; on every message the server rejects, check its state did not change.
    Returns the contributors, or None if the round aborted (then no result is held)."""
    receive = server.receive

    def checked_receive(data: bytes) -> None:
        before = snapshot(server)
        try:
            receive(data)
        except ProtocolError:
            assert snapshot(server) == before
            raise

    server.receive = checked_receive  # type: ignore[method-assign]
    try:
        outcome = run_secagg_round(server, clients, dropouts=dropouts, tamper=tamper)
    except SecAggAborted:
        assert server.result is None and server.stage == "aborted"
        return None
    return outcome.contributors


def snapshot(server: SecAggServer) -> str:
    state = {k: v for k, v in sorted(vars(server).items()) if k != "receive"}
    return repr({k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in state.items()}) + repr(
        {c: m.to_bytes() for c, m in server.masked.items()}
    )


def assert_right_or_aborted(
    server: SecAggServer, contributors: tuple[int, ...] | None, inputs: dict[int, np.ndarray], bits: int
) -> None:
    if contributors is None:
        return
    assert server.result is not None
    assert [int(v) for v in server.result] == plain_sum(inputs, contributors, bits)


@pytest.mark.parametrize("direction", ["up", "down"])
def test_one_flipped_bit_in_a_mask_key_never_gives_a_wrong_sum(direction: str) -> None:
    # Before the fix: a wrong sum in 30 of 30 tries (the server used the altered key).
    rng = np.random.default_rng(1)
    for trial in range(30):
        server, clients, inputs = complete_round(5, 3, seed=trial)
        victim = int(rng.integers(5))
        bit = int(rng.integers(256))

        def tamper(stage: str, way: str, cid: int, data: bytes, victim: int = victim, bit: int = bit) -> bytes:
            if stage == "advertise" and way == "up" == direction and cid == victim:
                return flip(data, HEADER + 32 + bit // 8, 1 << bit % 8)  # AdvertiseKeys.mask_key
            if stage == "share" and way == "down" == direction and cid == (victim + 1) % 5:
                entries = list(KeyDirectory.from_bytes(data).entries)
                i = next(i for i, e in enumerate(entries) if e.client_id == victim)
                raw = bytearray(entries[i].mask_key)
                raw[bit // 8] ^= 1 << bit % 8
                entries[i] = AdvertiseKeys(
                    1, victim, entries[i].encryption_key, bytes(raw), *_tail(entries[i])
                )  # the directory one peer receives
                return KeyDirectory(1, cid, tuple(entries)).to_bytes()
            return data

        contributors = run_with(server, clients, tamper)
        assert_right_or_aborted(server, contributors, inputs, 32)
        # Up: the server rejects the advertisement; down: the peer refuses the directory.
        # Either way that client is a dropout and the other four finish with the right sum.
        assert contributors is not None
        assert (victim if direction == "up" else (victim + 1) % 5) not in contributors


def _tail(entry: AdvertiseKeys) -> tuple[bytes, bytes, bytes]:
    return entry.verify_key, entry.setup_digest, entry.signature


@pytest.mark.parametrize("where", ["low", "high"])
def test_altered_seed_share_in_unmask_response_never_gives_a_wrong_sum(where: str) -> None:
    # Before the fix, altered low bytes of a seed share gave a wrong sum and a high-byte
    # flip raised a ProtocolError out of finish_stage.
    for trial in range(10):
        server, clients, inputs = complete_round(5, 3, seed=100 + trial)

        first_share = HEADER + 4 + 8  # count, then (owner id, length) of the first pair
        offset = first_share + (65 - trial % 4 if where == "low" else trial % 2)

        def tamper(stage: str, way: str, cid: int, data: bytes, offset: int = offset) -> bytes:
            if stage == "unmask" and way == "up" and cid == 2:
                return flip(data, offset, 0xFF)
            return data

        contributors = run_with(server, clients, tamper)
        assert contributors == (0, 1, 2, 3, 4)  # client 2's reply is rejected, the others suffice
        assert_right_or_aborted(server, contributors, inputs, 32)
        assert 2 not in server.responses


def malicious_shares(server: SecAggServer, clients: dict[int, SecAggClient], liars: dict[int, tuple[str, int]]) -> None:
    """Make each liar hold (and so sign) a wrong share of one owner's seed or key."""
    del server
    for liar, (kind, owner) in liars.items():
        held = clients[liar]._held_seed_shares if kind == "seed" else clients[liar]._held_key_shares
        value = (int.from_bytes(held[owner], "big") + 1) % shamir.PRIME
        held[owner] = value.to_bytes(shamir.SHARE_BYTES, "big")


@pytest.mark.parametrize("kind", ["seed", "key"])
def test_one_signed_bad_share_is_left_out_and_the_sum_stays_right(kind: str) -> None:
    server, clients, inputs = complete_round(7, 4, seed=3)
    dropped = frozenset({6})
    owner = 0 if kind == "seed" else 6
    liar = 1

    def tamper(stage: str, way: str, cid: int, data: bytes) -> bytes:
        if stage == "unmask" and way == "down" and cid == liar:
            malicious_shares(server, clients, {liar: (kind, owner)})
        return data

    contributors = run_with(server, clients, tamper, dropouts=DropoutPlan({"collect": dropped}))
    assert contributors == (0, 1, 2, 3, 4, 5)
    assert_right_or_aborted(server, contributors, inputs, 32)
    assert server.suspects == (liar,)


def test_two_signed_bad_shares_with_one_surplus_abort() -> None:
    server, clients, _ = complete_round(5, 3, seed=4)  # 5 responders, threshold 3

    def tamper(stage: str, way: str, cid: int, data: bytes) -> bytes:
        if stage == "unmask" and way == "down" and cid in (1, 2):
            malicious_shares(server, clients, {cid: ("seed", 0)})
        return data

    with pytest.raises(SecAggAborted, match="client 0's seed cannot be rebuilt and verified"):
        run_secagg_round(server, clients, tamper=tamper)
    assert server.result is None and server.stage == "aborted"


def test_a_client_that_deals_inconsistent_shares_is_caught() -> None:
    """A client whose own shares do not match its committed seed cannot make the server
    release a wrong sum (the surplus shares and the commitment both catch it)."""
    server, clients, _ = complete_round(5, 3, seed=5)

    def tamper(stage: str, way: str, cid: int, data: bytes) -> bytes:
        if stage == "unmask" and way == "down" and cid == 0:
            # Every holder got a share of seed + 7: consistent shares of the wrong secret,
            # which only the commitment in the signed ShareKeys can catch.
            for holder in clients.values():
                held = holder._held_seed_shares
                held[0] = ((int.from_bytes(held[0], "big") + 7) % shamir.PRIME).to_bytes(shamir.SHARE_BYTES, "big")
        return data

    assert run_with(server, clients, tamper) is None


# ---------------------------------------------------------------------------------------
# Key pinning: the deployment hook against a server that substitutes a key set.


def test_pinned_keys_refuse_a_substituted_advertisement() -> None:
    from privfed.secagg.crypto import signing_key, verification_key

    n = 4
    long_term = {c: keyed("long-term", c)(32) for c in range(n)}
    pinned = {c: verification_key(signing_key(k)) for c, k in long_term.items()}
    impostor_key = keyed("impostor-key")(32)

    def substitute() -> Callable[[str, str, int, bytes], bytes]:
        """A server (or network) that answers client 3's setup with a key set of its own."""
        impostor = SecAggClient(
            client_id=3, round=1, values=np.zeros(8, np.uint32), random=keyed("impostor"), signing_key=impostor_key
        )
        setup: list[bytes] = []

        def tamper(stage: str, way: str, cid: int, data: bytes) -> bytes:
            if stage == "advertise" and cid == 3:
                if way == "down":
                    setup.append(data)
                else:
                    return impostor.step(setup[0])
            return data

        return tamper

    # Without pinning the substituted advertisement is accepted (the documented PKI
    # limitation); here the real client 3 is then rejected at its next, differently signed message.
    server, clients, _ = complete_round(n, 3, seed=6)
    run_secagg_round(server, clients, tamper=substitute())
    assert server.keys[3].verify_key == verification_key(signing_key(impostor_key))

    server, clients, inputs = complete_round(n, 3, seed=6, trusted_keys=pinned)
    clients = {
        c: SecAggClient(
            client_id=c,
            round=1,
            values=inputs[c],
            random=keyed("client", 6, c),
            signing_key=long_term[c],
            trusted_keys=pinned,
        )
        for c in range(n)
    }
    server.trusted_keys = pinned
    outcome = run_secagg_round(server, clients, tamper=substitute())
    assert 3 not in server.keys and outcome.rejected == (3,)
    assert [int(v) for v in outcome.result] == plain_sum(inputs, outcome.contributors, 32)

    # A pinned client refuses a directory that carries the impostor's advertisement.
    server, clients, _ = complete_round(n, 3, seed=7)
    outbox = server.start()
    impostor = SecAggClient(client_id=3, round=1, values=np.zeros(8, np.uint32), random=keyed("impostor"))
    for c, m in outbox.items():
        server.receive((impostor if c == 3 else clients[c]).step(m))
    directory = server.finish_stage()
    pinned_client = SecAggClient(
        client_id=0,
        round=1,
        values=inputs[0],
        random=keyed("pinned"),
        trusted_keys={1: server.keys[1].verify_key, 2: server.keys[2].verify_key, 3: pinned[3]},
    )
    pinned_client.step(outbox[0])
    with pytest.raises(ProtocolError, match="client 3's verification key is not the pinned one"):
        pinned_client.step(directory[0])


# ---------------------------------------------------------------------------------------
# The fuzzer: one mutation of one message at a random stage, through the driver.


class OneMutation:
    """Alters one message: (stage, direction, client) chosen up front, byte and bits at random;
    targets AdvertiseKeys.mask_key and the high and low bytes of a seed share often."""

    def __init__(self, stage: str, direction: str, target: int, *, choice: float, rng: np.random.Generator) -> None:
        self.where = (stage, direction, target)
        self.choice = choice
        self.rng = rng
        self.done = False

    def __call__(self, stage: str, direction: str, cid: int, data: bytes) -> bytes:
        if self.done or (stage, direction, cid) != self.where:
            return data
        self.done = True
        message, rng = decode(data), self.rng
        if self.choice < 0.3 and isinstance(message, AdvertiseKeys):
            position = HEADER + 32 + int(rng.integers(32))  # mask_key
        elif self.choice < 0.6 and isinstance(message, UnmaskResponse) and message.seed_shares:
            position = HEADER + 4 + 8 + int(rng.choice([0, 1, 2, 63, 64, 65]))  # a seed share's high/low bytes
        else:
            position = int(rng.integers(len(data)))
        return flip(data, position, 1 << int(rng.integers(8)) if rng.random() < 0.5 else int(rng.integers(1, 256)))


def test_fuzzed_rounds_release_the_right_sum_or_abort() -> None:
    rng = np.random.default_rng(2026)
    outcomes = {"right": 0, "aborted": 0}
    mutated = 0
    for trial in range(300):
        bits = int(rng.choice([12, 16, 32, 52]))
        n = int(rng.choice([3, 4, 5]))
        server, clients, inputs = complete_round(n, n // 2 + 1, bits=bits, dim=4, seed=1000 + trial)
        stage = STAGES[int(rng.integers(4))]
        direction = "up" if rng.random() < 0.6 else "down"
        target = int(rng.integers(n))
        plan = DropoutPlan(
            {STAGES[int(rng.integers(4))]: frozenset({int(rng.integers(n))})} if rng.random() < 0.3 else {}
        )
        tamper = OneMutation(stage, direction, target, choice=rng.random(), rng=rng)
        contributors = run_with(server, clients, tamper, dropouts=plan)
        assert_right_or_aborted(server, contributors, inputs, bits)
        mutated += tamper.done
        outcomes["aborted" if contributors is None else "right"] += 1
    assert mutated >= 250  # the rest: the target had dropped or the round had already aborted
    assert outcomes["right"] > 150 and outcomes["aborted"] > 10  # both paths exercised
