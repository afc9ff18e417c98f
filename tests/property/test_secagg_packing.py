"""Bit-packed SecAgg+ uploads: pack -> unpack round trips, and MaskedInput refuses every
malformed packing with a one-line ProtocolError."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.compression.packing import pack_bits, packed_size, unpack_bits
from privfed.errors import ProtocolError
from privfed.secagg import KeyedRandom, SecAggClient, SecAggServer, run_secagg_round
from privfed.secagg.crypto import mask_dtype
from privfed.secagg.messages import MAX_BITS, MIN_BITS, MaskedInput, SetupRequest, decode

HEADER = 9  # tag (1) + round (4) + client id (4)
PREFIX = 17  # bits (1) + count (8) + payload length (8)


@st.composite
def codes(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    bits = draw(st.integers(MIN_BITS, MAX_BITS))
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 2**bits, size=n, dtype=np.uint64)
    # The extremes are where a shift or a spill into the next word goes wrong.
    if n:
        values[draw(st.integers(0, n - 1))] = 2**bits - 1
        values[0] = draw(st.sampled_from([0, 1, 2**bits - 1, 2 ** (bits - 1)]))
    return bits, values.astype(mask_dtype(bits))


@settings(max_examples=300, deadline=None)
@given(codes())
def test_pack_then_unpack_is_the_identity_at_exactly_bits_per_value(case: tuple[int, np.ndarray]) -> None:
    bits, values = case
    data = pack_bits(values, bits=bits)
    assert len(data) == packed_size(values.size, bits=bits) == (values.size * bits + 7) // 8
    back = unpack_bits(data, count=values.size, bits=bits)
    assert back.dtype == mask_dtype(bits)
    np.testing.assert_array_equal(back, values)
    # The layout is the little-endian bit stream sum(v_i << (i * bits)), padding bits zero.
    stream = sum(int(v) << (i * bits) for i, v in enumerate(values))
    assert data == stream.to_bytes(len(data), "little")


@settings(max_examples=100, deadline=None)
@given(codes())
def test_masked_input_round_trips_through_its_wire_format(case: tuple[int, np.ndarray]) -> None:
    bits, values = case
    message = MaskedInput(4, 9, bits, values, b"s" * 64)
    data = message.to_bytes()
    assert len(data) == HEADER + PREFIX + packed_size(values.size, bits=bits) + 64
    back = MaskedInput.from_bytes(data)
    assert back.bits == bits and back.masked.dtype == values.dtype
    np.testing.assert_array_equal(back.masked, values)
    assert back.transcript(b"x" * 16) == message.transcript(b"x" * 16)


def wire(bits: int, count: int, length: int, payload: bytes, tail: bytes = b"s" * 64) -> bytes:
    return struct.pack("<BIIBQQ", 6, 1, 2, bits, count, length) + payload + tail


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (wire(1, 8, 1, b"\x00"), "bits must be in [2, 52]; got 1"),
        (wire(53, 8, 53, bytes(53)), "bits must be in [2, 52]; got 53"),
        (wire(64, 1, 8, bytes(8)), "bits must be in [2, 52]; got 64"),
        (wire(12, 3, 4, bytes(4)), "packed payload of 4 bytes; 3 values of 12 bits take 5"),
        (wire(12, 3, 6, bytes(6)), "packed payload of 6 bytes; 3 values of 12 bits take 5"),
        (wire(12, 3, 5, bytes(4) + b"\x10"), "nonzero padding bits"),
        (wire(12, 3, 5, bytes(5), b"s" * 63), "message truncated"),
        (wire(12, 3, 5, bytes(5), b"s" * 65), "1 trailing bytes"),
        (wire(12, 1 << 40, 0, b""), "exceeds the limit"),
    ],
)
def test_malformed_packings_are_one_line_protocol_errors(data: bytes, found: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert found in str(info.value) and "\n" not in str(info.value)


def test_setup_and_server_refuse_bits_outside_the_packable_range() -> None:
    for bits in (1, 53, 64):
        setup = SetupRequest(1, 0, b"s" * 16, (0, 1, 2), 2, bytes(16), 2, bits, 4)
        with pytest.raises(ProtocolError, match=rf"bits must be in \[2, 52\]; got {bits}"):
            decode(setup.to_bytes())
        with pytest.raises(ValueError, match=rf"got {bits}"):
            SecAggServer(round=1, cohort=[0, 1, 2], degree=2, threshold=2, bits=bits, dim=4, session=b"s" * 16)
    with pytest.raises(ProtocolError, match="outside"):
        MaskedInput(1, 0, 12, np.array([4096], dtype=np.uint32), b"s" * 64).to_bytes()
    with pytest.raises(ProtocolError, match="uint64"):
        MaskedInput(1, 0, 40, np.array([4096], dtype=np.uint32), b"s" * 64).to_bytes()


def keyed(*parts: object) -> KeyedRandom:
    return KeyedRandom(hashlib.sha256(repr(parts).encode()).digest())


@pytest.mark.parametrize("bits", [2, 7, 16, 31, 33, 52])
def test_round_sums_right_and_uploads_exactly_bits_per_coordinate(bits: int) -> None:
    n, dim = 4, 37
    rng = np.random.default_rng(bits)
    inputs = {c: rng.integers(0, 2**bits, dim, dtype=np.uint64).astype(mask_dtype(bits)) for c in range(n)}
    server = SecAggServer(round=1, cohort=range(n), degree=3, threshold=3, bits=bits, dim=dim, session=b"s" * 16)
    clients = {c: SecAggClient(client_id=c, round=1, values=inputs[c], random=keyed(bits, c)) for c in range(n)}
    sizes: list[int] = []

    def watch(stage: str, direction: str, cid: int, data: bytes) -> bytes:
        if stage == "collect" and direction == "up":
            sizes.append(len(data))
        return data

    outcome = run_secagg_round(server, clients, tamper=watch)
    expected = sum(inputs[c].astype(object) for c in range(n)) % 2**bits
    assert [int(v) for v in outcome.result] == [int(v) for v in expected]
    assert sizes == [HEADER + PREFIX + (dim * bits + 7) // 8 + 64] * n


def test_a_masked_input_at_other_bits_than_the_round_is_rejected() -> None:
    n, dim = 3, 5
    server = SecAggServer(round=1, cohort=range(n), degree=2, threshold=2, bits=16, dim=dim, session=b"s" * 16)
    values = {c: np.full(dim, c, dtype=np.uint32) for c in range(n)}
    clients = {c: SecAggClient(client_id=c, round=1, values=values[c], random=keyed("b", c)) for c in range(n)}

    def repack(stage: str, direction: str, cid: int, data: bytes) -> bytes:
        if stage == "collect" and direction == "up" and cid == 0:
            message = MaskedInput.from_bytes(data)
            return MaskedInput(1, 0, 17, message.masked, message.signature).to_bytes()
        return data

    outcome = run_secagg_round(server, clients, tamper=repack)
    assert outcome.rejected == (0,) and outcome.contributors == (1, 2)
    assert [int(v) for v in outcome.result] == [3] * dim
