"""Secure-aggregation protocol messages: frozen records, a fixed binary format, no pickle.

Each message is ``tag (B) | round (I) | client_id (I) | fields...`` with
little-endian integers, length-prefixed byte strings and typed arrays. Every
decode checks lengths, tags and value ranges and raises
:class:`~privfed.errors.ProtocolError` on anything malformed, truncated or
with trailing bytes.

Client messages (:class:`AdvertiseKeys`, :class:`ShareKeys`,
:class:`MaskedInput`, :class:`UnmaskResponse`) end in a 64-byte Ed25519
signature over :meth:`SignedMessage.transcript`: a domain label, the round's
session, and every other byte of the message (tag = stage, round, sender id,
fields). Server messages are not signed; clients check what they can (peers'
signed key advertisements, AES-GCM on shares) and the server cannot make a
client reveal anything a threshold-respecting client would not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from privfed.compression.packing import pack_bits, packed_size, unpack_bits
from privfed.errors import ProtocolError

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "AdvertiseKeys",
    "KeyDirectory",
    "MaskedInput",
    "SecAggMessage",
    "SetupRequest",
    "ShareDelivery",
    "ShareKeys",
    "SignedMessage",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
]

_MAX_ITEMS = 1 << 20
_MAX_VECTOR = 1 << 31
MIN_BITS = 2
"""Smallest modulus exponent a round may use (a sign bit and one value bit)."""
MAX_BITS = 52
"""Largest modulus exponent: the fixed-point codec is float64-exact up to 52 bits
(:class:`~privfed.compression.quantize.FixedPointCodec`), and every word fits uint64."""
_MAX_BLOB = 1 << 16
_SIGNATURE_BYTES = 64
_TRANSCRIPT_LABEL = b"privfed-secagg/v1/signed-message/"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size))

    def count(self) -> int:
        (n,) = self.unpack("I")
        if n > _MAX_ITEMS:
            raise ProtocolError(f"list of {n} items exceeds the limit")
        return int(n)

    def blob(self) -> bytes:
        (n,) = self.unpack("I")
        if n > _MAX_BLOB:
            raise ProtocolError(f"field of {n} bytes exceeds the limit")
        return self.take(n)

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError(f"{len(self.data) - self.pos} trailing bytes after the message")


def _ids(values: tuple[int, ...]) -> bytes:
    return struct.pack(f"<I{len(values)}I", len(values), *values)


def _read_ids(r: _Reader) -> tuple[int, ...]:
    n = r.count()
    ids = tuple(int(v) for v in r.unpack(f"{n}I"))
    if len(set(ids)) != len(ids):
        raise ProtocolError("duplicate client id in a list")
    return ids


def _pairs(items: tuple[tuple[int, bytes], ...]) -> bytes:
    out = [struct.pack("<I", len(items))]
    for cid, blob in items:
        out.append(struct.pack("<II", cid, len(blob)) + blob)
    return b"".join(out)


def _read_pairs(r: _Reader) -> tuple[tuple[int, bytes], ...]:
    items = []
    for _ in range(r.count()):
        (cid,) = r.unpack("I")
        items.append((int(cid), r.blob()))
    if len({cid for cid, _ in items}) != len(items):
        raise ProtocolError("duplicate client id in a list")
    return tuple(items)


_M = TypeVar("_M", bound="SecAggMessage")


@dataclasses.dataclass(frozen=True, eq=False)
class SecAggMessage:
    """Common header: the protocol round and the client the message is from or for."""

    TAG: ClassVar[int] = 0
    round: int
    client_id: int

    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _parse(cls: type[_M], r: _Reader, round: int, client_id: int) -> _M:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return struct.pack("<BII", self.TAG, self.round, self.client_id) + self._body()

    @classmethod
    def from_bytes(cls: type[_M], data: bytes) -> _M:
        """Decode a message of exactly this type (``ProtocolError`` otherwise)."""
        message = decode(data)
        if not isinstance(message, cls):
            raise ProtocolError(f"expected {cls.__name__}, got {type(message).__name__}")
        return message


@dataclasses.dataclass(frozen=True, eq=False)
class SignedMessage(SecAggMessage):
    """A client message whose last field is an Ed25519 signature over everything before it."""

    def _fields(self) -> bytes:
        raise NotImplementedError

    @property
    def signature_bytes(self) -> bytes:
        raise NotImplementedError

    def _body(self) -> bytes:
        if len(self.signature_bytes) != _SIGNATURE_BYTES:
            raise ProtocolError(f"signature must be {_SIGNATURE_BYTES} bytes")
        return self._fields() + self.signature_bytes

    def _signed_fields(self) -> bytes:
        return self._fields()

    def transcript(self, session: bytes) -> bytes:
        """The bytes the signature covers: label, session, header (stage, round, sender), fields."""
        header = struct.pack("<BII", self.TAG, self.round, self.client_id)
        return _TRANSCRIPT_LABEL + bytes(session) + header + self._signed_fields()


@dataclasses.dataclass(frozen=True, eq=False)
class SetupRequest(SecAggMessage):
    """Server -> client: the round-global setup, identical for every client but the addressee.

    Every client receives the same ``session``, ``cohort`` (sorted ids),
    SecAgg+ graph parameters (``degree`` and the public ``graph_seed`` the
    graph is derived from, :func:`~privfed.secagg.graph.harary_graph`), a
    single ``threshold``, ``bits`` and ``dim``. Each client derives its own
    neighbourhood from them and signs :meth:`global_setup`'s digest in its key
    advertisement; a neighbour whose signed digest differs is refused, so a
    server cannot show different clients different graphs or thresholds.
    The cohort costs 4 bytes per client (4 KB for 1,000; the graph itself
    would cost ``4 n k``).
    """

    TAG: ClassVar[int] = 1
    session: bytes
    cohort: tuple[int, ...]
    degree: int
    graph_seed: bytes
    threshold: int
    bits: int
    dim: int

    def _global_fields(self) -> bytes:
        return struct.pack(
            "<16s16sIIIQ", self.session, self.graph_seed, self.degree, self.threshold, self.bits, self.dim
        ) + _ids(self.cohort)

    def _body(self) -> bytes:
        return self._global_fields()

    def global_setup(self) -> bytes:
        """The setup without the addressee: the same bytes for every client of the round."""
        return struct.pack("<BI", self.TAG, self.round) + self._global_fields()

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> SetupRequest:
        session, graph_seed, degree, threshold, bits, dim = r.unpack("16s16sIIIQ")
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ProtocolError(f"setup: bits must be in [{MIN_BITS}, {MAX_BITS}]; got {bits}")
        cohort = _read_ids(r)
        if list(cohort) != sorted(cohort):
            raise ProtocolError("setup cohort must list client ids in increasing order")
        return cls(round, client_id, session, cohort, int(degree), graph_seed, int(threshold), int(bits), int(dim))


@dataclasses.dataclass(frozen=True, eq=False)
class AdvertiseKeys(SignedMessage):
    """Client -> server: X25519 public keys (share encryption, pairwise masks) under an Ed25519 key.

    ``setup_digest`` is SHA-256 of the round-global setup the client answered
    (:meth:`SetupRequest.global_setup`): the server and every neighbour check
    that it equals their own, so all holders of a client's shares saw one graph
    and one threshold.
    """

    TAG: ClassVar[int] = 2
    encryption_key: bytes
    mask_key: bytes
    verify_key: bytes
    setup_digest: bytes
    signature: bytes

    def _fields(self) -> bytes:
        return struct.pack("<32s32s32s32s", self.encryption_key, self.mask_key, self.verify_key, self.setup_digest)

    @property
    def signature_bytes(self) -> bytes:
        return self.signature

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> AdvertiseKeys:
        enc, mask, verify, digest = r.unpack("32s32s32s32s")
        return cls(round, client_id, enc, mask, verify, digest, r.take(_SIGNATURE_BYTES))


@dataclasses.dataclass(frozen=True, eq=False)
class KeyDirectory(SecAggMessage):
    """Server -> client: the signed key advertisements of the client's neighbours, as received."""

    TAG: ClassVar[int] = 3
    entries: tuple[AdvertiseKeys, ...]

    def _body(self) -> bytes:
        return _pairs(tuple((entry.client_id, entry.to_bytes()) for entry in self.entries))

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> KeyDirectory:
        entries = []
        for cid, blob in _read_pairs(r):
            entry = AdvertiseKeys.from_bytes(blob)
            if entry.client_id != cid or entry.round != round:
                raise ProtocolError("key directory entry names another client or round")
            entries.append(entry)
        return cls(round, client_id, tuple(entries))


