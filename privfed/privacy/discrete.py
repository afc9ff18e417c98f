"""Integer noise for distributed DP: the discrete Gaussian and the Skellam distribution (pure numpy).

* Discrete Gaussian ``N_Z(0, sigma^2)``: ``P[X = x] ∝ exp(-x^2 / (2 sigma^2))`` on the integers.
  Sampled as in Canonne, Kamath, Steinke 2020 ("The Discrete Gaussian for Differential
  Privacy", Algorithm 3): draw ``Y`` from the discrete Laplace with scale ``t = floor(sigma) + 1``
  and accept it with probability ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``. The discrete
  Laplace is drawn as the difference of two i.i.d. geometric variables with ratio ``exp(-1/t)``
  (the same distribution as their Algorithm 2), vectorised: rejected coordinates are redrawn
  until every coordinate is accepted. The distribution is exact up to the float64 arithmetic of
  the generator's geometric and uniform draws (the paper's reference code uses exact rationals
  for its Bernoulli(exp(-gamma)) coins; with float coins the acceptance probabilities are
  off by at most ~1e-16 relative, and the output is still an integer, so there is no
  floating-point lattice for an attacker to exploit as in Mironov 2012).
* Skellam ``Sk(mu/2, mu/2)``: the difference of two independent Poisson(mu/2) draws; variance
  ``mu`` (Agarwal, Kairouz, Liu 2021). Sums of independent Skellam shares are Skellam again,
  so ``n`` shares of variance ``mu/n`` add up to exactly ``Sk(mu/2, mu/2)``.

Randomness comes from an injected :class:`numpy.random.Generator`; :func:`noise_generator`
gives either the seeded one (reproducible) or one keyed from the OS CSPRNG (``privacy.secure_noise``).
"""

from __future__ import annotations

import math
import os

import numpy as np
import numpy.typing as npt

__all__ = [
    "discrete_gaussian",
    "discrete_gaussian_pmf",
    "noise_generator",
    "skellam",
    "skellam_pmf",
]


def noise_generator(*, secure: bool, seeded: np.random.Generator) -> np.random.Generator:
    """``seeded`` (reproducible from the run's seed), or with ``secure`` a Philox generator keyed with
    128 bits from ``os.urandom``: unpredictable from any seed, not reproducible (Philox is a
    counter-mode generator built from a block-cipher-like bijection, far stronger than PCG64
    against state recovery; each client-round gets a fresh key)."""
    if not secure:
        return seeded
    key = int.from_bytes(os.urandom(16), "little")
    return np.random.Generator(np.random.Philox(key=key))


