"""What an attacker sees and knows, kept apart from the attack code.

A :class:`ThreatModel` names the adversary's *view* (one client's upload, the
secure-aggregation sum, the final adapter, or query access to the model) and
its side knowledge. An :class:`Observation` is one concrete thing seen under
that threat model: named parameter updates (gradient or model delta), or
per-example scores from queries. Attacks take observations, never framework
internals, so the same attack runs against a simulation, a recorded
deployment, or a hand-made update in a test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["Observation", "ThreatModel", "View"]

View = Literal["client_update", "secagg_aggregate", "final_adapter", "query"]
_VIEWS = ("client_update", "secagg_aggregate", "final_adapter", "query")


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """The adversary.

    Attributes:
        view: what it observes: ``client_update`` (an honest-but-curious
            server reading one client's upload), ``secagg_aggregate`` (the
            same server under secure aggregation: only the sum of
            ``num_clients`` uploads), ``final_adapter`` (anyone holding the
            released adapter; white-box), ``query`` (black-box losses/logits).
        num_clients: how many clients' uploads are summed into what it sees
            (1 unless ``view == "secagg_aggregate"``).
        knows_architecture / knows_base_weights: white-box knowledge of the
            frozen model (public foundation models: both true by default).
        knows_labels: whether the labels of the attacked batch are known.
        knows_batch_size: whether the attacked batch size is known.
    """

    view: View = "client_update"
    num_clients: int = 1
    knows_architecture: bool = True
    knows_base_weights: bool = True
    knows_labels: bool = False
    knows_batch_size: bool = True

    def __post_init__(self) -> None:
        if self.view not in _VIEWS:
            raise ValueError(f"view must be one of {_VIEWS}, got {self.view!r}")
        if self.num_clients < 1:
            raise ValueError("num_clients must be >= 1")
        if self.view != "secagg_aggregate" and self.num_clients != 1:
            raise ValueError("only the secagg_aggregate view sums several clients")


@dataclasses.dataclass(frozen=True, eq=False)
class Observation:
    """One thing the attacker saw.

    Attributes:
        threat: the threat model it was seen under.
        updates: parameter name -> float array. For a single local step with
            learning rate ``lr`` this is ``-lr * gradient`` of the batch mean
            loss (what a client uploads as its delta); ``gradient()`` undoes
            the scaling. Names are the trainable parameters' names in the
            attacked model.
        learning_rate: the client's local learning rate (to turn a one-step
            SGD delta back into a gradient).
        local_steps: local optimiser steps behind the update (1 = FedSGD).
        batch_size: examples behind each step (as the attacker believes it).
        labels: labels of the attacked batch when the threat model knows them.
    """

    threat: ThreatModel
    updates: Mapping[str, npt.NDArray[np.float32]]
    learning_rate: float = 1.0
    local_steps: int = 1
    batch_size: int = 1
    labels: npt.NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0")
        if self.local_steps < 1 or self.batch_size < 1:
            raise ValueError("local_steps and batch_size must be >= 1")
        if self.labels is not None and not self.threat.knows_labels:
            raise ValueError("labels given but the threat model does not know them")
        for name, value in self.updates.items():
            if not np.all(np.isfinite(value)):
                raise ValueError(f"update {name!r} has non-finite entries")

    def gradient(self, name: str) -> npt.NDArray[np.float64]:
        """The observed update of ``name`` as a gradient (``-update / lr``), float64."""
        return -np.asarray(self.updates[name], dtype=np.float64) / self.learning_rate
