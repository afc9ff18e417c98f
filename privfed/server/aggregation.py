"""Aggregation as composition: the registered strategy is always called; DP and secure summation wrap it.

* :class:`StrategyAggregation` calls the strategy: ``aggregate`` over individual
  updates in a plain round, ``aggregate_sum`` over a secure sum.
* :class:`DPFedAvgAggregation` wraps another aggregation with user-level DP-FedAvg
  (McMahan et al. 2018): clip each delta to C (or take the clients' clipped secure
  sum), add Gaussian noise to the sum, and hand the *noised sum* with the expected
  cohort as weight to the inner strategy's ``aggregate_sum``
  (as Flower's ``DifferentialPrivacyServerSideFixedClipping(strategy)`` wraps a strategy).
* :class:`DistributedDPAggregation` is its distributed-DP twin (``privacy.user.mechanism``
  ``distributed_gaussian`` or ``skellam``): the clients already added the integer noise
  before the SecAgg masks, so the decoded sum *is* the noised sum and the server adds none.

A strategy without ``aggregate_sum`` cannot run where only a sum exists, and
:func:`check_strategy_composes` refuses it up front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import cast

import numpy as np
import numpy.typing as npt

from privfed.errors import ConfigError
from privfed.privacy.dpfedavg import DPFedAvgServer
from privfed.privacy.noise import NoiseSource
from privfed.server.strategies import Strategy, SumStrategy
from privfed.transport.messages import ClientUpdate

__all__ = [
    "Aggregate",
    "DPFedAvgAggregation",
    "DistributedDPAggregation",
    "StrategyAggregation",
    "check_strategy_composes",
]


def check_strategy_composes(strategy: Strategy, *, user_dp: bool, secure: bool) -> None:
    """``ConfigError`` unless ``strategy`` can run when DP-FedAvg or secure summation makes its input a sum.

    Under user-level DP the server aggregates DP-FedAvg's noised sum of clipped deltas,
    and under secure aggregation it holds only the sum of the updates: in both the
    strategy is called through ``aggregate_sum(total, *, weight)``. A strategy without
    it (a trimmed mean, a median, Krum) needs every individual update and is refused,
    never silently replaced by the mean.
    """
    if not (user_dp or secure) or callable(getattr(strategy, "aggregate_sum", None)):
        return
    mode = " and ".join(m for m, on in (("user-level DP", user_dp), ("secure aggregation", secure)) if on)
    raise ConfigError(
        f"server.strategy {type(strategy).__name__} cannot run under {mode}: the server only gets a "
        "(noised) sum of the updates and the strategy has no aggregate_sum(total, *, weight); use a "
        "strategy that aggregates from a sum (fedavg, fedadam) or give yours an aggregate_sum"
    )


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """A round's aggregate, ready for ``strategy.apply``.

    Attributes:
        delta: float32[d], the aggregate delta.
        train_loss: the clients' mean training loss (weighted as the aggregate), or NaN.
        clip_norm / unclipped_fraction: user-level DP's C this round and the noised
            unclipped fraction (adaptive clipping), else ``None``.
    """

    delta: npt.NDArray[np.float32]
    train_loss: float = float("nan")
    clip_norm: float | None = None
    unclipped_fraction: float | None = None


class StrategyAggregation:
    """The registered strategy over individual updates (plain rounds) or a sum (secure rounds)."""

    def __init__(self, strategy: Strategy, *, weighting: str) -> None:
        self.strategy = strategy
        self.weighting = weighting

    def from_updates(self, updates: Sequence[ClientUpdate], *, round: int) -> Aggregate | None:
        """``strategy.aggregate`` of the accepted updates (``None`` without any)."""
        if not updates:
            return None
        deltas = np.stack([u.delta for u in updates])
        counts = np.array([u.num_examples for u in updates], dtype=np.float64)
        weights = counts if self.weighting == "examples" else np.ones_like(counts)
        losses = np.array([u.train_loss for u in updates])
        finite = np.isfinite(losses)
        loss = float(np.average(losses[finite], weights=weights[finite])) if finite.any() else float("nan")
        return Aggregate(delta=self.strategy.aggregate(deltas, weights=weights), train_loss=loss)

    def from_sum(
        self, total: npt.NDArray[np.floating], *, contributors: int, loss_sum: float, round: int, **_: float
    ) -> Aggregate | None:
        """``strategy.aggregate_sum`` of a secure sum over its contributors (``None`` without any)."""
        if contributors == 0:
            return None
        strategy = cast(SumStrategy, self.strategy)
        return Aggregate(
            delta=strategy.aggregate_sum(total, weight=float(contributors)), train_loss=loss_sum / contributors
        )


class DPFedAvgAggregation:
    """User-level DP-FedAvg around a strategy: the noised sum of clipped deltas goes to its ``aggregate_sum``.

    The noised sum is released every round, whoever answered (an empty round
    releases pure noise), and the strategy's ``aggregate_sum`` divides it by the
    expected cohort, so one client's sensitivity is C / expected.
    """

    def __init__(
        self, inner: StrategyAggregation, dp: DPFedAvgServer, *, dim: int, noise: Callable[[int], NoiseSource]
    ) -> None:
        self.inner = inner
        self.dp = dp
        self.dim = dim
        self.noise = noise

    def _aggregate(
        self, noised_sum: npt.NDArray[np.float64], loss: float, clip: float, fraction: float | None
    ) -> Aggregate:
        strategy = cast(SumStrategy, self.inner.strategy)
        delta = strategy.aggregate_sum(noised_sum, weight=float(self.dp.expected_clients))
        return Aggregate(delta=delta, train_loss=loss, clip_norm=clip, unclipped_fraction=fraction)

    def from_updates(self, updates: Sequence[ClientUpdate], *, round: int) -> Aggregate:
        deltas = np.stack([u.delta for u in updates]) if updates else np.zeros((0, self.dim), np.float32)
        result = self.dp.aggregate(deltas, noise=self.noise(round))
        # The clients' training loss is not released under user-level DP: it is an exact
        # (un-noised) function of each client's data that the ledger does not cover.
        return self._aggregate(result.noised_sum, float("nan"), result.clip_norm, result.unclipped_fraction)

    def from_sum(
        self,
        total: npt.NDArray[np.floating],
        *,
        contributors: int,
        loss_sum: float,
        round: int,
        centred_count: float = 0.0,
        count_scale: float = 1.0,
    ) -> Aggregate:
        result = self.dp.from_sums(
            clipped_sum=total, centred_count=centred_count, count_scale=count_scale, noise=self.noise(round)
        )
        return self._aggregate(result.noised_sum, float("nan"), result.clip_norm, result.unclipped_fraction)


class DistributedDPAggregation:
    """User-level DP-FedAvg whose noise the clients added (distributed discrete Gaussian or Skellam).

    The decoded secure sum already carries the noise (each contributor's share, added to its
    integer vector before masking), so it goes to the strategy's ``aggregate_sum`` as is, with
    the expected cohort as weight, like :class:`DPFedAvgAggregation`'s noised sum. A round
    whose sum was refused (too few contributors for the credited noise, a wrapped sum, an
    abort) releases nothing and applies nothing. Clip norms are fixed (adaptive clipping
    would need a noised count the clients do not send yet), and the training loss is not sent.
    """

    def __init__(self, inner: StrategyAggregation, dp: DPFedAvgServer) -> None:
        self.inner = inner
        self.dp = dp

    def from_updates(self, updates: Sequence[ClientUpdate], *, round: int) -> Aggregate:
        raise ConfigError("distributed DP (privacy.user.mechanism) runs only under secure aggregation")

    def from_sum(
        self, total: npt.NDArray[np.floating], *, contributors: int, loss_sum: float, round: int, **_: float
    ) -> Aggregate | None:
        if contributors == 0:
            return None
        strategy = cast(SumStrategy, self.inner.strategy)
        delta = strategy.aggregate_sum(np.asarray(total, dtype=np.float64), weight=float(self.dp.expected_clients))
        return Aggregate(delta=delta, train_loss=float("nan"), clip_norm=self.dp.clip_norm, unclipped_fraction=None)
