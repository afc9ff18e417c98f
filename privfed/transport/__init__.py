"""Transports move the server's broadcast to clients and their updates back."""

from privfed.transport.base import RoundExchange, Transport
from privfed.transport.messages import ClientUpdate, GlobalModel
from privfed.transport.simulation import SimulationTransport

__all__ = ["ClientUpdate", "GlobalModel", "RoundExchange", "SimulationTransport", "Transport"]
