"""Privacy events: small frozen records of every noise addition, in the spirit of dp_accounting's DpEvent."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, TypedDict, cast

__all__ = [
    "DistributedNoiseEvent",
    "DistributedNoiseEventJSON",
    "PrivacyEvent",
    "PrivacyEventJSON",
    "SampledGaussianEvent",
    "SampledGaussianEventJSON",
    "event_from_json",
]

Scope = Literal["sample", "user"]
Mechanism = Literal["distributed_gaussian", "skellam"]


class SampledGaussianEventJSON(TypedDict):
    """:meth:`SampledGaussianEvent.to_json`: its fields, in their order (a ledger line in a checkpoint)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    scope: Scope
    subject: int | None
    round: int


class DistributedNoiseEventJSON(TypedDict):
    """:meth:`DistributedNoiseEvent.to_json`: its fields, in their order (``mechanism`` tells it apart)."""

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    shares: int
    l2_sensitivity: float
    dim: int
    scope: Scope
    subject: int | None
    round: int


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

    def to_json(self) -> SampledGaussianEventJSON:
        return cast(SampledGaussianEventJSON, dataclasses.asdict(self))  # keys = fields: test_typed_records.py

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SampledGaussianEvent:
        return cls(
            noise_multiplier=float(raw["noise_multiplier"]),
            sample_rate=float(raw["sample_rate"]),
            steps=int(raw["steps"]),
            scope=raw["scope"],
            subject=None if raw.get("subject") is None else int(raw["subject"]),
            round=int(raw.get("round", 0)),
        )


@dataclasses.dataclass(frozen=True)
class DistributedNoiseEvent:
    """``steps`` compositions of a Poisson-subsampled sum of integer noise shares added by clients.

    The clients' integer vectors (L2 norm at most ``l2_sensitivity`` each, after scaling,
    rotation and rounding) are summed under secure aggregation with ``shares`` noise shares
    credited to the sum: either ``shares`` discrete Gaussians ``N_Z(0, sigma_local^2)``
    (Kairouz, Liu, Steinke 2021) or Skellam shares of variance ``sigma_local^2`` (Agarwal,
    Kairouz, Liu 2021), with ``sigma_local = noise_multiplier * l2_sensitivity / sqrt(shares)``.
    See :mod:`privfed.privacy.distributed` for the bounds.

    Attributes:
        mechanism: ``"distributed_gaussian"`` or ``"skellam"``.
        noise_multiplier: z, the credited total noise std divided by ``l2_sensitivity``.
        sample_rate: q, the probability each client is in a step.
        steps: number of compositions.
        shares: how many clients' noise shares the accountant credits (>= 1).
        l2_sensitivity: one client's L2 bound in integer units (after rounding).
        dim: how many integer coordinates carry the signal and the noise.
        scope: always ``"user"``.
        round: the federated round it happened in.
    """

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    shares: int
    l2_sensitivity: float
    dim: int
    scope: Scope = "user"
    subject: int | None = None
    round: int = 0

    def __post_init__(self) -> None:
        if self.mechanism not in ("distributed_gaussian", "skellam"):
            raise ValueError(f"mechanism must be 'distributed_gaussian' or 'skellam'; got {self.mechanism!r}")
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0; got {self.noise_multiplier}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1]; got {self.sample_rate}")
        if self.steps < 0 or self.shares < 1 or self.dim < 1:
            raise ValueError(f"need steps >= 0, shares >= 1, dim >= 1; got {self.steps}, {self.shares}, {self.dim}")
        if not self.l2_sensitivity > 0:
            raise ValueError(f"l2_sensitivity must be > 0; got {self.l2_sensitivity}")
        if self.scope != "user":
            raise ValueError(f"distributed noise is user-level; got scope {self.scope!r}")

    @property
    def local_stddev(self) -> float:
        """Each share's std (integer units)."""
        return float(self.noise_multiplier * self.l2_sensitivity / (self.shares**0.5))

    def to_json(self) -> DistributedNoiseEventJSON:
        return cast(DistributedNoiseEventJSON, dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DistributedNoiseEvent:
        return cls(
            mechanism=raw["mechanism"],
            noise_multiplier=float(raw["noise_multiplier"]),
            sample_rate=float(raw["sample_rate"]),
            steps=int(raw["steps"]),
            shares=int(raw["shares"]),
            l2_sensitivity=float(raw["l2_sensitivity"]),
            dim=int(raw["dim"]),
            scope=raw.get("scope", "user"),
            round=int(raw.get("round", 0)),
        )


PrivacyEvent: TypeAlias = SampledGaussianEvent | DistributedNoiseEvent
PrivacyEventJSON: TypeAlias = SampledGaussianEventJSON | DistributedNoiseEventJSON


def event_from_json(raw: Mapping[str, Any]) -> PrivacyEvent:
    """The event a ``to_json`` dict describes (a distributed one carries ``mechanism``)."""
    if "mechanism" in raw:
        return DistributedNoiseEvent.from_json(raw)
    return SampledGaussianEvent.from_json(raw)