@dataclasses.dataclass(frozen=True, eq=False)
class ShareKeys(SignedMessage):
    """Client -> server: AES-GCM encrypted Shamir shares, one per neighbour (``(destination, sealed)``),
    and a hash commitment to the self-mask seed that the server checks after reconstruction."""

    TAG: ClassVar[int] = 4
    ciphertexts: tuple[tuple[int, bytes], ...]
    seed_commitment: bytes
    signature: bytes

    def _fields(self) -> bytes:
        return _pairs(self.ciphertexts) + struct.pack("<32s", self.seed_commitment)

    @property
    def signature_bytes(self) -> bytes:
        return self.signature

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> ShareKeys:
        ciphertexts = _read_pairs(r)
        (commitment,) = r.unpack("32s")
        return cls(round, client_id, ciphertexts, commitment, r.take(_SIGNATURE_BYTES))


@dataclasses.dataclass(frozen=True, eq=False)
class ShareDelivery(SecAggMessage):
    """Server -> client: the sealed shares addressed to it (``(source, sealed)``)."""

    TAG: ClassVar[int] = 5
    ciphertexts: tuple[tuple[int, bytes], ...]

    def _body(self) -> bytes:
        return _pairs(self.ciphertexts)

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> ShareDelivery:
        return cls(round, client_id, _read_pairs(r))


