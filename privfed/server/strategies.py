"""Server strategies: aggregate client deltas and update the global adapter.

Pure numpy over flat ``float32`` vectors. A strategy is a small object with
``aggregate`` (weighted mean of deltas), ``apply`` (server optimizer step) and
``state_arrays``/``load_state_arrays`` for checkpoints. New strategies are one
:func:`register_strategy` call.

Which hooks run under each privacy mode:

============================  ======================  =====================
mode                          aggregation hook        ``apply``
============================  ======================  =====================
plain / record-level DP-SGD   ``aggregate``           every round
user-level DP (DP-FedAvg)     ``aggregate_sum`` of    every round
                              the noised sum
secure aggregation (SecAgg+)  ``aggregate_sum`` of    every round
                              the secure sum
============================  ======================  =====================

Under the last two the strategy is still called, through ``aggregate_sum(total, *,
weight)``: the aggregate from a sum of deltas and their weight (DP-FedAvg's noised sum
over the expected cohort, or the decoded secure sum over its contributors). A strategy
that cannot work from a sum (a trimmed mean, a median) has no ``aggregate_sum`` and is
refused with a ``ConfigError`` (:func:`privfed.server.check_strategy_composes`).

A strategy with settings of its own registers a small frozen dataclass with it
(``register_strategy("fedadam", factory, config=FedAdamConfig)``); a config file
sets them in the strategy's table (``[server.fedadam]``), and the factory reads
them as ``server_config.strategy_config``. This module never imports
:mod:`privfed.config`: the factory gets the ``ServerConfig`` as an argument.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from privfed.config_fields import check_config_class, config_field
from privfed.errors import ConfigError
from privfed.registry import Registry

__all__ = [
    "FedAdam",
    "FedAdamConfig",
    "FedAvg",
    "Strategy",
    "SumStrategy",
    "make_strategy",
    "register_strategy",
    "strategy_config_class",
    "strategy_names",
    "unregister_strategy",
    "weighted_mean",
]

FloatVector = npt.NDArray[np.float32]


def weighted_mean(deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> FloatVector:
    """Weighted mean of client deltas.

    Args:
        deltas: float32[n, d], one row per client.
        weights: float[n], non-negative with a positive sum (e.g. example counts).

    Returns:
        float32[d], ``sum_i w_i delta_i / sum_i w_i``, accumulated in float64.
    """
    w = np.asarray(weights, dtype=np.float64)
    if deltas.ndim != 2 or w.shape != (deltas.shape[0],):
        raise ValueError(f"deltas must be [n, d] with n weights; got {deltas.shape} and {w.shape}")
    if deltas.shape[0] == 0 or np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and have a positive sum")
    mean: FloatVector = ((w / w.sum()) @ deltas.astype(np.float64)).astype(np.float32)
    return mean


class Strategy(Protocol):
    """What the server needs from a strategy."""

    def aggregate(self, deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> FloatVector: ...

    def apply(self, global_vector: FloatVector, aggregate: FloatVector) -> FloatVector: ...

    def state_arrays(self) -> dict[str, npt.NDArray[np.float32]]: ...

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None: ...


class SumStrategy(Strategy, Protocol):
    """A strategy that can aggregate from a sum (under secure aggregation or user-level DP)."""

    def aggregate_sum(self, total: npt.NDArray[np.floating], *, weight: float) -> FloatVector: ...


class FedAvg:
    """FedAvg (McMahan et al. 2017) with a server learning rate: ``x += lr * mean(delta)``."""

    def __init__(self, *, learning_rate: float = 1.0) -> None:
        self.learning_rate = learning_rate

    def aggregate(self, deltas: npt.NDArray[np.float32], *, weights: npt.ArrayLike) -> FloatVector:
        return weighted_mean(deltas, weights=weights)

    def aggregate_sum(self, total: npt.NDArray[np.floating], *, weight: float) -> FloatVector:
        """The mean from a sum of (weighted) deltas and their total weight: what a secure sum or
        DP-FedAvg's noised sum gives (``weight``: the contributors, or DP-FedAvg's expected cohort)."""
        mean: FloatVector = (np.asarray(total, dtype=np.float64) / weight).astype(np.float32)
        return mean

    def apply(self, global_vector: FloatVector, aggregate: FloatVector) -> FloatVector:
        return (global_vector + np.float32(self.learning_rate) * aggregate).astype(np.float32)

    def state_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        return {}

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class FedAdamConfig:
    """FedAdam's server optimizer (Reddi et al. 2021): Adam moments over the mean client delta."""

    beta1: float = config_field(0.9, ge=0.0, lt=1.0, help="First-moment decay.")
    beta2: float = config_field(0.99, ge=0.0, lt=1.0, help="Second-moment decay.")
    tau: float = config_field(1e-3, gt=0.0, help="Adaptivity: the offset added to the root of the second moment.")


