"""Privacy events: small frozen records of every noise addition, in the spirit of dp_accounting's DpEvent."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

__all__ = ["SampledGaussianEvent"]

Scope = Literal["sample", "user"]


@dataclasses.dataclass(frozen=True)
class SampledGaussianEvent:
    """``steps`` compositions of the Poisson-subsampled Gaussian mechanism.

    Attributes:
        noise_multiplier: sigma, noise std divided by the L2 sensitivity (clip norm).
        sample_rate: q, the probability each unit (record or client) is in a step.
        steps: number of compositions.
        scope: ``"sample"`` (a client's records, DP-SGD) or ``"user"`` (clients, DP-FedAvg).
        subject: the client whose records this spends (sample scope), or ``None``.
        round: the federated round it happened in.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    scope: Scope
    subject: int | None = None
    round: int = 0

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0; got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0; got {self.steps}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> SampledGaussianEvent:
        return cls(
            noise_multiplier=float(raw["noise_multiplier"]),
            sample_rate=float(raw["sample_rate"]),
            steps=int(raw["steps"]),
            scope=raw["scope"],
            subject=None if raw.get("subject") is None else int(raw["subject"]),
            round=int(raw.get("round", 0)),
        )
