"""Accountants: epsilon of a list of sampled-Gaussian events, via Opacus' RDP and PRV accountants.

A registry maps ``privacy.accountant`` to a function
``epsilon(events, delta) -> float``; adding one is one :func:`register_accountant` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from privfed.errors import ConfigError
from privfed.privacy.events import SampledGaussianEvent
from privfed.registry import Registry

__all__ = ["accountant_names", "compute_epsilon", "register_accountant"]

_EpsilonFn = Callable[[Sequence[SampledGaussianEvent], float], float]
_ACCOUNTANTS: Registry[_EpsilonFn] = Registry("accountant", error=ConfigError, field="privacy.accountant")


def register_accountant(name: str, fn: _EpsilonFn) -> None:
    """Register ``fn(events, delta) -> epsilon`` under ``name`` (``privacy.accountant``)."""
    _ACCOUNTANTS.register(name, fn)


def accountant_names() -> tuple[str, ...]:
    return _ACCOUNTANTS.names()


def _history(events: Sequence[SampledGaussianEvent]) -> list[tuple[float, float, int]]:
    """Opacus' history format, merging runs of identical (sigma, q)."""
    merged: list[tuple[float, float, int]] = []
    for e in events:
        if e.steps == 0:
            continue
        if merged and merged[-1][:2] == (e.noise_multiplier, e.sample_rate):
            sigma, q, steps = merged.pop()
            merged.append((sigma, q, steps + e.steps))
        else:
            merged.append((e.noise_multiplier, e.sample_rate, e.steps))
    return merged


def _rdp(events: Sequence[SampledGaussianEvent], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = _history(events)
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta))


def _prv(events: Sequence[SampledGaussianEvent], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = _history(events)
    if not accountant.history:
        return 0.0
    return float(accountant.get_epsilon(delta=delta, eps_error=0.01))


register_accountant("rdp", _rdp)
register_accountant("prv", _prv)


def compute_epsilon(events: Sequence[SampledGaussianEvent], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0 for no events)."""
    return _ACCOUNTANTS.get(accountant)(events, delta)
