"""attacks.audit.bounds against independent computations: exact binomial tails (mpmath), the one-run theorem
written out literally, numerical integration of the hockey-stick divergence, and Google's dp-accounting."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import dp_accounting
import mpmath
import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_mechanism

from attacks.audit import (
    best_one_run_bound,
    canary_cosines,
    canary_directions,
    gaussian_mechanism_delta,
    gaussian_mechanism_epsilon,
    gaussian_pair_delta,
    gaussian_pair_epsilon,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
    one_shot_epsilon,
)

# --------------------------------------------------------------------------- independent one-run reference


def _tails(r: int, eps: float) -> list[mpmath.mpf]:
    """``f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u]`` for ``u = 0..r+1``, exactly at 40 digits."""
    with mpmath.workdps(40):
        q = mpmath.exp(eps) / (1 + mpmath.exp(eps))
        pmf = [(1 - q) ** r]  # P[W = 0], then P[W = w + 1] = P[W = w] (r - w) / (w + 1) q / (1 - q)
        for w in range(r):
            pmf.append(pmf[-1] * (r - w) / (w + 1) * q / (1 - q))
        tails = [mpmath.mpf(0)] * (r + 2)
        for u in range(r, -1, -1):
            tails[u] = tails[u + 1] + pmf[u]
        return tails


def _theorem_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski (2023), Theorem 5.2, literally: ``f(v) + 2 m delta max_{i in [m]} (f(v-i) - f(v))/i``
    with ``f(u) = 1`` for ``u <= 0``; no simplification of the range of ``i``."""
    tails = _tails(r, eps)
    with mpmath.workdps(40):

        def f(u: int) -> mpmath.mpf:
            return mpmath.mpf(1) if u <= 0 else tails[u]

        best = max((f(v - i) - f(v)) / i for i in range(1, m + 1))
        return float(min(f(v) + 2 * m * delta * best, 1))


def _reference_bound(p: Callable[[float], float], alpha: float, hi: float = 60.0) -> float:
    """Own bisection for the boundary ``p(eps) = alpha`` of a p-value increasing in eps; 0 if ``p(0) >= alpha``."""
    if p(0.0) >= alpha:
        return 0.0
    lo = 0.0
    for _ in range(42):  # hi / 2^42 < 1e-11
        mid = 0.5 * (lo + hi)
        if p(mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize(
    ("r", "v", "confidence"),
    [(100, 70, 0.95), (400, 250, 0.95), (50, 50, 0.99), (20, 12, 0.9), (500, 260, 0.95), (2, 2, 0.5)],
)
def test_pure_dp_bound_matches_exact_binomial_tail(r: int, v: int, confidence: float) -> None:
    alpha = 1 - confidence
    expected = _reference_bound(lambda eps: float(_tails(r, eps)[v]), alpha)
    got = one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=0.0, confidence=confidence)
    assert got == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta"),
    [(1000, 100, 90, 1e-5), (1000, 300, 210, 1e-4), (300, 200, 150, 1e-3), (600, 60, 60, 1e-6), (400, 100, 75, 1e-3)],
)
def test_approximate_dp_bound_matches_theorem_5_2(m: int, r: int, v: int, delta: float) -> None:
    for eps in (0.0, 0.3, 1.0, 2.5):
        expected = _theorem_p_value(m, r, v, eps, delta)
        got = one_run_p_value(num_guesses=r, num_correct=v, epsilon=eps, delta=delta, num_canaries=m)
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300)
    expected_bound = _reference_bound(lambda eps: _theorem_p_value(m, r, v, eps, delta), 0.05, hi=20.0)
    got_bound = one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=delta, num_canaries=m)
    assert got_bound == pytest.approx(expected_bound, abs=1e-6)
    assert got_bound > 0  # the cases are chosen so that delta does not erase the signal


def test_delta_term_lowers_the_bound_by_the_right_amount() -> None:
    # 2 m delta = 2: the delta term dominates, so the bound must drop well below the pure-DP one.
    pure = one_run_epsilon_lower_bound(num_guesses=200, num_correct=170, delta=0.0)
    approx = one_run_epsilon_lower_bound(num_guesses=200, num_correct=170, delta=1e-3, num_canaries=1000)
    assert 0 < approx < pure - 0.1
    assert approx == pytest.approx(
        _reference_bound(lambda eps: _theorem_p_value(1000, 200, 170, eps, 1e-3), 0.05, hi=pure), abs=1e-6
    )


