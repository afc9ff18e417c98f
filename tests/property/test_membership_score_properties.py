"""Membership scores: RMIA against a slow double loop, invariances and monotonicity (hypothesis)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from attacks.membership import (
    lira_offline,
    lira_online,
    logit_confidence,
    logit_confidence_from_logits,
    reference_score,
    rmia_scores,
)

F64 = npt.NDArray[np.float64]

# Few distinct values so that hypothesis produces ties (LR exactly gamma) often.
_probs = st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.25, 0.4, 0.5, 0.8, 1.0]) | st.floats(1e-3, 1.0)
_gammas = st.sampled_from([0.5, 1.0, 2.0]) | st.floats(0.1, 10.0)


@st.composite
def rmia_inputs(draw: st.DrawFn) -> tuple[F64, F64, F64, F64]:
    k, n, m = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 8))
    return (
        draw(hnp.arrays(np.float64, n, elements=_probs)),
        draw(hnp.arrays(np.float64, (k, n), elements=_probs)),
        draw(hnp.arrays(np.float64, m, elements=_probs)),
        draw(hnp.arrays(np.float64, (k, m), elements=_probs)),
    )


def _slow_rmia(tx: F64, rx: F64, tz: F64, rz: F64, gamma: float, offline_a: float | None) -> list[float]:
    """The definition, one (x, z) pair at a time."""

    def marginal(column: F64) -> float:
        total = 0.0
        for value in column:  # sequential sum, as numpy reduces the leading axis
            total += float(value)
        mean = total / len(column)
        return mean if offline_a is None else (1.0 + offline_a) / 2.0 * mean + (1.0 - offline_a) / 2.0

    out = []
    for i in range(tx.size):
        ratio_x = tx[i] / marginal(rx[:, i])
        hits = 0
        for j in range(tz.size):
            ratio_z = tz[j] / marginal(rz[:, j])
            if ratio_z <= ratio_x / gamma:  # LR(x, z) = ratio_x / ratio_z >= gamma
                hits += 1
        out.append(hits / tz.size)
    return out


@given(inputs=rmia_inputs(), gamma=_gammas, offline_a=st.none() | st.sampled_from([0.0, 0.3, 1.0]))
def test_rmia_equals_the_double_loop(inputs: tuple[F64, F64, F64, F64], gamma: float, offline_a: float | None) -> None:
    fast = rmia_scores(*inputs, gamma=gamma, offline_a=offline_a)
    assert fast.tolist() == _slow_rmia(*inputs, gamma=gamma, offline_a=offline_a)


@given(inputs=rmia_inputs(), gamma=_gammas, target_exp=st.integers(-20, 20), ref_exp=st.integers(-20, 20))
def test_rmia_is_invariant_to_scaling_the_probabilities(
    inputs: tuple[F64, F64, F64, F64], gamma: float, target_exp: int, ref_exp: int
) -> None:
    """Scaling the target model's (or the references') probabilities by a constant cancels in LR.

    Powers of two keep the check exact in floating point.
    """
    tx, rx, tz, rz = inputs
    c, r = 2.0**target_exp, 2.0**ref_exp
    base = rmia_scores(tx, rx, tz, rz, gamma=gamma)
    np.testing.assert_array_equal(rmia_scores(c * tx, rx, c * tz, rz, gamma=gamma), base)
    np.testing.assert_array_equal(rmia_scores(tx, r * rx, tz, r * rz, gamma=gamma), base)
    np.testing.assert_array_equal(rmia_scores(c * tx, c * rx, c * tz, c * rz, gamma=gamma), base)


@given(inputs=rmia_inputs(), g1=_gammas, g2=_gammas, offline_a=st.none() | st.floats(0.0, 1.0))
def test_rmia_score_is_non_increasing_in_gamma(
    inputs: tuple[F64, F64, F64, F64], g1: float, g2: float, offline_a: float | None
) -> None:
    low, high = sorted((g1, g2))
    s_low = rmia_scores(*inputs, gamma=low, offline_a=offline_a)
    s_high = rmia_scores(*inputs, gamma=high, offline_a=offline_a)
    assert np.all(s_high <= s_low)
    assert np.all((s_low >= 0.0) & (s_low <= 1.0))


_stat = st.floats(-20.0, 20.0)


@given(
    out_stats=hnp.arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(1, 5)), elements=_stat),
    t1=_stat,
    t2=_stat,
    fixed=st.booleans(),
)
def test_lira_offline_is_monotone_in_target(out_stats: F64, t1: float, t2: float, fixed: bool) -> None:
    spread = out_stats.std(axis=0)
    assume(spread.min() > 1e-3 if not fixed else spread.max() > 1e-3)
    n = out_stats.shape[1]
    lo, hi = sorted((t1, t2))
    s_lo = lira_offline(np.full(n, lo), out_stats, fixed_variance=fixed)
    s_hi = lira_offline(np.full(n, hi), out_stats, fixed_variance=fixed)
    assert np.all(s_lo <= s_hi)
    assert np.all(s_hi <= 0.0)  # a log-probability
    if hi - lo > 1e-6:
        # Strict wherever the test is not saturated (log Phi of a z-score > 8 rounds towards 0).
        z_hi = (hi - out_stats.mean(axis=0)) / (spread if not fixed else np.sqrt(np.mean(out_stats.var(axis=0))))
        unsaturated = z_hi < 8.0
        assert np.all(s_lo[unsaturated] < s_hi[unsaturated])


@given(
    shadow=hnp.arrays(np.float64, st.tuples(st.integers(2, 6), st.just(4)), elements=_stat),
    target=st.floats(-5.0, 5.0),
    shift=hnp.arrays(np.float64, 4, elements=st.floats(-100.0, 100.0)),
    fixed=st.booleans(),
)
def test_lira_is_invariant_to_per_example_offsets(shadow: F64, target: float, shift: F64, fixed: bool) -> None:
    """Adding an example's own offset to its target and shadow statistics leaves LiRA unchanged."""
    assume(shadow.std(axis=0).min() > 1e-2)
    t = np.full(shadow.shape[1], target)
    in_stats = shadow + 1.0
    np.testing.assert_allclose(
        lira_online(t + shift, in_stats + shift, shadow + shift, fixed_variance=fixed),
        lira_online(t, in_stats, shadow, fixed_variance=fixed),
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        lira_offline(t + shift, shadow + shift, fixed_variance=fixed),
        lira_offline(t, shadow, fixed_variance=fixed),
        rtol=1e-6,
        atol=1e-6,
    )