def _check_scale(name: str, value: float, *, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be at most {high:.6g} (2**{math.log2(high):g}); got {value!r}")
    return float(value)


_POINT_MASS_SIGMA = 0.05
#: Largest discrete Gaussian scale: the discrete Laplace proposals have mean |Y| ~ sigma, and above
#: ~2**60 numpy's int64 geometric draws wrap or saturate (sigma = 1e19 gave std 4.9e18, sigma = 1e30
#: all zeros, sigma > 1.3e154 an OverflowError in sigma**2). At 2**52 a proposal beyond 2**62 has
#: probability about exp(-1024). Distributed DP plans never ask for more than 2**51 (secagg.bits <= 52).
MAX_SIGMA = 2.0**52
#: Largest Poisson mean drawn in one ``rng.poisson`` call. numpy's PTRS sampler compares log
#: densities of size ~lam log(lam) in float64, and from about 2**47 their rounding shows: measured on
#: 2e6 draws, the variance is +4.7% at 2**47, +8.5% at 2**50 and +40% at 1e16 (kurtosis 3.4-5, not 3),
#: and above ~2**63 it raises "lam value too large". Up to 2**46 variance and kurtosis match within
#: sampling error. Larger means are drawn as sums of equal pieces (Poisson is additive: exact).
_POISSON_MAX_LAM = 2.0**44
#: Largest Skellam variance (std 2**26): at most 128 pieces per Poisson (variance / 2 <= 2**51), so a
#: draw costs at most 128 times an ordinary one (~45 s for 1e6 coordinates; 2**55 took ~6 min).
#: Distributed DP plans refuse more (see plan_distributed_noise).
MAX_SKELLAM_VARIANCE = 2.0**52
#: discrete_gaussian_pmf sums its normaliser over 80 sigma + 81 points: cap that at ~1e7.
_MAX_PMF_SIGMA = 1e5


def discrete_gaussian(*, sigma: float, size: int | tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """i.i.d. discrete Gaussian ``N_Z(0, sigma^2)`` draws (Canonne, Kamath, Steinke 2020, Alg. 3).

    Args:
        sigma: the scale parameter (``sigma = 0``: all zeros), at most :data:`MAX_SIGMA` (2**52).
            The variance is at most ``sigma^2`` and within ``1e-6`` relative of it for ``sigma >= 1``.
        size: output shape.
        rng: the generator.

    Returns:
        int64 array of ``size``.

    Raises:
        ValueError: ``sigma`` negative, not finite or above :data:`MAX_SIGMA`.

    Terminates: each round of the rejection loop accepts a coordinate with probability above 0.4
    for every ``0.05 <= sigma <= MAX_SIGMA`` (measured: 0.45 near sigma = 0.3, 0.76 for large
    sigma), so ``n`` coordinates need about ``log(n) / 0.6`` rounds (tests/property/test_termination.py).
    """
    sigma = _check_scale("sigma", sigma, high=MAX_SIGMA)
    shape = (size,) if isinstance(size, int) else tuple(size)
    n = int(np.prod(shape))
    out = np.zeros(n, dtype=np.int64)
    if sigma < _POINT_MASS_SIGMA or n == 0:
        # N_Z(0, sigma^2) puts mass below 2 exp(-1 / (2 sigma^2)) (< 1e-86 here) off 0: the float coin
        # flips below cannot resolve it, and sigma**2 would underflow to 0 for tiny sigma (0/0 in the
        # acceptance test: a loop that never accepts).
        return out.reshape(shape)
    t = math.floor(sigma) + 1
    p = -math.expm1(-1.0 / t)  # success probability of a geometric with ratio exp(-1/t)
    todo = np.arange(n)
    while todo.size:
        m = todo.size
        # numpy's geometric counts trials (>= 1); the difference of two is the discrete Laplace
        # with P[Y = y] ∝ exp(-|y| / t) (CKS20 Alg. 2 samples the same distribution).
        y = rng.geometric(p, size=m).astype(np.int64) - rng.geometric(p, size=m).astype(np.int64)
        accept = rng.random(m) < np.exp(-((np.abs(y) - sigma**2 / t) ** 2) / (2 * sigma**2))
        out[todo[accept]] = y[accept]
        todo = todo[~accept]
    return out.reshape(shape)


def skellam(*, variance: float, size: int | tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """i.i.d. symmetric Skellam draws with the given variance: ``Poisson(v/2) - Poisson(v/2)``.

    Raises:
        ValueError: ``variance`` negative, not finite or above :data:`MAX_SKELLAM_VARIANCE` (2**52).

    Each Poisson mean above 2**44 is split into equal pieces drawn separately (numpy's sampler is
    inaccurate for means beyond ~2**47); below it the draws are one ``rng.poisson`` call each, as before.
    """
    variance = _check_scale("variance", variance, high=MAX_SKELLAM_VARIANCE)
    shape = (size,) if isinstance(size, int) else tuple(size)
    if variance == 0:
        return np.zeros(shape, dtype=np.int64)
    lam = variance / 2
    pieces = math.ceil(lam / _POISSON_MAX_LAM)
    if pieces == 1:
        return rng.poisson(lam, size=shape).astype(np.int64) - rng.poisson(lam, size=shape).astype(np.int64)
    # Sk(lam, lam) is the sum of `pieces` independent Sk(lam / pieces, lam / pieces).
    out = np.zeros(shape, dtype=np.int64)
    for _ in range(pieces):
        out += rng.poisson(lam / pieces, size=shape).astype(np.int64)
        out -= rng.poisson(lam / pieces, size=shape).astype(np.int64)
    return out


def discrete_gaussian_pmf(x: npt.ArrayLike, *, sigma: float) -> npt.NDArray[np.float64]:
    """``P[N_Z(0, sigma^2) = x]`` (the normaliser summed over ``|k| <= 40 sigma + 40``; ``0 < sigma <= 1e5``)."""
    if not 0 < sigma <= _MAX_PMF_SIGMA:
        raise ValueError(f"sigma must be in (0, {_MAX_PMF_SIGMA:g}]; got {sigma!r}")
    support = np.arange(-math.ceil(40 * sigma + 40), math.ceil(40 * sigma + 40) + 1, dtype=np.float64)
    norm = float(np.exp(-(support**2) / (2 * sigma**2)).sum())
    xs = np.asarray(x, dtype=np.float64)
    out: npt.NDArray[np.float64] = np.exp(-(xs**2) / (2 * sigma**2)) / norm
    return out


def skellam_pmf(x: npt.ArrayLike, *, variance: float) -> npt.NDArray[np.float64]:
    """``P[Sk(v/2, v/2) = x] = exp(-v) I_|x|(v)`` (modified Bessel function of the first kind)."""
    from scipy.special import ive

    xs = np.abs(np.asarray(x, dtype=np.float64))
    # ive(k, v) = I_k(v) exp(-v): numerically stable for large v.
    out: npt.NDArray[np.float64] = ive(xs, variance)
    return out
