"""In-process simulation transport (the embedded default).

Every client node lives in this process (they may share one model instance).
Messages still go through their byte encoding, so the simulation exercises
exactly the wire format a distributed engine would, and byte counts are real.
Dropouts are injected here, as a network would cause them: a node that drops
before a stage receives that stage's message but never answers, nor later.

Nodes run one after another, so a node cannot be cut off mid-answer; with a
``reply_timeout`` a reply that took a node longer than that is discarded on arrival,
as a distributed engine would have stopped waiting for it: the node counts as dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from privfed.errors import ProtocolError
from privfed.rng import generator
from privfed.secagg.driver import STAGES as SECAGG_STAGES
from privfed.secagg.driver import DropoutPlan
from privfed.transport.base import Exchange, Reply, register_transport

if TYPE_CHECKING:  # the node imports the wire messages of this package
    from privfed.client.node import ClientNode

__all__ = ["SimulationTransport", "seeded_dropouts"]

#: ``(round, cohort) -> DropoutPlan`` for the secure-aggregation stages of a round.
DropoutSchedule = Callable[[int, Sequence[int]], DropoutPlan]


def seeded_dropouts(*, seed: int, rate: float) -> DropoutSchedule:
    """Each client drops before each SecAgg+ stage with probability ``rate``, keyed by (seed, round)."""

    def plan(round: int, cohort: Sequence[int]) -> DropoutPlan:
        return DropoutPlan.random(sorted(cohort), rate=rate, rng=generator(seed, "secagg-dropout", round))

    return plan


class SimulationTransport:
    """Delivers messages to in-process client nodes.

    Args:
        nodes: the client nodes, indexed by client id.
        dropouts: optional schedule of injected SecAgg+ dropouts (plain rounds have none).
        reply_timeout: seconds a node may take to answer one message; a slower reply is
            discarded (the node is dropped). ``None`` (the default, and what
            ``transport.kind = "simulation"`` uses): wait for every node.
    """

    def __init__(
        self,
        *,
        nodes: Sequence[ClientNode],
        dropouts: DropoutSchedule | None = None,
        reply_timeout: float | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.dropouts = dropouts
        self.reply_timeout = reply_timeout
        self._plan: tuple[int, DropoutPlan] | None = None

    def _node(self, client_id: int) -> ClientNode:
        if not 0 <= client_id < len(self.nodes):
            raise ProtocolError(f"no client {client_id} in this simulation ({len(self.nodes)} clients)")
        return self.nodes[client_id]

    def _silent(self, round: int, stage: str, addressees: Sequence[int]) -> frozenset[int]:
        if self.dropouts is None or stage not in SECAGG_STAGES:
            return frozenset()
        if stage == SECAGG_STAGES[0] or self._plan is None or self._plan[0] != round:
            self._plan = (round, self.dropouts(round, addressees))
        return self._plan[1].dropped_by(stage)

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        silent = self._silent(round, stage, list(messages))
        replies: list[Reply] = []
        down = up = 0
        started = time.perf_counter()
        for client_id, message in messages.items():
            node = self._node(client_id)
            down += len(message)
            if client_id in silent:
                continue
            asked = time.perf_counter()
            try:
                reply = node.handle(message)
            except ProtocolError:
                # A node that refuses (an unsafe SecAgg+ request, a forged key) stays silent: a dropout.
                continue
            if reply is None:
                continue
            if self.reply_timeout is not None and time.perf_counter() - asked > self.reply_timeout:
                continue  # too late: the server stopped waiting for this node
            up += len(reply)
            replies.append(Reply(sender=client_id, data=reply))
            if on_reply is not None:
                on_reply(client_id)
        return Exchange(
            replies=tuple(replies), bytes_down=down, bytes_up=up, seconds_waiting=time.perf_counter() - started
        )


def _simulation(*, nodes: Sequence[ClientNode], config: Any) -> SimulationTransport:
    rate = float(config.secagg.dropout_rate) if config.secagg.enabled else 0.0
    return SimulationTransport(nodes=nodes, dropouts=seeded_dropouts(seed=config.seed, rate=rate) if rate else None)


register_transport("simulation", _simulation)
