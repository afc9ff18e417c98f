"""attacks.metrics: ROC summaries against brute-force threshold loops, exact binomial intervals against scipy's
binomtest, the null rule for TPR at unresolvable FPRs, score files, and the shared input validator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from attacks.audit import one_run_guesses
from attacks.metrics import (
    check_scores,
    clopper_pearson,
    load_scores,
    membership_metrics,
    min_resolvable_fpr,
    save_scores,
    tpr_at_fpr,
    upgrade_tpr_fields,
)


def _exact_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson from scipy's binomtest, an implementation independent of ``clopper_pearson``."""
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def _brute(scores: np.ndarray, members: np.ndarray) -> tuple[float, float | None, float | None, float]:
    """(AUC by pair counting, TPR@0.1%, TPR@1%, best balanced accuracy) over every threshold "score >= t".

    A TPR at an FPR below 1 / (number of non-members) is None: no threshold can measure it.
    """
    pos, neg = scores[members], scores[~members]
    auc = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (pos.size * neg.size)
    best = {0.001: 0.0, 0.01: 0.0}
    balanced = 0.5  # the threshold above every score: TPR = FPR = 0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        tpr = float(np.mean(pos >= t))
        fpr = float(np.mean(neg >= t))
        for target in best:
            if fpr <= target + 1e-12:
                best[target] = max(best[target], tpr)
        balanced = max(balanced, (tpr + 1 - fpr) / 2)
    at = {t: (v if t * neg.size >= 1 - 1e-9 else None) for t, v in best.items()}
    return float(auc), at[0.001], at[0.01], balanced


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=1300),
)
def test_membership_metrics_match_a_threshold_loop(data: list[tuple[int, bool]]) -> None:
    scores = np.array([float(s) for s, _ in data])  # small integers: many ties
    members = np.array([m for _, m in data])
    if members.all() or not members.any():
        with pytest.raises(ValueError, match="one member and one non-member"):
            membership_metrics(scores, members)
        return
    metrics = membership_metrics(scores, members)
    auc, tpr01, tpr1, balanced = _brute(scores, members)
    n_pos = int(members.sum())
    assert metrics.auc == pytest.approx(auc, abs=1e-12)
    assert metrics.balanced_accuracy == pytest.approx(balanced, abs=1e-12)
    for got, want, ci, target in (
        (metrics.tpr_at_0_1pct_fpr, tpr01, metrics.tpr_at_0_1pct_fpr_ci95, 0.001),
        (metrics.tpr_at_1pct_fpr, tpr1, metrics.tpr_at_1pct_fpr_ci95, 0.01),
    ):
        if want is None:
            assert got is None and ci is None and tpr_at_fpr(scores, members, target) is None
        else:
            assert got == pytest.approx(want, abs=1e-12)
            assert tpr_at_fpr(scores, members, target) == pytest.approx(want, abs=1e-12)
            assert ci == pytest.approx(_exact_ci(round(want * n_pos), n_pos), abs=1e-9)
    assert (metrics.num_members, metrics.num_nonmembers) == (n_pos, int((~members).sum()))
    assert metrics.min_resolvable_fpr == 1.0 / int((~members).sum())


