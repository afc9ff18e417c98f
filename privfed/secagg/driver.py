"""Run one secure-aggregation round in-process, moving bytes between the state machines.

Used by the simulation transport, the tests and the benchmarks. A
:class:`DropoutPlan` says which clients go silent before each stage. A
``tamper`` hook sees (and may alter) every message on the wire, for fault
injection and adversarial tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from privfed.errors import ProtocolError
from privfed.secagg.client import SecAggClient
from privfed.secagg.server import SecAggServer

__all__ = ["DropoutPlan", "SecAggOutcome", "Tamper", "Traffic", "run_secagg_round"]

STAGES = ("advertise", "share", "collect", "unmask")

Tamper = Callable[[str, str, int, bytes], bytes]
"""``(stage, direction, client id, message) -> message`` with direction ``"down"``
(server to client) or ``"up"`` (client to server)."""


@dataclasses.dataclass(frozen=True)
class DropoutPlan:
    """Clients that stop answering from a stage on: ``{stage: client ids}``
    (stages: advertise, share, collect, unmask)."""

    drops: Mapping[str, frozenset[int]] = dataclasses.field(default_factory=dict)

    @staticmethod
    def random(client_ids: list[int], *, rate: float, rng: np.random.Generator) -> DropoutPlan:
        """Each still-active client drops before each stage with probability ``rate``."""
        active = set(client_ids)
        drops = {}
        for stage in STAGES:
            gone = {c for c in sorted(active) if rng.random() < rate}
            drops[stage] = frozenset(gone)
            active -= gone
        return DropoutPlan(drops)

    def dropped_by(self, stage: str) -> frozenset[int]:
        """Everyone who has dropped at or before ``stage``."""
        out: set[int] = set()
        for s in STAGES[: STAGES.index(stage) + 1]:
            out |= self.drops.get(s, frozenset())
        return frozenset(out)


@dataclasses.dataclass
class Traffic:
    """Bytes moved so far in a round (kept up to date even if the round aborts)."""

    up: int = 0
    down: int = 0


@dataclasses.dataclass(frozen=True)
class SecAggOutcome:
    """Result of a round: the modular sum and who is in it, plus traffic.

    ``refused``: clients that stopped because a server message was unsafe or
    invalid; ``rejected``: clients whose message the server refused (bad
    signature, malformed); both count as dropouts.
    """

    result: npt.NDArray[np.unsignedinteger]
    contributors: tuple[int, ...]
    refused: tuple[int, ...]
    bytes_up: int
    bytes_down: int
    bytes_up_by_client: dict[int, int]
    rejected: tuple[int, ...] = ()


def run_secagg_round(
    server: SecAggServer,
    clients: Mapping[int, SecAggClient],
    *,
    dropouts: DropoutPlan | None = None,
    traffic: Traffic | None = None,
    tamper: Tamper | None = None,
) -> SecAggOutcome:
    """Drive ``server`` and ``clients`` through the four stages.

    A client whose reply the server rejects (``ProtocolError`` from
    :meth:`SecAggServer.receive`: forged, altered, malformed) is a dropout from
    then on, as in Bonawitz et al.: the server ignores invalid messages.

    Raises:
        SecAggAborted: when dropouts leave too few clients, or a secret cannot
            be rebuilt and verified.
    """
    plan = dropouts or DropoutPlan()
    traffic = traffic if traffic is not None else Traffic()
    up: dict[int, int] = dict.fromkeys(clients, 0)
    down = 0
    refused: set[int] = set()
    rejected: set[int] = set()
    outbox = server.start()
    for stage in STAGES:
        gone = plan.dropped_by(stage) | refused | rejected
        for cid, message in outbox.items():
            if tamper is not None:
                message = tamper(stage, "down", cid, message)
            down += len(message)
            traffic.down += len(message)
            if cid in gone:
                continue
            try:
                reply = clients[cid].step(message)
            except ProtocolError:
                # A client that finds the round unsafe (too few neighbours, a request
                # to reveal both secrets of a peer, a forged key) stops answering: a dropout.
                refused.add(cid)
                continue
            if tamper is not None:
                reply = tamper(stage, "up", cid, reply)
            up[cid] += len(reply)
            traffic.up += len(reply)
            try:
                server.receive(reply)
            except ProtocolError:
                rejected.add(cid)
        outbox = server.finish_stage()
    assert server.result is not None
    return SecAggOutcome(
        result=server.result,
        contributors=server.contributors,
        refused=tuple(sorted(refused)),
        bytes_up=sum(up.values()),
        bytes_down=down,
        bytes_up_by_client=up,
        rejected=tuple(sorted(rejected)),
    )
