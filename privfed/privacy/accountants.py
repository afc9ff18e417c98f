"""Accountants: epsilon of a list of sampled-Gaussian events, via Opacus' RDP and PRV accountants.

A registry maps ``privacy.accountant`` to a function
``epsilon(events, delta) -> float``; adding one is one :func:`register_accountant` call.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from privfed.errors import ConfigError
from privfed.privacy.events import DistributedNoiseEvent, PrivacyEvent, SampledGaussianEvent
from privfed.registry import Registry

__all__ = ["accountant_names", "compute_epsilon", "register_accountant"]

_EpsilonFn = Callable[[Sequence[SampledGaussianEvent], float], float]
_ACCOUNTANTS: Registry[_EpsilonFn] = Registry("accountant", error=ConfigError, field="privacy.accountant")


def register_accountant(name: str, fn: _EpsilonFn, *, overwrite: bool = False) -> None:
    """Register ``fn(events, delta) -> epsilon`` under ``name`` (``privacy.accountant``).

    ``overwrite=True`` replaces an existing entry (re-running a notebook cell).
    """
    _ACCOUNTANTS.register(name, fn, overwrite=overwrite)


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


@functools.lru_cache(maxsize=4096)
def _rdp_one_step(noise_multiplier: float, sample_rate: float) -> npt.NDArray[np.float64]:
    """RDP of one sampled-Gaussian step at Opacus' default orders (cached: a run repeats
    the same (sigma, q) every step, and the RDP of ``steps`` of them is ``steps`` times this)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    out = np.asarray(rdp, dtype=np.float64)
    out.setflags(write=False)
    return out


def _rdp(events: Sequence[SampledGaussianEvent], delta: float) -> float:
    """Opacus' RDP accountant (same orders, same conversion), with each (sigma, q)'s
    per-step RDP computed once: ``RDPAccountant.get_epsilon`` recomputes it for every
    call, which made the per-round ledger of a long DP-SGD run cost seconds per round."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    history = _history(events)
    if not history:
        return 0.0
    rdp = sum(steps * _rdp_one_step(sigma, q) for sigma, q, steps in history)
    eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


def _prv(events: Sequence[SampledGaussianEvent], delta: float) -> float:
    """Opacus' PRV accountant; ``inf`` (with a warning) where its discretisation fails.

    For very little noise (sigma <= ~0.05 over many steps, or ~0.02 at q = 1) Opacus'
    PRV domain grows until it asks for gigabytes (``MemoryError``) or its mean check
    fails (``RuntimeError``). Such noise bounds nothing useful, and an accountant that
    cannot bound epsilon must not report a finite one: ``inf`` makes the ledger stop
    the run and makes calibration search larger sigmas.
    """
    from opacus.accountants import PRVAccountant

    accountant = PRVAccountant()
    accountant.history = _history(events)
    if not accountant.history:
        return 0.0
    try:
        return float(accountant.get_epsilon(delta=delta, eps_error=0.01))
    except (MemoryError, RuntimeError, OverflowError, ValueError) as exc:
        smallest = min(sigma for sigma, _, _ in accountant.history)
        warnings.warn(
            f"the PRV accountant cannot bound epsilon for noise multiplier {smallest:g} "
            f"({type(exc).__name__}); reporting epsilon = inf (privacy.accountant = 'rdp' handles it)",
            RuntimeWarning,
            stacklevel=2,
        )
        return math.inf


register_accountant("rdp", _rdp)
register_accountant("prv", _prv)


def compute_epsilon(events: Sequence[PrivacyEvent], *, delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` of the composition of ``events`` (0 for no events).

    Compositions holding a :class:`DistributedNoiseEvent` (distributed discrete Gaussian or
    Skellam) are accounted by RDP whatever ``accountant`` says
    (:func:`privfed.privacy.distributed.epsilon_rdp`): their bounds are RDP bounds.
    """
    fn = _ACCOUNTANTS.get(accountant)
    if any(isinstance(e, DistributedNoiseEvent) for e in events):
        from privfed.privacy.distributed import epsilon_rdp

        return epsilon_rdp(events, delta=delta)
    return fn([e for e in events if isinstance(e, SampledGaussianEvent)], delta)
