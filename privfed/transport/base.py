"""The interface between the server's round logic and whatever moves bytes."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["RoundExchange", "Transport"]


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
