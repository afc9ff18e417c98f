"""Transports move the server's messages to client nodes and their replies back."""

import privfed.transport.flower  # noqa: F401  registers the Flower transports (flwr imported lazily)
from privfed.transport.base import Exchange, Reply, Transport, make_transport, register_transport, transport_names
from privfed.transport.messages import ClientUpdate, Decline, GlobalModel, SecureRoundRequest
from privfed.transport.simulation import SimulationTransport

__all__ = [
    "ClientUpdate",
    "Decline",
    "Exchange",
    "GlobalModel",
    "Reply",
    "SecureRoundRequest",
    "SimulationTransport",
    "Transport",
    "make_transport",
    "register_transport",
    "transport_names",
]