def test_bound_increases_with_correct_guesses() -> None:
    for delta, m in ((0.0, None), (1e-5, 1000)):
        bounds = [
            one_run_epsilon_lower_bound(num_guesses=200, num_correct=v, delta=delta, num_canaries=m)
            for v in range(100, 201, 10)
        ]
        assert all(b2 > b1 for b1, b2 in itertools.pairwise(bounds[2:]))  # strictly, once positive
        assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))


def test_bound_is_zero_at_chance_accuracy() -> None:
    for r in (10, 100, 1000):
        for v in (r // 2, r // 2 + 1):
            assert one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=0.0) == 0.0
            assert one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=1e-5, num_canaries=2 * r) == 0.0
    assert one_run_epsilon_lower_bound(num_guesses=0, num_correct=0, delta=0.0) == 0.0


def test_bound_grows_with_guesses_at_fixed_accuracy() -> None:
    for delta in (0.0, 1e-6):
        bounds = [
            one_run_epsilon_lower_bound(num_guesses=r, num_correct=4 * r // 5, delta=delta, num_canaries=10_000)
            for r in (50, 100, 200, 400, 800, 1600)
        ]
        assert all(b2 > b1 for b1, b2 in itertools.pairwise(bounds))
        # ... towards logit(0.8) = log 4, never past it
        assert bounds[-1] < math.log(4) and bounds[-1] > 0.8 * math.log(4)


@pytest.mark.parametrize("r", [1, 5, 20, 100, 1000])
def test_perfect_accuracy_bound_is_logit_of_alpha_root(r: int) -> None:
    # v = r at delta = 0: P[Bin(r, q) >= r] = q^r < alpha  <=>  q < alpha^(1/r), so eps = log(q* / (1 - q*)).
    alpha = 0.05
    q_star = alpha ** (1 / r)
    expected = max(0.0, math.log(q_star / (1 - q_star)))
    got = one_run_epsilon_lower_bound(num_guesses=r, num_correct=r, delta=0.0, confidence=1 - alpha)
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert one_run_epsilon_lower_bound(num_guesses=r, num_correct=r, delta=1e-6, num_canaries=10 * r) <= got


def test_one_run_guesses_counts_top_and_bottom() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2, 0.5, 0.4])
    included = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    # top-3: indices 0 (in), 2 (out), 4 (in) -> 2 correct; bottom-2: 1 (out), 5 (in) -> 1 correct
    assert one_run_guesses(scores, included, k_pos=3, k_neg=2) == (5, 3)
    assert one_run_guesses(scores, included, k_pos=0, k_neg=0) == (0, 0)
    assert one_run_guesses(scores, included, k_pos=8, k_neg=0) == (8, 4)


def test_best_bound_applies_bonferroni() -> None:
    rng = np.random.default_rng(11)
    m = 2000
    included = rng.random(m) < 0.5
    scores = included + rng.normal(0.0, 0.8, m)
    ks = [50, 100, 200, 500, 1000]
    eps, k = best_one_run_bound(scores, included, delta=1e-5, ks=ks)
    corrected, raw = {}, {}
    for kk in ks:
        r, v = one_run_guesses(scores, included, k_pos=kk, k_neg=kk)
        corrected[kk] = one_run_epsilon_lower_bound(
            num_guesses=r, num_correct=v, delta=1e-5, confidence=1 - 0.05 / len(ks), num_canaries=m
        )
        raw[kk] = one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=1e-5, num_canaries=m)
    assert eps == pytest.approx(max(corrected.values()), abs=1e-12)
    assert corrected[k] == eps
    assert 0 < eps < max(raw.values())