def test_tpr_below_the_smallest_resolvable_fpr_is_null() -> None:
    # With 999 non-members the smallest non-zero FPR (1/999) is above 0.1%: a "TPR at 0.1% FPR" would be
    # the TPR at no false positive at all, a claim the data cannot back. It is None, 1/999 stands beside it.
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 999)
    pos = np.concatenate([np.full(10, neg.max() + 1), rng.normal(0, 1, 990)])
    scores, members = np.concatenate([pos, neg]), np.concatenate([np.ones(1000, bool), np.zeros(999, bool)])
    metrics = membership_metrics(scores, members)
    assert metrics.tpr_at_0_1pct_fpr is None and metrics.tpr_at_0_1pct_fpr_ci95 is None
    assert tpr_at_fpr(scores, members, 0.001) is None
    assert metrics.tpr_at_1pct_fpr is not None and metrics.min_resolvable_fpr == pytest.approx(1 / 999)
    record = metrics.to_dict()
    assert record["tpr_at_0.1pct_fpr"] is None and record["min_resolvable_fpr"] == pytest.approx(1 / 999)
    assert json.loads(json.dumps(record))["tpr_at_0.1pct_fpr"] is None  # JSON null
    # 1000 non-members resolve 0.1% exactly (one false positive allowed).
    scores2 = np.concatenate([pos, neg, [-10.0]])
    members2 = np.concatenate([members, [False]])
    assert membership_metrics(scores2, members2).tpr_at_0_1pct_fpr == pytest.approx(
        tpr_at_fpr(scores2, members2, 0.001)
    )
    _, brute01, _, _ = _brute(scores2, members2)
    assert brute01 is not None and membership_metrics(scores2, members2).tpr_at_0_1pct_fpr == pytest.approx(brute01)
    assert _brute(scores, members)[1] is None
    # The case: 233 non-members, no TPR at 0.1% FPR.
    assert min_resolvable_fpr(233) == 1 / 233
    assert membership_metrics(np.arange(466.0), np.arange(466) >= 233).tpr_at_0_1pct_fpr is None


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 400), frac=st.floats(0, 1), confidence=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_clopper_pearson_matches_scipy_binomtest(n: int, frac: float, confidence: float) -> None:
    k = round(frac * n)
    low, high = clopper_pearson(k, n, confidence=confidence)
    ref_low, ref_high = _exact_ci(k, n, confidence)
    assert low == pytest.approx(ref_low, abs=1e-9) and high == pytest.approx(ref_high, abs=1e-9)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_clopper_pearson_known_values_and_errors() -> None:
    # 0 of 10: upper end 1 - 0.025^(1/10); 10 of 10: lower end 0.025^(1/10) (closed forms at the edges).
    assert clopper_pearson(0, 10) == pytest.approx((0.0, 1 - 0.025 ** (1 / 10)))
    assert clopper_pearson(10, 10) == pytest.approx((0.025 ** (1 / 10), 1.0))
    for k, n in ((3, 2), (-1, 5), (1, 0), (1.5, 4)):
        with pytest.raises(ValueError, match="successes <= trials"):
            clopper_pearson(k, n)  # type: ignore[arg-type]


def test_old_records_are_upgraded_from_their_counts() -> None:
    old = {"tpr_at_0.1pct_fpr": 3 / 480, "tpr_at_1pct_fpr": 34 / 480, "num_members": 480, "num_nonmembers": 480}
    new = upgrade_tpr_fields(old)
    assert new["tpr_at_0.1pct_fpr"] is None and new["tpr_at_0.1pct_fpr_ci95"] is None
    assert new["tpr_at_1pct_fpr"] == 34 / 480 and new["tpr_at_1pct_fpr_ci95"] == pytest.approx(_exact_ci(34, 480))
    assert new["min_resolvable_fpr"] == 1 / 480
    with pytest.raises(ValueError, match="not a count"):
        upgrade_tpr_fields({**old, "tpr_at_1pct_fpr": 0.123456})


def test_score_files_round_trip_and_refuse_pickles(tmp_path: Path) -> None:
    views = {"a.b__c": (np.array([0.5, -1.0, 2.0]), np.array([1, 0, 1])), "x": (np.zeros(2), np.array([0, 0]))}
    path = save_scores(tmp_path / "s.npz", views)
    back = load_scores(path)
    assert list(back) == ["a.b__c", "x"]
    np.testing.assert_array_equal(back["a.b__c"][0], [0.5, -1.0, 2.0])
    assert back["a.b__c"][1].dtype == bool and back["a.b__c"][1].tolist() == [True, False, True]
    np.savez(tmp_path / "p.npz", views=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        load_scores(tmp_path / "p.npz")
    with pytest.raises(ValueError, match="finite"):
        save_scores(tmp_path / "bad.npz", {"v": (np.array([np.nan]), np.array([1]))})


def test_check_scores_is_the_one_validator_for_scores_and_labels() -> None:
    s, m = check_scores([1, 2, 3], [0, 1, 1])
    assert s.dtype == np.float64 and m.dtype == bool and m.tolist() == [False, True, True]
    for scores, labels, message in [
        ([1, 2], [0, 1, 1], "differ in length"),
        ([1, np.nan], [0, 1], "finite"),
        ([1, 2], [0, 2], "boolean or 0/1"),
        ([1, 2], [1, 1], "one member and one non-member"),
    ]:
        with pytest.raises(ValueError, match=message):
            membership_metrics(scores, labels)
    # The one-run audit accepts all-in canaries but the same malformed inputs fail the same way.
    assert one_run_guesses([3.0, 2.0, 1.0], [1, 1, 1], k_pos=1, k_neg=1) == (2, 1)
    with pytest.raises(ValueError, match="canary labels must be boolean or 0/1"):
        one_run_guesses([3.0, 2.0], [1, 2], k_pos=1, k_neg=0)
    with pytest.raises(ValueError, match="canary scores must be finite"):
        one_run_guesses([3.0, np.inf], [1, 0], k_pos=1, k_neg=0)