class FedAdam(FedAvg):
    """FedAdam (Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2).

    The mean delta is a pseudo-gradient:
    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``, ``x += lr * m / (sqrt(v) + tau)``
    (no bias correction, as in the paper).
    """

    def __init__(self, *, learning_rate: float, beta1: float, beta2: float, tau: float) -> None:
        super().__init__(learning_rate=learning_rate)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: FloatVector | None = None
        self.v: FloatVector | None = None

    def apply(self, global_vector: FloatVector, aggregate: FloatVector) -> FloatVector:
        g = aggregate.astype(np.float64)
        m = np.zeros_like(g) if self.m is None else self.m.astype(np.float64)
        v = np.zeros_like(g) if self.v is None else self.v.astype(np.float64)
        m = self.beta1 * m + (1 - self.beta1) * g
        v = self.beta2 * v + (1 - self.beta2) * g * g
        self.m, self.v = m.astype(np.float32), v.astype(np.float32)
        step = self.learning_rate * m / (np.sqrt(v) + self.tau)
        return (global_vector.astype(np.float64) + step).astype(np.float32)

    def state_arrays(self) -> dict[str, npt.NDArray[np.float32]]:
        if self.m is None or self.v is None:
            return {}
        return {"m": self.m, "v": self.v}

    def load_state_arrays(self, arrays: Mapping[str, npt.NDArray[np.float32]]) -> None:
        if arrays:
            self.m = np.array(arrays["m"], dtype=np.float32)
            self.v = np.array(arrays["v"], dtype=np.float32)


# factory(server_config) -> Strategy, where server_config is the run's privfed.config.ServerConfig
# (typed Any here: this module does not import privfed.config).
_Factory = Callable[[Any], Strategy]


@dataclasses.dataclass(frozen=True)
class _Entry:
    factory: _Factory
    config: type[Any] | None


_STRATEGIES: Registry[_Entry] = Registry("strategy", error=ConfigError, field="server.strategy")


def register_strategy(
    name: str, factory: _Factory, *, config: type[Any] | None = None, overwrite: bool = False
) -> None:
    """Register ``factory(server_config) -> Strategy`` under ``name`` (``server.strategy``).

    ``config``, when given, is the strategy's own settings: a frozen dataclass
    whose fields all have defaults (rules as in :func:`privfed.config_fields.config_field`).
    A config file sets them in the ``[server.<name>]`` table; the factory reads
    them as ``server_config.strategy_config`` (an instance of ``config``).
    ``overwrite=True`` replaces an existing registration (re-running a notebook cell).

    Raises:
        ConfigError: ``name`` already registered (without ``overwrite``), or ``config``
            is not a frozen dataclass with defaults.
    """
    if config is not None:
        check_config_class(config, where=f"register_strategy({name!r}, config=...)")
    _STRATEGIES.register(name, _Entry(factory, config), overwrite=overwrite)


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (a notebook or a test cleaning up after itself)."""
    _STRATEGIES.unregister(name)


def strategy_names() -> tuple[str, ...]:
    """Registered strategies, sorted."""
    return _STRATEGIES.names()


def strategy_config_class(name: str) -> type[Any] | None:
    """The config class ``name`` registered (its ``[server.<name>]`` table), or ``None`` if it has no settings.

    Raises:
        ConfigError: ``name`` is not a registered strategy.
    """
    return _STRATEGIES.get(name).config


def make_strategy(cfg: Any) -> Strategy:
    """The strategy named by ``cfg.strategy`` (a ``ServerConfig``), built by its factory from ``cfg``."""
    return _STRATEGIES.get(cfg.strategy).factory(cfg)


def _fedadam(cfg: Any) -> FedAdam:
    settings: FedAdamConfig = cfg.strategy_config
    return FedAdam(learning_rate=cfg.learning_rate, beta1=settings.beta1, beta2=settings.beta2, tau=settings.tau)


register_strategy("fedavg", lambda c: FedAvg(learning_rate=c.learning_rate))
register_strategy("fedadam", _fedadam, config=FedAdamConfig)
