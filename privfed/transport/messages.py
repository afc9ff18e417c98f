"""Wire messages between server and clients: frozen records, bytes without pickle.

Layout of every message: ``magic (4s) | version (B) | kind (B) | header | payload``
with little-endian fixed-width header fields and a raw ``float32`` payload.
:meth:`from_bytes` validates everything and raises
:class:`~privfed.errors.ProtocolError` on anything malformed.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import unicodedata
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from privfed.compression.packing import pack_bits, packed_size, unpack_bits
from privfed.errors import ProtocolError

__all__ = [
    "ClientUpdate",
    "CompressedRoundRequest",
    "Decline",
    "EncodedUpdate",
    "GlobalModel",
    "SecureRoundRequest",
    "message_kind",
]

_MAGIC = b"PFD1"
_VERSION = 1
_PREFIX = struct.Struct("<4sBB")


def _check_prefix(data: bytes, kind: int, header: struct.Struct) -> tuple[int, ...]:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"message must be bytes; got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _PREFIX.size + header.size:
        raise ProtocolError(f"message truncated: {len(data)} bytes")
    magic, version, found_kind = _PREFIX.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise ProtocolError(f"not a privfed v{_VERSION} message")
    if found_kind != kind:
        raise ProtocolError(f"expected message kind {kind}, got {found_kind}")
    return header.unpack_from(data, _PREFIX.size)


def _payload(data: bytes, offset: int, dim: int) -> npt.NDArray[np.float32]:
    body = bytes(data)[offset:]
    if len(body) != 4 * dim:
        raise ProtocolError(f"payload has {len(body)} bytes; header says {dim} float32 values")
    return np.frombuffer(body, dtype="<f4").astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalModel:
    """Server -> client: the global adapter for ``round``.

    Attributes:
        round: round number (>= 1).
        vector: float32[d], the flat global adapter.
    """

    KIND: ClassVar[int] = 1
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<IQ")

    round: int
    vector: npt.NDArray[np.float32]

    def to_bytes(self) -> bytes:
        vec = np.ascontiguousarray(self.vector, dtype="<f4")
        return _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + self._HEADER.pack(self.round, vec.size) + vec.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> GlobalModel:
        round_, dim = _check_prefix(data, cls.KIND, cls._HEADER)
        return cls(round=round_, vector=_payload(data, _PREFIX.size + cls._HEADER.size, dim))


@dataclasses.dataclass(frozen=True, eq=False)
class ClientUpdate:
    """Client -> server: one client's result for one round.

    Attributes:
        round: round the update belongs to.
        client_id: the sender.
        num_examples: examples the client trained on (FedAvg weight).
        train_loss: mean local training loss.
        delta: float32[d], local adapter minus global adapter.
    """

    KIND: ClassVar[int] = 2
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<IIQdQ")

    round: int
    client_id: int
    num_examples: int
    train_loss: float
    delta: npt.NDArray[np.float32]

    def to_bytes(self) -> bytes:
        vec = np.ascontiguousarray(self.delta, dtype="<f4")
        header = self._HEADER.pack(self.round, self.client_id, self.num_examples, self.train_loss, vec.size)
        return _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + header + vec.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ClientUpdate:
        round_, client_id, num_examples, raw_loss, dim = _check_prefix(data, cls.KIND, cls._HEADER)
        if num_examples < 1:
            raise ProtocolError(f"client update claims {num_examples} examples")
        train_loss = float(raw_loss) if math.isfinite(raw_loss) else float("nan")
        delta = _payload(data, _PREFIX.size + cls._HEADER.size, dim)
        return cls(round=round_, client_id=client_id, num_examples=num_examples, train_loss=train_loss, delta=delta)


@dataclasses.dataclass(frozen=True, eq=False)
class SecureRoundRequest:
    """Server -> client: a secure-aggregation round's opening message.

    Attributes:
        round: round number.
        vector: float32[d], the global adapter to train from.
        stages: the upload stages to run, as :meth:`privfed.client.stages.UploadPipeline.to_json`.
        setup: the SecAgg+ ``SetupRequest`` for this client (bytes of ``privfed.secagg``).
    """

    KIND: ClassVar[int] = 3
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<IQII")
    MAX_STAGES_BYTES: ClassVar[int] = 1 << 16

    round: int
    vector: npt.NDArray[np.float32]
    stages: str
    setup: bytes

    def to_bytes(self) -> bytes:
        vec = np.ascontiguousarray(self.vector, dtype="<f4")
        stages = self.stages.encode("utf-8")
        header = self._HEADER.pack(self.round, vec.size, len(stages), len(self.setup))
        return _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + header + vec.tobytes() + stages + self.setup

    @classmethod
    def from_bytes(cls, data: bytes) -> SecureRoundRequest:
        round_, dim, n_stages, n_setup = _check_prefix(data, cls.KIND, cls._HEADER)
        if n_stages > cls.MAX_STAGES_BYTES:
            raise ProtocolError(f"secure round request: {n_stages} bytes of stages (at most {cls.MAX_STAGES_BYTES})")
        data = bytes(data)
        start = _PREFIX.size + cls._HEADER.size
        size = start + 4 * dim + n_stages + n_setup
        if len(data) != size:
            raise ProtocolError(f"secure round request has {len(data)} bytes; its header says {size}")
        vector = np.frombuffer(data[start : start + 4 * dim], dtype="<f4").astype(np.float32)
        try:
            stages = data[start + 4 * dim : start + 4 * dim + n_stages].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("secure round request: stages are not UTF-8") from None
        return cls(round=round_, vector=vector, stages=stages, setup=data[start + 4 * dim + n_stages :])


@dataclasses.dataclass(frozen=True)
class Decline:
    """Client -> server: no usable update this round, and why.

    Attributes:
        round: the round.
        client_id: the sender.
        reason: one line from the client (its privacy policy refused the round, training
            diverged to non-finite values, ...); at most :data:`MAX_REASON_BYTES` of UTF-8
            without control characters, cut to fit when sent. Untrusted text for the
            server: counted in ``metrics.jsonl`` (``declines``), never acted on. A decline
            without one (``""``, also the layout before reasons) is valid.
    """

    KIND: ClassVar[int] = 4
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<II")
    _LENGTH: ClassVar[struct.Struct] = struct.Struct("<H")
    MAX_REASON_BYTES: ClassVar[int] = 240

    round: int
    client_id: int
    reason: str = ""

    def to_bytes(self) -> bytes:
        head = _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + self._HEADER.pack(self.round, self.client_id)
        text = _one_line(self.reason).encode("utf-8")
        if len(text) > self.MAX_REASON_BYTES:  # cut on a character boundary, marked
            text = text[: self.MAX_REASON_BYTES - 3].decode("utf-8", errors="ignore").encode("utf-8") + b"..."
        return head + (self._LENGTH.pack(len(text)) + text if text else b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> Decline:
        round_, client_id = _check_prefix(data, cls.KIND, cls._HEADER)
        rest = bytes(data)[_PREFIX.size + cls._HEADER.size :]
        if not rest:
            return cls(round=round_, client_id=client_id)
        if len(rest) < cls._LENGTH.size:
            raise ProtocolError("decline message has a truncated reason length")
        (length,) = cls._LENGTH.unpack_from(rest)
        if not 0 < length <= cls.MAX_REASON_BYTES or len(rest) != cls._LENGTH.size + length:
            raise ProtocolError(
                f"decline reason must be 1..{cls.MAX_REASON_BYTES} bytes filling the message; "
                f"header says {length}, message holds {len(rest) - cls._LENGTH.size}"
            )
        try:
            reason = rest[cls._LENGTH.size :].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("decline reason is not UTF-8") from None
        if _one_line(reason) != reason:
            raise ProtocolError("decline reason has control characters or surrounding whitespace")
        return cls(round=round_, client_id=client_id, reason=reason)


def _one_line(text: str) -> str:
    """``text`` with every control character (newlines included) as a space, stripped."""
    return "".join(" " if unicodedata.category(c).startswith("C") else c for c in text).strip()


@dataclasses.dataclass(frozen=True, eq=False)
class CompressedRoundRequest:
    """Server -> client: a plain round whose upload goes through compression stages.

    Attributes:
        round: round number.
        vector: float32[d], the global adapter to train from.
        stages: the upload stages to run, as :meth:`privfed.client.stages.UploadPipeline.to_json`.
    """

    KIND: ClassVar[int] = 5
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<IQI")
    MAX_STAGES_BYTES: ClassVar[int] = 1 << 16

    round: int
    vector: npt.NDArray[np.float32]
    stages: str

    def to_bytes(self) -> bytes:
        vec = np.ascontiguousarray(self.vector, dtype="<f4")
        stages = self.stages.encode("utf-8")
        header = self._HEADER.pack(self.round, vec.size, len(stages))
        return _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + header + vec.tobytes() + stages

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressedRoundRequest:
        round_, dim, n_stages = _check_prefix(data, cls.KIND, cls._HEADER)
        if n_stages > cls.MAX_STAGES_BYTES:
            raise ProtocolError(
                f"compressed round request: {n_stages} bytes of stages (at most {cls.MAX_STAGES_BYTES})"
            )
        data = bytes(data)
        start = _PREFIX.size + cls._HEADER.size
        if len(data) != start + 4 * dim + n_stages:
            raise ProtocolError(
                f"compressed round request has {len(data)} bytes; its header says {start + 4 * dim + n_stages}"
            )
        vector = np.frombuffer(data[start : start + 4 * dim], dtype="<f4").astype(np.float32)
        try:
            stages = data[start + 4 * dim :].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("compressed round request: stages are not UTF-8") from None
        return cls(round=round_, vector=vector, stages=stages)


def _codes_or_floats(raw: bytes, *, count: int, bits: int) -> npt.NDArray[np.generic]:
    if bits:
        return unpack_bits(raw, count=count, bits=bits)
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class EncodedUpdate:
    """Client -> server: one client's upload after the round's compression stages (plain rounds).

    Attributes:
        round: round the update belongs to.
        client_id: the sender.
        num_examples: examples the client trained on (FedAvg weight).
        train_loss: mean local training loss.
        bits: width of each code when ``values`` are fixed-point codes (2..32), packed
            into ``ceil(n * bits / 8)`` bytes on the wire; 0 when they are float32.
        values: uint32[n] codes below ``2**bits``, or float32[n].
        support: uint32[n] coordinates the values stand for (top-k), or empty.
    """

    KIND: ClassVar[int] = 6
    _HEADER: ClassVar[struct.Struct] = struct.Struct("<IIQdBQQ")

    round: int
    client_id: int
    num_examples: int
    train_loss: float
    bits: int
    values: npt.NDArray[np.generic]
    support: npt.NDArray[np.uint32] = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.uint32))

    def to_bytes(self) -> bytes:
        n = int(np.size(self.values))
        if self.bits:
            body = pack_bits(self.values, bits=self.bits)
        else:
            body = np.ascontiguousarray(self.values, dtype="<f4").tobytes()
        support = np.ascontiguousarray(self.support, dtype="<u4")
        header = self._HEADER.pack(
            self.round, self.client_id, self.num_examples, self.train_loss, self.bits, n, support.size
        )
        return _PREFIX.pack(_MAGIC, _VERSION, self.KIND) + header + support.tobytes() + body

    @classmethod
    def from_bytes(cls, data: bytes) -> EncodedUpdate:
        round_, client_id, num_examples, raw_loss, bits, n, n_support = _check_prefix(data, cls.KIND, cls._HEADER)
        if num_examples < 1:
            raise ProtocolError(f"encoded update claims {num_examples} examples")
        if bits != 0 and not 2 <= bits <= 32:
            raise ProtocolError(f"encoded update: bits must be 0 (float32) or in [2, 32]; got {bits}")
        data = bytes(data)
        start = _PREFIX.size + cls._HEADER.size
        body = packed_size(n, bits=bits) if bits else 4 * n
        if n > len(data) * 8 or n_support > len(data) or len(data) != start + 4 * n_support + body:
            raise ProtocolError(f"encoded update has {len(data)} bytes; its header does not add up to that")
        support = np.frombuffer(data[start : start + 4 * n_support], dtype="<u4").astype(np.uint32)
        raw = data[start + 4 * n_support :]
        values = _codes_or_floats(raw, count=n, bits=bits)
        train_loss = float(raw_loss) if math.isfinite(raw_loss) else float("nan")
        return cls(
            round=round_,
            client_id=client_id,
            num_examples=num_examples,
            train_loss=train_loss,
            bits=bits,
            values=values,
            support=support,
        )


def message_kind(data: bytes) -> int | None:
    """The kind byte of a privfed message, or ``None`` when ``data`` is not one (e.g. a SecAgg+ message)."""
    data = bytes(data[: _PREFIX.size])
    if len(data) < _PREFIX.size:
        return None
    magic, version, kind = _PREFIX.unpack(data)
    return int(kind) if magic == _MAGIC and version == _VERSION else None