@dataclasses.dataclass(frozen=True, eq=False)
class MaskedInput(SignedMessage):
    """Client -> server: the masked vector, residues modulo ``2**bits``, bit-packed on the wire.

    In memory ``masked`` is ``mask_dtype(bits)`` (uint32 up to 32 bits, else uint64);
    on the wire it is ``bits (B) | count (Q) | payload length (Q) | payload`` with the
    payload :func:`~privfed.compression.packing.pack_bits` of the values: exactly
    ``bits`` bits per coordinate, ``ceil(count * bits / 8)`` bytes, little-endian,
    unused high bits of the last byte zero. Decoding refuses ``bits`` outside
    [:data:`MIN_BITS`, :data:`MAX_BITS`], a payload length other than that,
    nonzero padding bits and trailing bytes, so every accepted vector has exactly
    one encoding (the signature covers the values, not the bytes).
    """

    TAG: ClassVar[int] = 6
    bits: int
    masked: npt.NDArray[np.unsignedinteger]
    signature: bytes

    def _checked_words(self) -> npt.NDArray[np.unsignedinteger]:
        if not MIN_BITS <= self.bits <= MAX_BITS:
            raise ProtocolError(f"masked input: bits must be in [{MIN_BITS}, {MAX_BITS}]; got {self.bits}")
        dtype = np.dtype(np.uint32 if self.bits <= 32 else np.uint64)
        if self.masked.dtype != dtype or self.masked.ndim != 1:
            raise ProtocolError(f"masked input: values must be a 1-D {dtype} array at {self.bits} bits")
        return np.ascontiguousarray(self.masked, dtype=dtype.newbyteorder("<"))

    def _fields(self) -> bytes:
        words = self._checked_words()
        try:
            payload = pack_bits(words, bits=self.bits)
        except ValueError:
            raise ProtocolError(f"masked input has values outside [0, 2**{self.bits})") from None
        return struct.pack("<BQQ", self.bits, words.size, len(payload)) + payload

    def _signed_fields(self) -> bytes:
        # Ed25519 hashes its message twice with SHA-512; one SHA-256 pass over a long
        # vector is about 3x cheaper, and collision resistance keeps the signature binding.
        # The values (not the packed bytes) are hashed: decoding accepts one encoding per vector.
        words = self._checked_words()
        return struct.pack("<BQ", self.bits, words.size) + hashlib.sha256(words.data).digest()

    @property
    def signature_bytes(self) -> bytes:
        return self.signature

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> MaskedInput:
        bits, n, length = r.unpack("BQQ")
        if not MIN_BITS <= bits <= MAX_BITS:
            raise ProtocolError(f"masked input: bits must be in [{MIN_BITS}, {MAX_BITS}]; got {bits}")
        if n > _MAX_VECTOR:
            raise ProtocolError(f"masked input: vector of {n} values exceeds the limit of {_MAX_VECTOR}")
        expected = packed_size(int(n), bits=int(bits))
        if length != expected:
            raise ProtocolError(
                f"masked input: packed payload of {length} bytes; {n} values of {bits} bits take {expected}"
            )
        payload = r.take(expected)
        used = (int(n) * int(bits)) % 8
        if used and payload[-1] >> used:
            raise ProtocolError("masked input: nonzero padding bits after the last value")
        values = unpack_bits(payload, count=int(n), bits=int(bits))
        return cls(round, client_id, int(bits), values, r.take(_SIGNATURE_BYTES))