def test_one_run_bound_is_valid_on_randomized_response() -> None:
    # Each canary's score is its inclusion bit passed through eps-DP randomized response, so the mechanism is
    # (1, 0)-DP: the 95%-confidence bound may exceed 1 in at most ~5% of runs, yet should detect most of it.
    true_eps, trials, m = 1.0, 300, 1000
    rng = np.random.default_rng(2024)
    keep = math.exp(true_eps) / (1 + math.exp(true_eps))
    bounds = []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        noisy = np.where(rng.random(m) < keep, included, ~included)
        bounds.append(best_one_run_bound(noisy.astype(float), included, delta=0.0, ks=[m // 2])[0])
    arr = np.array(bounds)
    assert np.count_nonzero(arr > true_eps) <= 0.05 * trials
    assert arr.mean() > 0.75 * true_eps


# --------------------------------------------------------------------------- Gaussian mechanism


def _hockey_stick_integral(mu: float, eps: float) -> float:
    """``E_{x ~ N(mu,1)}[(1 - e^eps p0(x)/p1(x))_+]`` by mpmath quadrature over where the integrand is positive."""
    with mpmath.workdps(40):
        mu_m, eps_m = mpmath.mpf(mu), mpmath.mpf(eps)
        x0 = eps_m / mu_m + mu_m / 2  # p1/p0 = exp(mu x - mu^2/2) exceeds e^eps beyond x0

        def integrand(x: mpmath.mpf) -> mpmath.mpf:
            p1 = mpmath.npdf(x, mu_m, 1)
            p0 = mpmath.npdf(x, 0, 1)
            return p1 * (1 - mpmath.exp(eps_m) * p0 / p1)

        return float(mpmath.quad(integrand, [x0, x0 + 1, x0 + 4, x0 + 12, mpmath.inf]))


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-8, 1e-5, 1e-2])
def test_gaussian_epsilon_solves_the_privacy_profile(mu: float, delta: float) -> None:
    eps = gaussian_mechanism_epsilon(mu=mu, delta=delta)
    assert eps > 0
    assert _hockey_stick_integral(mu, eps) == pytest.approx(delta, rel=1e-6)


@pytest.mark.parametrize("mu", [0.05, 0.5, 1.0, 3.0, 10.0, 40.0])
@pytest.mark.parametrize("delta", [1e-10, 1e-5, 1e-2])
def test_gaussian_epsilon_matches_dp_accounting(mu: float, delta: float) -> None:
    eps = gaussian_mechanism_epsilon(mu=mu, delta=delta)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(1.0 / mu, delta), rel=1e-8, abs=1e-10)
    loss = privacy_loss_mechanism.GaussianPrivacyLoss(standard_deviation=1.0 / mu, sensitivity=1.0)
    for e in (0.0, 0.5 * eps, eps):
        assert gaussian_mechanism_delta(mu=mu, epsilon=e) == pytest.approx(loss.get_delta_for_epsilon(e), rel=1e-6)


def test_gaussian_epsilon_edge_cases() -> None:
    assert gaussian_mechanism_epsilon(mu=0.0, delta=1e-5) == 0.0
    # delta(0) = 2 Phi(mu/2) - 1: at or above it no epsilon is needed
    d0 = gaussian_mechanism_delta(mu=1.0, epsilon=0.0)
    assert d0 == pytest.approx(math.erf(0.5 / math.sqrt(2)), rel=1e-12)
    assert gaussian_mechanism_epsilon(mu=1.0, delta=d0 * 1.001) == 0.0
    assert gaussian_mechanism_epsilon(mu=1.0, delta=d0 * 0.999) > 0.0
    with pytest.raises(ValueError):
        gaussian_mechanism_epsilon(mu=1.0, delta=0.0)
    with pytest.raises(ValueError):
        gaussian_mechanism_epsilon(mu=-1.0, delta=1e-5)


