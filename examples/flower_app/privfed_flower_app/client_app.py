"""The ClientApp: one privfed client node per SuperNode (see privfed.transport.flower.client_app)."""

from privfed.transport.flower.client_app import app

__all__ = ["app"]
