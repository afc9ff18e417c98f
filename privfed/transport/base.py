"""The interface between the server's round logic and whatever moves bytes.

A transport delivers one message per addressee and returns the replies, each
with the id of the node it came from; it knows nothing about training, DP or
encodings. A plain round is one exchange (the global model out, client updates
back); a secure-aggregation round is one exchange per SecAgg+ stage.
Transports are chosen by ``transport.kind`` from a registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from privfed.errors import ConfigError
from privfed.registry import Registry

__all__ = [
    "STAGES",
    "Exchange",
    "Reply",
    "Transport",
    "make_transport",
    "register_transport",
    "transport_names",
]

#: Exchanges of a round, in order: "train" (plain round), or the four SecAgg+ stages.
STAGES = ("train", "advertise", "share", "collect", "unmask")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One reply: who sent it (as the transport knows the sender) and its bytes."""

    sender: int
    data: bytes


@dataclasses.dataclass(frozen=True)
class Exchange:
    """What came back from one exchange.

    Attributes:
        replies: the replies received, in arrival order (a faulty network may repeat one).
        bytes_down: bytes sent to nodes.
        bytes_up: bytes received from nodes.
        seconds_waiting: seconds from sending the messages until the exchange stopped waiting:
            the last reply's arrival, or the reply timeout when a node never answered (the wait
            for the slowest node). Transports that do not measure it leave 0.
    """

    replies: tuple[Reply, ...]
    bytes_down: int
    bytes_up: int
    seconds_waiting: float = 0.0

    def answered(self) -> frozenset[int]:
        """The nodes that replied."""
        return frozenset(r.sender for r in self.replies)


class Transport(Protocol):
    """Delivers one message to each addressee and collects the replies."""

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        """Send ``messages[node]`` to each node and return whatever came back.

        Args:
            messages: ``{node id: message bytes}``.
            round / stage: where in the protocol this exchange is (``stage`` in :data:`STAGES`);
                for fault injection and logs only.
            on_reply: called with a node's id when its reply is in (progress).
        """
        ...


TransportFactory = Callable[..., Transport]
_TRANSPORTS: Registry[TransportFactory] = Registry("transport", error=ConfigError, field="transport.kind")


def register_transport(name: str, factory: TransportFactory, *, overwrite: bool = False) -> None:
    """Register ``factory(*, nodes, config) -> Transport`` under ``name`` (``transport.kind``).

    ``nodes`` is the sequence of :class:`privfed.client.node.ClientNode` of the federation, indexed by
    client id, and ``config`` the experiment config.
    """
    _TRANSPORTS.register(name, factory, overwrite=overwrite)


def transport_names() -> tuple[str, ...]:
    return _TRANSPORTS.names()


def make_transport(kind: str, *, nodes: Sequence[Any], config: Any) -> Transport:
    """The transport registered as ``kind``, built for ``nodes``."""
    return _TRANSPORTS.get(kind)(nodes=nodes, config=config)