def _pair_hockey_stick(m0: float, s0: float, m1: float, s1: float, eps: float) -> float:
    """``integral (p - e^eps q)_+`` for ``p = N(m0, s0^2)``, ``q = N(m1, s1^2)``: sign changes of ``p - e^eps q``
    located by a grid scan plus mpmath.findroot, then quadrature between them."""
    with mpmath.workdps(30):

        def g(x: mpmath.mpf) -> mpmath.mpf:
            return mpmath.npdf(x, m0, s0) - mpmath.exp(eps) * mpmath.npdf(x, m1, s1)

        width = 40 * max(s0, s1)
        grid = np.linspace(min(m0, m1) - width, max(m0, m1) + width, 4001)
        # compare log densities on the grid (plain densities underflow far out)
        log_g = [
            (-((x - m0) ** 2) / (2 * s0**2) - math.log(s0)) - (eps - ((x - m1) ** 2) / (2 * s1**2) - math.log(s1))
            for x in grid
        ]
        roots = [
            float(mpmath.findroot(g, (grid[i], grid[i + 1]), solver="anderson"))
            for i in range(len(grid) - 1)
            if (log_g[i] > 0) != (log_g[i + 1] > 0)
        ]
        # integrate piecewise between roots, with extra breakpoints every few standard deviations
        step = max(s0, s1)
        points = [-mpmath.inf, *roots, mpmath.inf]
        total = mpmath.mpf(0)
        for a, b in itertools.pairwise(points):
            if not mpmath.isfinite(a) and not mpmath.isfinite(b):
                break  # no sign change: p - e^eps q < 0 everywhere
            mid = (
                (a + b) / 2
                if mpmath.isfinite(a) and mpmath.isfinite(b)
                else (b - step if mpmath.isfinite(b) else a + step)
            )
            if g(mid) > 0:
                if not mpmath.isfinite(a):
                    nodes = [a, b - 12 * step, b - 4 * step, b - step, b]
                elif not mpmath.isfinite(b):
                    nodes = [a, a + step, a + 4 * step, a + 12 * step, b]
                else:
                    nodes = [a, b]
                total += mpmath.quad(g, nodes)
        return float(total)


@pytest.mark.parametrize(
    ("m0", "s0", "m1", "s1"),
    [(0.0, 1.0, 1.0, 1.3), (0.0, 1.0, 2.0, 0.8), (0.5, 2.0, -1.0, 2.5), (0.0, 0.01, 0.02, 0.012), (0.0, 1.0, 0.0, 1.5)],
)
@pytest.mark.parametrize("delta", [1e-5, 1e-2])
def test_gaussian_pair_epsilon_solves_both_hockey_sticks(
    m0: float, s0: float, m1: float, s1: float, delta: float
) -> None:
    eps = gaussian_pair_epsilon(mean0=m0, std0=s0, mean1=m1, std1=s1, delta=delta)
    forward = _pair_hockey_stick(m0, s0, m1, s1, eps)
    backward = _pair_hockey_stick(m1, s1, m0, s0, eps)
    assert max(forward, backward) == pytest.approx(delta, rel=1e-6)
    assert gaussian_pair_delta(mean0=m0, std0=s0, mean1=m1, std1=s1, epsilon=eps) == pytest.approx(delta, rel=1e-7)


def test_gaussian_pair_reduces_to_the_mechanism_with_equal_stds() -> None:
    for mu, delta in ((0.5, 1e-5), (2.0, 1e-3), (8.0, 1e-7)):
        expected = gaussian_mechanism_epsilon(mu=mu, delta=delta)
        got = gaussian_pair_epsilon(mean0=3.0, std0=0.2, mean1=3.0 + 0.2 * mu, std1=0.2, delta=delta)
        assert got == pytest.approx(expected, rel=1e-8)
        near = gaussian_pair_epsilon(mean0=3.0, std0=0.2, mean1=3.0 + 0.2 * mu, std1=0.2 * (1 + 1e-9), delta=delta)
        assert near == pytest.approx(expected, rel=1e-6)


# --------------------------------------------------------------------------- one-shot estimate


