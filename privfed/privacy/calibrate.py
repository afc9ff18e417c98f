"""Noise calibration: the smallest noise multiplier whose epsilon meets a target."""

from __future__ import annotations

import math
from collections.abc import Callable

from privfed.errors import ConfigError
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.events import SampledGaussianEvent

__all__ = ["calibrate", "calibrate_noise_multiplier"]


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
    tolerance: float = 0.01,
) -> float:
    """Bisection on sigma so that ``epsilon(sigma) <= target_epsilon`` and is within
    ``tolerance`` (relative) of it. Epsilon is decreasing in sigma.

    Raises:
        ConfigError: if no sigma below 1e4 reaches the target.
    """

    def eps(sigma: float) -> float:
        event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps, scope="user")
        return compute_epsilon([event], delta=delta, accountant=accountant)

    try:
        return calibrate(target_epsilon=target_epsilon, epsilon_of=eps, tolerance=tolerance)
    except ConfigError:
        raise ConfigError(
            f"no noise multiplier reaches epsilon {target_epsilon} at delta {delta} "
            f"with sample rate {sample_rate} over {steps} steps"
        ) from None


def calibrate(*, target_epsilon: float, epsilon_of: Callable[[float], float], tolerance: float = 0.01) -> float:
    """Smallest sigma (to ``tolerance``) with ``epsilon_of(sigma) <= target_epsilon``; epsilon_of must decrease.

    Terminates after at most 15 doublings (sigma up to 1e4) and 100 bisection steps. An ``epsilon_of``
    that returns NaN is refused (NaN compares false both ways: the search would return an unchecked sigma).
    """
    if not (isinstance(target_epsilon, int | float) and math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target epsilon must be a finite number > 0; got {target_epsilon!r}")

    def eps(sigma: float) -> float:
        value = float(epsilon_of(sigma))
        if math.isnan(value):
            raise ConfigError(f"the accountant gave epsilon = nan at noise multiplier {sigma:g}")
        return value

    low, high = 0.0, 1.0
    while eps(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ConfigError(f"no noise multiplier below 1e4 reaches epsilon {target_epsilon}")
    for _ in range(100):
        value = eps(high)
        if value <= target_epsilon and target_epsilon - value <= tolerance * target_epsilon:
            break
        mid = (low + high) / 2
        if mid <= 0 or high - low < 1e-9:
            break
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    return high
