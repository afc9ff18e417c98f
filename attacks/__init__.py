"""Privacy attacks and audits against privfed pipelines.

Imports only privfed's public API. Subpackages: ``attacks.inversion``
(gradient inversion of images and text), ``attacks.membership`` (membership
inference scores), ``attacks.audit`` (empirical epsilon lower bounds);
``attacks.metrics`` and ``attacks.threat`` are shared by all of them.
"""

from attacks.threat import Observation, ThreatModel

__all__ = ["Observation", "ThreatModel"]