def test_canary_directions_are_isotropic_unit_vectors() -> None:
    dim, count = 512, 4000
    dirs = canary_directions(dim, count, np.random.default_rng(0))
    assert dirs.dtype == np.float32 and dirs.shape == (count, dim)
    np.testing.assert_allclose(np.linalg.norm(dirs.astype(np.float64), axis=1), 1.0, atol=1e-6)
    # cosine of pairs of independent directions: mean 0, variance exactly 1/dim
    cos = np.sum(dirs[: count // 2].astype(np.float64) * dirs[count // 2 :], axis=1)
    n = count // 2
    assert abs(cos.mean()) < 4 / math.sqrt(dim * n)
    assert cos.std(ddof=1) == pytest.approx(1 / math.sqrt(dim), rel=0.06)  # SE of a std is ~1/sqrt(2n) = 1.6%
    # the coordinate means are centred too (no preferred direction)
    assert np.abs(dirs.astype(np.float64).mean(axis=0)).max() < 5 / math.sqrt(dim * count)


def test_canary_cosines_are_cosines() -> None:
    rng = np.random.default_rng(1)
    dirs = canary_directions(64, 5, rng)
    vec = rng.normal(size=(8, 8))
    cos = canary_cosines(dirs, vec)
    d64 = dirs.astype(np.float64)
    expected = d64 @ vec.reshape(-1) / (np.linalg.norm(d64, axis=1) * np.linalg.norm(vec))
    np.testing.assert_allclose(cos, expected, rtol=1e-12)
    np.testing.assert_allclose(canary_cosines(dirs, 7.0 * d64[2]), canary_cosines(dirs, dirs[2]), rtol=1e-12)
    assert canary_cosines(dirs, dirs[2])[2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        canary_cosines(dirs, np.zeros(64))


@pytest.mark.parametrize(("mu", "delta"), [(1.0, 1e-5), (2.0, 1e-5), (2.0, 1e-3)])
def test_one_shot_recovers_gaussian_epsilon_from_simulated_cosines(mu: float, delta: float) -> None:
    # cosines of canaries never inserted ~ N(0, 1/d); inserted ones shifted by mu standard deviations
    n, scale = 20_000, 1 / math.sqrt(10_000)
    rng = np.random.default_rng(7)
    unobserved = rng.normal(0.0, scale, n)
    observed = rng.normal(mu * scale, scale, n)
    est = one_shot_epsilon(observed_cosines=observed, unobserved_cosines=unobserved, delta=delta)
    assert est.num_observed == est.num_unobserved == n
    se_mu = math.sqrt(2 / n + mu**2 / (2 * n))
    assert est.mu == pytest.approx(mu, abs=4 * se_mu)
    # Spread of the estimate at n = 20k, measured over 50 seeds: sd ~0.1-0.14 with a +0.1-0.15 bias from fitting
    # two standard deviations (any mismatch makes the pair more distinguishable).
    assert est.epsilon == pytest.approx(gaussian_mechanism_epsilon(mu=mu, delta=delta), abs=0.6)


def test_one_shot_with_equal_spreads_is_the_gaussian_mechanism() -> None:
    rng = np.random.default_rng(3)
    unobserved = rng.normal(0.0, 0.01, 500)
    observed = unobserved[::-1] + 0.015  # same sample std, mean shifted by 1.5 sd
    est = one_shot_epsilon(observed_cosines=observed, unobserved_cosines=unobserved, delta=1e-5)
    assert est.std_observed == pytest.approx(est.std_unobserved, rel=1e-12)
    assert est.epsilon == pytest.approx(gaussian_mechanism_epsilon(mu=est.mu, delta=1e-5), rel=1e-6)
    # a wider observed spread with the same means can only add distinguishability
    wider = one_shot_epsilon(
        observed_cosines=est.mean_observed + 1.5 * (observed - est.mean_observed),
        unobserved_cosines=unobserved,
        delta=1e-5,
    )
    assert wider.mu == pytest.approx(est.mu, rel=1e-12)
    assert wider.epsilon > est.epsilon
    # no shift towards the canaries: no evidence
    none = one_shot_epsilon(observed_cosines=unobserved - 0.001, unobserved_cosines=unobserved, delta=1e-5)
    assert none.mu < 0 and none.epsilon == 0.0


def test_positive_only_guesses_top_k_and_abstains_on_the_rest() -> None:
    from attacks.audit import best_one_run_bound, one_run_epsilon_lower_bound

    rng = np.random.default_rng(5)
    included = rng.random(400) < 0.5
    scores = rng.normal(size=400) + 2.0 * included
    ks = [20, 50]
    got, k = best_one_run_bound(scores, included, delta=1e-5, ks=ks, positive_only=True)
    order = np.argsort(-scores, kind="stable")
    want = max(
        one_run_epsilon_lower_bound(
            num_guesses=kk,
            num_correct=int(included[order[:kk]].sum()),
            delta=1e-5,
            confidence=1 - 0.05 / len(ks),
            num_canaries=400,
        )
        for kk in ks
    )
    assert got == pytest.approx(want) and k in ks and got > 0
    # Random scores carry no signal: the bound stays at (or very near) zero.
    null, _ = best_one_run_bound(rng.normal(size=400), included, delta=1e-5, positive_only=True)
    assert null < 0.3
