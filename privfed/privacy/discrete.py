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


def _check_scale(name: str, value: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


_POINT_MASS_SIGMA = 0.05


def discrete_gaussian(*, sigma: float, size: int | tuple[int, ...], rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """i.i.d. discrete Gaussian ``N_Z(0, sigma^2)`` draws (Canonne, Kamath, Steinke 2020, Alg. 3).

    Args:
        sigma: the scale parameter (``sigma = 0``: all zeros). The variance is at most ``sigma^2``
            and within ``1e-6`` relative of it for ``sigma >= 1``.
        size: output shape.
        rng: the generator.

    Returns:
        int64 array of ``size``.
    """
    sigma = _check_scale("sigma", sigma)
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
    """i.i.d. symmetric Skellam draws with the given variance: ``Poisson(v/2) - Poisson(v/2)``."""
    variance = _check_scale("variance", variance)
    shape = (size,) if isinstance(size, int) else tuple(size)
    if variance == 0:
        return np.zeros(shape, dtype=np.int64)
    lam = variance / 2
    return rng.poisson(lam, size=shape).astype(np.int64) - rng.poisson(lam, size=shape).astype(np.int64)


def discrete_gaussian_pmf(x: npt.ArrayLike, *, sigma: float) -> npt.NDArray[np.float64]:
    """``P[N_Z(0, sigma^2) = x]`` (the normaliser summed over ``|k| <= 40 sigma + 40``)."""
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
