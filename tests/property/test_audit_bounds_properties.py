"""Properties of attacks.audit.bounds: signs, monotonicity, round trips, invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from attacks.audit import (
    canary_directions,
    gaussian_mechanism_delta,
    gaussian_mechanism_epsilon,
    gaussian_pair_epsilon,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
    one_shot_epsilon,
)

mus = st.floats(0.01, 30.0)
deltas = st.floats(1e-12, 0.5)


@settings(max_examples=60, deadline=None)
@given(mu=mus, delta=deltas)
def test_gaussian_epsilon_is_nonnegative_and_round_trips(mu: float, delta: float) -> None:
    eps = gaussian_mechanism_epsilon(mu=mu, delta=delta)
    assert eps >= 0.0 and math.isfinite(eps)
    back = gaussian_mechanism_delta(mu=mu, epsilon=eps)
    if eps > 0:
        assert back == pytest.approx(delta, rel=1e-6)
    else:  # already (0, delta)-DP
        assert back <= delta * (1 + 1e-9)


@settings(max_examples=40, deadline=None)
@given(mu1=mus, mu2=mus, delta=deltas)
def test_gaussian_epsilon_increases_with_mu(mu1: float, mu2: float, delta: float) -> None:
    lo, hi = sorted((mu1, mu2))
    assert gaussian_mechanism_epsilon(mu=lo, delta=delta) <= gaussian_mechanism_epsilon(mu=hi, delta=delta) + 1e-9


@settings(max_examples=40, deadline=None)
@given(mu=mus, d1=deltas, d2=deltas)
def test_gaussian_epsilon_decreases_with_delta(mu: float, d1: float, d2: float) -> None:
    lo, hi = sorted((d1, d2))
    assert gaussian_mechanism_epsilon(mu=mu, delta=hi) <= gaussian_mechanism_epsilon(mu=mu, delta=lo) + 1e-9


@settings(max_examples=40, deadline=None)
@given(mu=mus, e1=st.floats(0.0, 500.0), e2=st.floats(0.0, 500.0))
def test_gaussian_delta_decreases_with_epsilon(mu: float, e1: float, e2: float) -> None:
    lo, hi = sorted((e1, e2))
    d_lo, d_hi = gaussian_mechanism_delta(mu=mu, epsilon=lo), gaussian_mechanism_delta(mu=mu, epsilon=hi)
    assert 0.0 <= d_hi <= d_lo * (1 + 1e-12)
    assert d_lo <= 1.0


@settings(max_examples=40, deadline=None)
@given(
    m0=st.floats(-5, 5),
    s0=st.floats(0.1, 5),
    m1=st.floats(-5, 5),
    ratio=st.floats(0.5, 2.0),
    shift=st.floats(-100, 100),
    scale=st.floats(1e-3, 1e3),
    delta=st.floats(1e-9, 0.1),
)
def test_gaussian_pair_is_symmetric_and_affine_invariant(
    m0: float, s0: float, m1: float, ratio: float, shift: float, scale: float, delta: float
) -> None:
    s1 = s0 * ratio
    eps = gaussian_pair_epsilon(mean0=m0, std0=s0, mean1=m1, std1=s1, delta=delta)
    assert eps >= 0.0
    swapped = gaussian_pair_epsilon(mean0=m1, std0=s1, mean1=m0, std1=s0, delta=delta)
    assert swapped == pytest.approx(eps, rel=1e-6, abs=1e-8)
    moved = gaussian_pair_epsilon(
        mean0=shift + scale * m0, std0=scale * s0, mean1=shift + scale * m1, std1=scale * s1, delta=delta
    )
    assert moved == pytest.approx(eps, rel=1e-5, abs=1e-6)
    same_std = gaussian_pair_epsilon(mean0=m0, std0=s0, mean1=m1, std1=s0, delta=delta)
    assert same_std == pytest.approx(gaussian_mechanism_epsilon(mu=abs(m1 - m0) / s0, delta=delta), rel=1e-6, abs=1e-8)


one_run_cases = st.integers(1, 300).flatmap(
    lambda r: st.tuples(st.just(r), st.integers(0, r), st.integers(r, 3000), st.floats(1e-8, 1e-3))
)


@settings(max_examples=30, deadline=None)
@given(case=one_run_cases)
def test_one_run_bound_is_the_edge_of_the_rejection_region(case: tuple[int, int, int, float]) -> None:
    r, v, m, delta = case
    eps = one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=delta, num_canaries=m)
    pure = one_run_epsilon_lower_bound(num_guesses=r, num_correct=v, delta=0.0)
    assert 0.0 <= eps <= pure  # the delta term only adds to the p-value
    if v <= r / 2:
        assert eps == 0.0
    if eps > 0:
        p_at = one_run_p_value(num_guesses=r, num_correct=v, epsilon=eps, delta=delta, num_canaries=m)
        p_above = one_run_p_value(num_guesses=r, num_correct=v, epsilon=eps + 1e-6, delta=delta, num_canaries=m)
        assert p_at < 0.05 <= p_above


@settings(max_examples=30, deadline=None)
@given(case=one_run_cases, confidence=st.floats(0.5, 0.999))
def test_one_run_bound_is_monotone_in_correct_guesses_and_confidence(
    case: tuple[int, int, int, float], confidence: float
) -> None:
    r, v, m, delta = case
    assume(v < r)

    def bound(correct: int, conf: float) -> float:
        return one_run_epsilon_lower_bound(
            num_guesses=r, num_correct=correct, delta=delta, confidence=conf, num_canaries=m
        )

    low = bound(v, confidence)
    assert bound(v + 1, confidence) >= low - 1e-9
    assert bound(v, confidence + (1 - confidence) / 2) <= low + 1e-9  # more confidence, weaker claim


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    m=st.integers(2, 200),
    data=st.data(),
)
def test_guesses_flip_when_scores_are_negated(seed: int, m: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=m)  # distinct almost surely: no ties
    included = rng.random(m) < 0.5
    k = data.draw(st.integers(0, m // 2))
    r, v = one_run_guesses(scores, included, k_pos=k, k_neg=k)
    assert r == 2 * k and 0 <= v <= r
    # negating the scores swaps the "in" and "out" sets, so every right guess becomes wrong and vice versa
    assert one_run_guesses(-scores, included, k_pos=k, k_neg=k) == (r, r - v)
    # an oracle score is always right as long as there are enough of each
    n_in = int(included.sum())
    kp, kn = data.draw(st.integers(0, n_in)), data.draw(st.integers(0, m - n_in))
    assert one_run_guesses(included.astype(float), included, k_pos=kp, k_neg=kn) == (kp + kn, kp + kn)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 300), count=st.integers(0, 50))
def test_canary_directions_are_unit_rows(seed: int, dim: int, count: int) -> None:
    dirs = canary_directions(dim, count, np.random.default_rng(seed))
    assert dirs.shape == (count, dim) and dirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(dirs.astype(np.float64), axis=1), 1.0, atol=1e-6)
    again = canary_directions(dim, count, np.random.default_rng(seed))
    np.testing.assert_array_equal(dirs, again)  # reproducible from the generator


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shift=st.floats(-1.0, 1.0),
    scale=st.floats(1e-3, 1e3),
    mu=st.floats(-1.0, 4.0),
    delta=st.floats(1e-9, 0.1),
)
def test_one_shot_is_invariant_to_common_affine_maps(
    seed: int, shift: float, scale: float, mu: float, delta: float
) -> None:
    rng = np.random.default_rng(seed)
    unobserved = rng.normal(0.0, 1.0, 200)
    observed = rng.normal(mu, rng.uniform(0.7, 1.4), 200)
    est = one_shot_epsilon(observed_cosines=observed, unobserved_cosines=unobserved, delta=delta)
    moved = one_shot_epsilon(
        observed_cosines=shift + scale * observed, unobserved_cosines=shift + scale * unobserved, delta=delta
    )
    assert est.epsilon >= 0.0
    assert moved.mu == pytest.approx(est.mu, rel=1e-6, abs=1e-9)
    assert moved.epsilon == pytest.approx(est.epsilon, rel=1e-5, abs=1e-6)
    if est.mu <= 0:
        assert est.epsilon == 0.0
