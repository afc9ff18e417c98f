"""Flower engines for privfed: the Simulation Engine (Ray) and the Deployment Engine.

Both carry privfed's own messages (the bytes a :class:`~privfed.client.node.ClientNode`
reads and writes) as ``bytes`` in a Flower ``ConfigRecord``; nothing is pickled.
The client side is one ``ClientApp`` (:mod:`privfed.transport.flower.client_app`) that
builds its node from the privfed config carried in every message.

``transport.kind = "flower-simulation"`` runs every exchange on Flower's Simulation
Engine, started in the background by the transport; ``"flower-deployment"`` is the
transport the privfed ``ServerApp`` (``examples/flower_app``) hands to the runner
inside a ``flwr run``. ``flwr`` is imported only when one of them is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from privfed.errors import ConfigError
from privfed.transport.base import Transport, register_transport

__all__: list[str] = []


def _flower_simulation(*, nodes: Sequence[Any], config: Any) -> Transport:
    try:
        from privfed.transport.flower.simulation import FlowerSimulationTransport
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            f"transport.kind = 'flower-simulation' needs flwr[simulation] (pip install 'privfed[flower]'): {exc}"
        ) from None
    return FlowerSimulationTransport(config=config)


def _flower_deployment(*, nodes: Sequence[Any], config: Any) -> Transport:
    from privfed.transport.flower.grid import active_grid_transport

    return active_grid_transport(config=config, nodes=nodes)


register_transport("flower-simulation", _flower_simulation)
register_transport("flower-deployment", _flower_deployment)
