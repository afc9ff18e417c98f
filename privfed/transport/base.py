"""The interface between the server's round logic and whatever moves bytes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["RoundExchange", "SecureExchange", "SecureTransport", "Transport"]


@dataclasses.dataclass(frozen=True)
class RoundExchange:
    """What came back from one round's broadcast.

    Attributes:
        uploads: raw bytes of each reply (to be validated by the server).
        bytes_down: bytes sent to clients this round.
        bytes_up: bytes received from clients this round.
    """

    uploads: tuple[bytes, ...]
    bytes_down: int
    bytes_up: int


class Transport(Protocol):
    """Delivers the broadcast to a cohort and collects their replies."""

    def exchange(
        self, *, broadcast: bytes, cohort: Sequence[int], on_client_done: Callable[[int], None] | None = None
    ) -> RoundExchange: ...


@dataclasses.dataclass(frozen=True)
class SecureExchange:
    """What a secure-aggregation round produced.

    Attributes:
        result: the modular sum of the contributors' encoded updates, or
            ``None`` when the protocol aborted.
        contributors: clients whose inputs are in ``result``.
        rejected: clients that produced no usable update (e.g. non-finite).
        abort_reason: why the protocol aborted, if it did.
        bytes_down / bytes_up: all bytes moved (model broadcast and protocol).
    """

    result: Any
    contributors: tuple[int, ...]
    rejected: int
    abort_reason: str | None
    bytes_down: int
    bytes_up: int


@runtime_checkable
class SecureTransport(Transport, Protocol):
    """A transport that can also run a secure-aggregation round over a cohort."""

    def secure_exchange(
        self,
        *,
        broadcast: bytes,
        server: Any,
        codec: Any,
        dropouts: Any,
        clip_norm: float | None = None,
        count_bit: float = 0.5,
        on_client_done: Callable[[int], None] | None = None,
    ) -> SecureExchange: ...
