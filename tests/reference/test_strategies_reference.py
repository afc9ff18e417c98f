"""Server aggregation against slow, obviously-correct loops."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privfed.server.strategies import FedAdam, FedAvg, weighted_mean


def slow_weighted_mean(deltas: np.ndarray, weights: list[int]) -> np.ndarray:
    """Exact rational arithmetic, coordinate by coordinate."""
    total = sum(weights)
    out = []
    for j in range(deltas.shape[1]):
        acc = Fraction(0)
        for i, w in enumerate(weights):
            acc += Fraction(w, total) * Fraction(float(deltas[i, j]))
        out.append(float(acc))
    return np.array(out)


@given(
    deltas=st.integers(1, 6).flatmap(lambda n: hnp.arrays(np.float32, (n, 7), elements=st.floats(-1e3, 1e3, width=32))),
    data=st.data(),
)
def test_weighted_mean_matches_exact_reference(deltas: np.ndarray, data: st.DataObject) -> None:
    weights = data.draw(st.lists(st.integers(1, 10_000), min_size=len(deltas), max_size=len(deltas)))
    ours = weighted_mean(deltas, weights=weights)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, slow_weighted_mean(deltas, weights), rtol=1e-6, atol=1e-4)


def test_weighted_mean_weights_matter_and_uniform_is_plain_mean() -> None:
    deltas = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(weighted_mean(deltas, weights=[3, 1]), [0.75, 0.25])
    np.testing.assert_allclose(weighted_mean(deltas, weights=[1, 1]), deltas.mean(axis=0))


@pytest.mark.parametrize("weights", [[0, 0], [-1, 2], [1.0, float("nan")], [1]])
def test_weighted_mean_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(ValueError):
        weighted_mean(np.ones((2, 3), dtype=np.float32), weights=weights)


def test_fedavg_applies_server_learning_rate() -> None:
    x = np.array([1.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(FedAvg(learning_rate=0.5).apply(x, np.array([2.0, -2.0], dtype=np.float32)), [2.0, 1.0])


def test_fedadam_matches_scalar_reference_over_rounds() -> None:
    rng = np.random.default_rng(1)
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    strategy = FedAdam(learning_rate=lr, beta1=b1, beta2=b2, tau=tau)
    x = rng.standard_normal(5).astype(np.float32)
    ref_x = [float(v) for v in x]
    ref_m = [0.0] * 5
    ref_v = [0.0] * 5
    for _ in range(6):
        g = rng.standard_normal(5).astype(np.float32)
        x = strategy.apply(x, g)
        for j in range(5):
            ref_m[j] = b1 * ref_m[j] + (1 - b1) * float(g[j])
            ref_v[j] = b2 * ref_v[j] + (1 - b2) * float(g[j]) ** 2
            ref_x[j] += lr * ref_m[j] / (ref_v[j] ** 0.5 + tau)
    np.testing.assert_allclose(x, ref_x, rtol=1e-5, atol=1e-6)
    # The optimizer state survives a checkpoint round trip.
    clone = FedAdam(learning_rate=lr, beta1=b1, beta2=b2, tau=tau)
    clone.load_state_arrays(strategy.state_arrays())
    g = np.ones(5, dtype=np.float32)
    np.testing.assert_array_equal(clone.apply(x, g), strategy.apply(x, g))