@given(
    target=hnp.arrays(np.float64, 8, elements=st.floats(-50, 0)),
    reference=hnp.arrays(np.float64, 8, elements=st.floats(-50, 0)),
    offset=hnp.arrays(np.float64, 8, elements=st.floats(-50, 50)),
)
def test_reference_score_cancels_per_example_offsets(target: F64, reference: F64, offset: F64) -> None:
    np.testing.assert_allclose(
        reference_score(target + offset, reference + offset), reference_score(target, reference), atol=1e-12
    )


@given(
    logits=hnp.arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(2, 6)), elements=st.floats(-15, 15)),
    data=st.data(),
)
@example(logits=np.array([[15.0, -15.0, -15.0, -14.3]]), data=None).via("near-saturated p")
def test_logit_confidence_from_logits_matches_the_probability_form(logits: F64, data: st.DataObject | None) -> None:
    """Agreement up to the probability form's own rounding: an error of a few ulps in p moves
    log(1 - p) by about eps / (1 - p), which is why saturated models need the logit form."""
    if data is None:
        labels = np.zeros(logits.shape[0], dtype=np.int64)
    else:
        labels = data.draw(hnp.arrays(np.int64, logits.shape[0], elements=st.integers(0, logits.shape[1] - 1)))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    p_true = probs[np.arange(logits.shape[0]), labels]
    from_logits = logit_confidence_from_logits(logits, labels)
    tolerance = 1e-12 + 1e-15 / (1.0 - p_true)
    assert np.all(np.abs(logit_confidence(p_true) - from_logits) <= tolerance)
    assert np.all(np.abs(logit_confidence(np.log(p_true), log_input=True) - from_logits) <= tolerance)
