"""The ServerApp: privfed's runner over the Flower Grid (see privfed.transport.flower.server_app)."""

from privfed.transport.flower.server_app import app

__all__ = ["app"]