@dataclasses.dataclass(frozen=True, eq=False)
class UnmaskRequest(SecAggMessage):
    """Server -> client: whose self-mask seed shares and whose mask-key shares to reveal."""

    TAG: ClassVar[int] = 7
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    def _body(self) -> bytes:
        return _ids(self.survivors) + _ids(self.dropped)

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> UnmaskRequest:
        return cls(round, client_id, _read_ids(r), _read_ids(r))


@dataclasses.dataclass(frozen=True, eq=False)
class UnmaskResponse(SignedMessage):
    """Client -> server: ``(owner, share)`` of survivors' seeds and of dropped clients' mask keys."""

    TAG: ClassVar[int] = 8
    seed_shares: tuple[tuple[int, bytes], ...]
    key_shares: tuple[tuple[int, bytes], ...]
    signature: bytes

    def _fields(self) -> bytes:
        return _pairs(self.seed_shares) + _pairs(self.key_shares)

    @property
    def signature_bytes(self) -> bytes:
        return self.signature

    @classmethod
    def _parse(cls, r: _Reader, round: int, client_id: int) -> UnmaskResponse:
        return cls(round, client_id, _read_pairs(r), _read_pairs(r), r.take(_SIGNATURE_BYTES))


_TYPES: dict[int, type[SecAggMessage]] = {
    cls.TAG: cls
    for cls in (
        SetupRequest,
        AdvertiseKeys,
        KeyDirectory,
        ShareKeys,
        ShareDelivery,
        MaskedInput,
        UnmaskRequest,
        UnmaskResponse,
    )
}


def decode(data: bytes) -> SecAggMessage:
    """Decode any protocol message; ``ProtocolError`` if it is not exactly one valid message."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message must be bytes; got {type(data).__name__}")
    r = _Reader(bytes(data))
    tag, round, client_id = r.unpack("BII")
    if tag not in _TYPES:
        raise ProtocolError(f"unknown message tag {tag}")
    message = _TYPES[tag]._parse(r, int(round), int(client_id))
    r.finish()
    return message
