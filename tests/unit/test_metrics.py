"""attacks.metrics: ROC summaries against brute-force threshold loops, and the shared input validator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.audit import one_run_guesses
from attacks.metrics import check_scores, membership_metrics, tpr_at_fpr


def _brute(scores: np.ndarray, members: np.ndarray) -> tuple[float, float, float, float]:
    """(AUC by pair counting, TPR@0.1%, TPR@1%, best balanced accuracy) over every threshold "score >= t"."""
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
    return float(auc), best[0.001], best[0.01], balanced


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(-5, 5), st.booleans()), min_size=2, max_size=300),
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
    assert metrics.auc == pytest.approx(auc, abs=1e-12)
    assert metrics.tpr_at_0_1pct_fpr == pytest.approx(tpr01, abs=1e-12)
    assert metrics.tpr_at_1pct_fpr == pytest.approx(tpr1, abs=1e-12)
    assert metrics.balanced_accuracy == pytest.approx(balanced, abs=1e-12)
    assert tpr_at_fpr(scores, members, 0.01) == pytest.approx(tpr1, abs=1e-12)
    assert (metrics.num_members, metrics.num_nonmembers) == (int(members.sum()), int((~members).sum()))


def test_low_fpr_needs_enough_nonmembers() -> None:
    # With 999 non-members the smallest non-zero FPR (1/999) is above 0.1%: only thresholds
    # admitting no non-member count, i.e. the members scored above every non-member.
    rng = np.random.default_rng(0)
    neg = rng.normal(0, 1, 999)
    pos = np.concatenate([np.full(10, neg.max() + 1), rng.normal(0, 1, 990)])
    scores, members = np.concatenate([pos, neg]), np.concatenate([np.ones(1000, bool), np.zeros(999, bool)])
    assert membership_metrics(scores, members).tpr_at_0_1pct_fpr == pytest.approx(10 / 1000)


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
