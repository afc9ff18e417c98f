"""Integer noise samplers (distributed DP): pmfs, variances, shares, generators (issue 16)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.privacy.discrete import (
    discrete_gaussian,
    discrete_gaussian_pmf,
    noise_generator,
    skellam,
    skellam_pmf,
)

N = 200_000
FAILURE = 1e-6  # chance that an honest sampler fails a tolerance below


def _tv(samples: np.ndarray, pmf: np.ndarray, support: np.ndarray) -> float:
    counts = np.array([np.count_nonzero(samples == x) for x in support], dtype=np.float64)
    outside = samples.size - counts.sum()
    return 0.5 * (float(np.abs(counts / samples.size - pmf).sum()) + outside / samples.size + (1 - pmf.sum()))


def _tv_tolerance(pmf: np.ndarray, n: int) -> float:
    """E[TV] <= 1/2 sum sqrt(p (1 - p) / n); TV moves by at most 1/n per sample, so by McDiarmid it
    exceeds its mean by t with probability <= exp(-2 n t^2)."""
    mean = 0.5 * float(np.sqrt(pmf * (1 - pmf) / n).sum())
    return mean + math.sqrt(math.log(1 / FAILURE) / (2 * n))


@pytest.mark.parametrize("sigma", [0.6, 3.0, 25.0])
def test_discrete_gaussian_matches_its_pmf(sigma: float) -> None:
    rng = np.random.default_rng(11)
    x = discrete_gaussian(sigma=sigma, size=N, rng=rng)
    assert x.dtype == np.int64
    support = np.arange(-math.ceil(8 * sigma + 8), math.ceil(8 * sigma + 8) + 1)
    pmf = discrete_gaussian_pmf(support, sigma=sigma)
    tol = _tv_tolerance(pmf, N)
    assert _tv(x, pmf, support) <= tol
    # The test has power: a 10% wider discrete Gaussian is far outside the tolerance.
    assert _tv(x, discrete_gaussian_pmf(support, sigma=1.1 * sigma), support) > 2 * tol


@pytest.mark.parametrize("variance", [0.5, 9.0, 400.0])
def test_skellam_matches_its_pmf(variance: float) -> None:
    rng = np.random.default_rng(12)
    x = skellam(variance=variance, size=N, rng=rng)
    sd = math.sqrt(variance)
    support = np.arange(-math.ceil(10 * sd + 10), math.ceil(10 * sd + 10) + 1)
    pmf = skellam_pmf(support, variance=variance)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-9)
    tol = _tv_tolerance(pmf, N)
    assert _tv(x, pmf, support) <= tol
    assert _tv(x, skellam_pmf(support, variance=1.21 * variance), support) > 2 * tol


def test_discrete_gaussian_variance_is_sigma_squared_for_sigma_at_least_one() -> None:
    for sigma in (1.0, 2.5, 40.0):
        support = np.arange(-math.ceil(40 * sigma + 40), math.ceil(40 * sigma + 40) + 1)
        var = float((discrete_gaussian_pmf(support, sigma=sigma) * support**2).sum())
        assert var <= sigma**2 * (1 + 1e-12) and var == pytest.approx(sigma**2, rel=1e-6)


@pytest.mark.parametrize("kind", ["distributed_gaussian", "skellam"])
def test_sum_of_shares_has_the_target_variance(kind: str) -> None:
    """n clients' shares of variance v/n add up to variance v (within 6 standard errors)."""
    rng = np.random.default_rng(13)
    target, shares = 150.0, 12
    local = math.sqrt(target / shares)
    if kind == "distributed_gaussian":
        draws = [discrete_gaussian(sigma=local, size=50_000, rng=rng) for _ in range(shares)]
    else:
        draws = [skellam(variance=local**2, size=50_000, rng=rng) for _ in range(shares)]
    total = np.sum(draws, axis=0).astype(np.float64)
    var = float(total.var())
    m4 = float(((total - total.mean()) ** 4).mean())
    stderr = math.sqrt((m4 - var**2) / total.size)
    assert abs(var - target) <= 6 * stderr
    assert abs(float(total.mean())) <= 6 * math.sqrt(target / total.size)


@settings(max_examples=25, deadline=None)
@given(sigma=st.floats(0.0, 1e4), size=st.integers(0, 64), seed=st.integers(0, 2**32 - 1))
def test_samplers_return_integers_of_the_asked_shape_reproducibly(sigma: float, size: int, seed: int) -> None:
    a = discrete_gaussian(sigma=sigma, size=(size,), rng=np.random.default_rng(seed))
    b = discrete_gaussian(sigma=sigma, size=(size,), rng=np.random.default_rng(seed))
    assert a.shape == (size,) and a.dtype == np.int64 and np.array_equal(a, b)
    c = skellam(variance=sigma, size=size, rng=np.random.default_rng(seed))
    assert c.shape == (size,) and c.dtype == np.int64
    if sigma == 0:
        assert not a.any() and not c.any()


def test_secure_generator_is_not_the_seeded_one() -> None:
    seeded = noise_generator(secure=False, seeded=np.random.default_rng(5))
    again = noise_generator(secure=False, seeded=np.random.default_rng(5))
    assert np.array_equal(
        discrete_gaussian(sigma=50, size=64, rng=seeded), discrete_gaussian(sigma=50, size=64, rng=again)
    )
    one = discrete_gaussian(sigma=50, size=64, rng=noise_generator(secure=True, seeded=np.random.default_rng(5)))
    two = discrete_gaussian(sigma=50, size=64, rng=noise_generator(secure=True, seeded=np.random.default_rng(5)))
    assert not np.array_equal(one, two)  # 64 draws of sd 50 collide with probability < 1e-100


def test_bad_scales_are_refused() -> None:
    with pytest.raises(ValueError, match="sigma must be"):
        discrete_gaussian(sigma=-1.0, size=3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="variance must be"):
        skellam(variance=float("nan"), size=3, rng=np.random.default_rng(0))


@pytest.mark.parametrize("sigma", [1e-300, 5e-324, 1e-8, 0.049])
def test_a_tiny_discrete_gaussian_is_the_point_mass_at_zero_and_terminates(sigma: float) -> None:
    """sigma**2 underflows for tiny sigma; the sampler used to loop forever on 0/0 (hypothesis found it)."""
    assert not discrete_gaussian(sigma=sigma, size=1000, rng=np.random.default_rng(0)).any()
