"""Membership scores: hand-computed values, power on synthetic data, chance level, validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

import attacks.membership as membership
from attacks.membership import (
    client_scores,
    lira_offline,
    lira_online,
    logit_confidence,
    logit_confidence_from_logits,
    loss_score,
    reference_score,
    rmia_scores,
)

F64 = npt.NDArray[np.float64]
NAN = math.nan


def test_all_is_sorted_and_resolves() -> None:
    assert membership.__all__ == sorted(set(membership.__all__))
    for name in membership.__all__:
        assert callable(getattr(membership, name))


# --------------------------------------------------------------------------- simple scores


def test_loss_and_reference_scores_by_hand() -> None:
    np.testing.assert_array_equal(loss_score([0.5, 2.0]), [-0.5, -2.0])
    np.testing.assert_array_equal(reference_score([-1.0, -3.0], [-2.0, -2.5]), [1.0, -0.5])


def test_logit_confidence_by_hand_and_from_logits() -> None:
    np.testing.assert_allclose(logit_confidence([0.5, 0.8]), [0.0, math.log(4.0)], atol=1e-15)
    np.testing.assert_allclose(logit_confidence(np.log([0.5, 0.8]), log_input=True), [0.0, math.log(4.0)], atol=1e-15)
    # p_y = e^3 / (e^3 + e^0 + e^1): phi = 3 - log(1 + e).
    np.testing.assert_allclose(logit_confidence_from_logits([[3.0, 0.0, 1.0]], [0]), [3.0 - math.log1p(math.e)])
    # Saturated: p_y rounds to 1 in float64, yet phi = 800 - 0 exactly from logits (the probability form cannot).
    assert logit_confidence_from_logits([[0.0, 800.0]], [1])[0] == pytest.approx(800.0)
    # p = 1 - 1e-20 as a log-probability: phi = log(p / (1 - p)) ~ 46.05, still resolvable.
    assert logit_confidence([-1e-20], log_input=True)[0] == pytest.approx(math.log(1e20), rel=1e-12)


# --------------------------------------------------------------------------- LiRA by hand


def test_lira_online_per_example_variance_by_hand() -> None:
    # IN {1, 5}: mu 3, sd 2; OUT {0, 2}: mu 1, sd 1; target 2.
    # log N(2; 3, 4) - log N(2; 1, 1) = (-log 2 - 1/8) - (-1/2) = 3/8 - log 2.
    score = lira_online([2.0], [[1.0], [5.0]], [[0.0], [2.0]], fixed_variance=False)
    assert score[0] == pytest.approx(0.375 - math.log(2.0), abs=1e-14)
    expected = stats.norm.logpdf(2.0, 3.0, 2.0) - stats.norm.logpdf(2.0, 1.0, 1.0)
    assert score[0] == pytest.approx(expected, abs=1e-14)


def test_lira_online_fixed_variance_pools_within_example_deviations_and_skips_nan() -> None:
    # IN: example 0 {1, 3} (mu 2), example 1 {10, 14} (mu 12): pooled var (1+1+4+4)/4 = 2.5.
    # OUT: example 0 {0, 2} (mu 1), example 1 {9, 11} (mu 10): pooled var 1. NaN entries are skipped.
    in_stats = [[1.0, 10.0], [3.0, NAN], [NAN, 14.0]]
    out_stats = [[0.0, 9.0], [NAN, 11.0], [2.0, NAN]]
    score = lira_online([2.0, 12.0], in_stats, out_stats, fixed_variance=True)
    half_log = 0.5 * math.log(2.5)
    np.testing.assert_allclose(score, [-half_log + 0.5, -half_log + 2.0], atol=1e-14)


def test_lira_matches_scipy_norm_on_random_stats() -> None:
    rng = np.random.default_rng(0)
    k, n = 6, 50
    ins, outs = rng.normal(1, 1.3, (k, n)), rng.normal(0, 0.7, (k, n))
    target = rng.normal(0.5, 1, n)
    m_in, s_in, m_out, s_out = ins.mean(0), ins.std(0), outs.mean(0), outs.std(0)
    expected = stats.norm.logpdf(target, m_in, s_in) - stats.norm.logpdf(target, m_out, s_out)
    np.testing.assert_allclose(lira_online(target, ins, outs, fixed_variance=False), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        lira_offline(target, outs, fixed_variance=False), stats.norm.logcdf(target, m_out, s_out), rtol=1e-10
    )
    pooled = np.sqrt(np.mean(np.square(outs - m_out)))
    np.testing.assert_allclose(lira_offline(target, outs), stats.norm.logcdf(target, m_out, pooled), rtol=1e-10)


# --------------------------------------------------------------------------- power on synthetic data


def _auc(scores: F64, members: npt.NDArray[np.bool_]) -> float:
    return float(roc_auc_score(members, scores))


def _synthetic(seed: int, n: int = 2000, k: int = 16, spread: float = 2.0) -> dict[str, F64]:
    """Statistic = difficulty_i + member + N(0, 1); shadows each train on a balanced half of every example."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, spread, n)
    member = rng.permutation(np.arange(n) < n // 2)
    target = difficulty + member + rng.normal(0.0, 1.0, n)
    shadow_in = np.argsort(rng.random((k, n)), axis=0) < k // 2  # exactly k/2 IN shadows per example
    shadow = difficulty + shadow_in + rng.normal(0.0, 1.0, (k, n))
    return {
        "member": member.astype(np.float64),
        "difficulty": difficulty,
        "target": target,
        "in": np.where(shadow_in, shadow, np.nan),
        "out": np.where(shadow_in, np.nan, shadow),
    }


def test_lira_beats_loss_when_examples_differ_in_difficulty() -> None:
    d = _synthetic(seed=1)
    members = d["member"].astype(bool)
    auc_loss = _auc(loss_score(-d["target"]), members)  # loss = -statistic
    auc_online = _auc(lira_online(d["target"], d["in"], d["out"]), members)
    auc_online_pe = _auc(lira_online(d["target"], d["in"], d["out"], fixed_variance=False), members)
    auc_offline = _auc(lira_offline(d["target"], d["out"]), members)
    # Analytic: LOSS Phi(1/sqrt(2*(1+4))) = 0.62; oracle LR Phi(1/sqrt 2) = 0.76 (8 shadows per side cost ~0.01).
    assert auc_loss == pytest.approx(stats.norm.cdf(1 / math.sqrt(10)), abs=0.04)
    assert auc_online == pytest.approx(stats.norm.cdf(1 / math.sqrt(2)), abs=0.04)
    assert auc_online > auc_loss + 0.08
    assert auc_online_pe > auc_loss + 0.05
    assert auc_offline > auc_loss + 0.08


def test_reference_score_removes_difficulty_offsets() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    difficulty = rng.normal(0.0, 2.0, n)
    member = rng.permutation(np.arange(n) < n // 2)
    noise = rng.normal(0.0, 1.0, n)
    target_ll = difficulty + member + noise
    base_ll = difficulty + rng.normal(0.0, 0.1, n)  # the frozen base model sees the difficulty, not membership
    auc_loss = _auc(target_ll, member)
    auc_free = _auc(member + noise, member)  # same draws without the offsets
    auc_ref = _auc(reference_score(target_ll, base_ll), member)
    assert abs(auc_ref - auc_free) < 0.02
    assert auc_ref > auc_loss + 0.08


# --------------------------------------------------------------------------- chance level


def test_every_score_is_at_chance_when_members_and_non_members_are_exchangeable() -> None:
    rng = np.random.default_rng(3)
    n, k, m = 4000, 8, 1000
    members = rng.permutation(np.arange(n) < n // 2)
    difficulty = rng.normal(0.0, 1.0, n)
    target = difficulty + rng.normal(0.0, 1.0, n)  # membership has no effect on anything
    shadow = difficulty + rng.normal(0.0, 1.0, (k, n))
    half = np.argsort(rng.random((k, n)), axis=0) < k // 2
    ins, outs = np.where(half, shadow, np.nan), np.where(half, np.nan, shadow)
    sigmoid: Callable[[F64], F64] = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    pop = rng.normal(0.0, 1.0, m)  # population difficulty
    pop_target, pop_refs = pop + rng.normal(0.0, 1.0, m), pop + rng.normal(0.0, 1.0, (k, m))
    clients = rng.integers(0, 400, n)
    all_scores = {
        "loss": loss_score(-target),
        "reference": reference_score(target, difficulty + rng.normal(0.0, 1.0, n)),
        "logit": logit_confidence(sigmoid(target)),
        "lira_online": lira_online(target, ins, outs),
        "lira_offline": lira_offline(target, outs),
        "rmia": rmia_scores(sigmoid(target), sigmoid(shadow), sigmoid(pop_target), sigmoid(pop_refs)),
    }
    # Mann-Whitney null standard error of the AUC: sqrt((n1 + n0 + 1) / (12 n1 n0)).
    n1 = n0 = n // 2
    se = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
    for name, score in all_scores.items():
        assert abs(_auc(score, members) - 0.5) < 4 * se, name
    # Client level: a client is a member iff all of its records are; scores carry no signal.
    ids, per_client = client_scores(target, clients)
    client_member = rng.permutation(np.arange(ids.size) < ids.size // 2)
    c1, c0 = int(client_member.sum()), int((~client_member).sum())
    assert abs(_auc(per_client, client_member) - 0.5) < 4 * math.sqrt((c1 + c0 + 1) / (12 * c1 * c0))


# --------------------------------------------------------------------------- RMIA by hand


def test_rmia_by_hand() -> None:
    # ratio_x = 0.5 / 0.25 = 2; ratio_z = [1, 2, 4] (reference probability 0.1 everywhere).
    args = ([0.5], [[0.25]], [0.1, 0.2, 0.4], [[0.1, 0.1, 0.1]])
    assert rmia_scores(*args)[0] == pytest.approx(2 / 3)  # z with 2 / ratio_z >= 1: ratio_z in {1, 2}
    assert rmia_scores(*args, gamma=0.5)[0] == 1.0
    assert rmia_scores(*args, gamma=2.0)[0] == pytest.approx(1 / 3)
    assert rmia_scores(*args, gamma=2.01)[0] == 0.0
    # Pr(x) is the mean over reference models: (0.2 + 0.3) / 2 = 0.25, the same as above.
    assert rmia_scores([0.5], [[0.2], [0.3]], [0.1, 0.2, 0.4], [[0.1] * 3] * 2)[0] == pytest.approx(2 / 3)
    # Offline, a = 0.5: Pr(x) = 0.75 * 0.25 + 0.25 = 0.4375 -> ratio_x = 8/7;
    # Pr(z) = 0.75 * 0.1 + 0.25 = 0.325 -> ratio_z = [0.31, 0.62, 1.23]: two of three are <= 8/7.
    assert rmia_scores(*args, offline_a=0.5)[0] == pytest.approx(2 / 3)
    assert rmia_scores(*args, offline_a=0.5, gamma=0.9)[0] == 1.0


def test_rmia_log_probs_agree_with_probabilities() -> None:
    rng = np.random.default_rng(4)
    k, n, m = 4, 300, 200
    tx, rx = rng.uniform(0.01, 1, n), rng.uniform(0.01, 1, (k, n))
    tz, rz = rng.uniform(0.01, 1, m), rng.uniform(0.01, 1, (k, m))
    for a in (None, 0.3, 1.0):
        for gamma in (0.5, 1.0, 2.0):
            plain = rmia_scores(tx, rx, tz, rz, gamma=gamma, offline_a=a)
            logged = rmia_scores(*map(np.log, (tx, rx, tz, rz)), gamma=gamma, offline_a=a, log_probs=True)
            np.testing.assert_array_equal(plain, logged)
    # Sequence likelihoods that underflow float64 still work in log space (ratio_x - ratio_z = x_shift).
    log_t = np.array([-2000.0, -1990.0])
    scores = rmia_scores(log_t, [[-2000.0, -2000.0]], [-2000.0, -1995.0], [[-2000.0, -2000.0]], log_probs=True)
    np.testing.assert_array_equal(scores, [0.5, 1.0])


# --------------------------------------------------------------------------- client level


def test_client_scores_by_hand() -> None:
    scores = [2.0, 1.0, 4.0, 3.0, 9.0, 10.0]
    ids = ["a", "b", "a", "b", "a", "c"]
    expected = {"mean": [5.0, 2.0, 10.0], "max": [9.0, 3.0, 10.0], "median": [4.0, 2.0, 10.0]}
    for reduce, values in expected.items():
        unique, agg = client_scores(scores, ids, reduce=reduce)  # type: ignore[arg-type]
        assert list(unique) == ["a", "b", "c"]
        np.testing.assert_allclose(agg, values)
    unique, agg = client_scores([-1.0, -3.0], [7, 7], reduce="max")
    assert list(unique) == [7] and agg.tolist() == [-1.0]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "call",
    [
        lambda: loss_score([1.0, math.inf]),
        lambda: reference_score([1.0, 2.0], [1.0]),
        lambda: reference_score([NAN], [1.0]),
        lambda: logit_confidence([1.0]),
        lambda: logit_confidence([0.0]),
        lambda: logit_confidence([0.0], log_input=True),
        lambda: logit_confidence_from_logits([[1.0]], [0]),
        lambda: logit_confidence_from_logits([[1.0, 2.0]], [2]),
        lambda: logit_confidence_from_logits([[1.0, 2.0]], [0.0]),
        lambda: logit_confidence_from_logits([[1.0, 2.0]], [0, 1]),
        lambda: lira_online([1.0], [[1.0, 2.0]], [[0.0]]),  # shape mismatch
        lambda: lira_online([1.0], np.empty((0, 1)), [[0.0], [1.0]]),  # K < 1
        lambda: lira_online([1.0, 2.0], [[1.0, NAN], [2.0, NAN]], [[0.0, 1.0], [1.0, 2.0]]),  # no IN observation
        lambda: lira_online([1.0], [[1.0], [math.inf]], [[0.0], [1.0]]),
        lambda: lira_online([NAN], [[1.0], [2.0]], [[0.0], [1.0]]),
        lambda: lira_online([1.0], [[1.0]], [[0.0], [1.0]]),  # one observation: zero variance
        lambda: lira_offline([1.0], [[0.0]]),
        lambda: lira_offline([[1.0]], [[0.0], [1.0]]),
        lambda: rmia_scores([0.5], [[0.5]], [0.5], [[0.5]], gamma=0.0),
        lambda: rmia_scores([0.5], [[0.5]], [0.5], [[0.5]], gamma=-1.0),
        lambda: rmia_scores([0.5], [[0.5]], [0.5], [[0.5]], offline_a=1.5),
        lambda: rmia_scores([0.5], [[0.5]], [0.5], [[0.5], [0.4]]),  # different K
        lambda: rmia_scores([0.5], [[0.0]], [0.5], [[0.5]]),  # zero probability
        lambda: rmia_scores([2.0], [[0.5]], [0.5], [[0.5]], offline_a=0.3),  # > 1 with offline_a
        lambda: rmia_scores([0.1], [[-0.5]], [-0.5], [[-0.5]], offline_a=0.3, log_probs=True),
        lambda: rmia_scores([0.5], [[0.5]], [], np.empty((1, 0))),  # no population
        lambda: rmia_scores([1e300], [[1e-300]], [0.5], [[0.5]]),  # ratio overflows: use log_probs
        lambda: client_scores([1.0, 2.0], [0]),
        lambda: client_scores([], [], reduce="median"),
        lambda: client_scores([1.0], [0], reduce="sum"),  # type: ignore[arg-type]
    ],
)
def test_invalid_inputs_raise(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        call()
