"""The ledger's epsilon against Google's independent dp-accounting package (RDP and PLD)."""

from __future__ import annotations

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.privacy import PrivacyLedger, SampledGaussianEvent, calibrate_noise_multiplier, compute_epsilon


def google_epsilon(sigma: float, q: float, steps: int, delta: float, kind: str) -> float:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )
    accountant = rdp_privacy_accountant.RdpAccountant() if kind == "rdp" else pld_privacy_accountant.PLDAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("sigma", "q", "steps", "delta"),
    [
        (1.0, 0.01, 1000, 1e-5),
        (0.8, 0.05, 200, 1e-5),
        (2.0, 0.1, 50, 1e-3),
        (1.2, 1.0, 20, 1e-5),
        (5.0, 0.02, 5000, 1e-6),
    ],
)
@pytest.mark.parametrize(("ours", "theirs"), [("rdp", "rdp"), ("prv", "pld")])
def test_sampled_gaussian_epsilon_matches_dp_accounting(
    sigma: float, q: float, steps: int, delta: float, ours: str, theirs: str
) -> None:
    ledger = PrivacyLedger(delta=delta, accountant=ours)
    # Recorded round by round, as a run does; the ledger composes them.
    per_round = steps // 10
    ledger.record(
        SampledGaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=per_round, scope="user", round=r)
        for r in range(10)
    )
    expected = google_epsilon(sigma, q, per_round * 10, delta, theirs)
    assert ledger.epsilon_user() == pytest.approx(expected, rel=0.02)


def test_heterogeneous_composition_matches_dp_accounting_rdp() -> None:
    events = [
        SampledGaussianEvent(noise_multiplier=1.0, sample_rate=0.02, steps=100, scope="sample", subject=3),
        SampledGaussianEvent(noise_multiplier=1.5, sample_rate=0.05, steps=40, scope="sample", subject=3),
    ]
    accountant = rdp_privacy_accountant.RdpAccountant()
    for e in events:
        accountant.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier)),
                e.steps,
            )
        )
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    ledger.record(events)
    assert ledger.epsilon_sample(3) == pytest.approx(accountant.get_epsilon(1e-5), rel=0.02)
    assert ledger.epsilon_sample(4) == 0.0
    assert ledger.epsilon_sample_max() == ledger.epsilon_sample(3)


@pytest.mark.parametrize("target", [0.5, 1.0, 3.0, 8.0])
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_calibration_meets_the_target_within_5_percent(target: float, accountant: str) -> None:
    sigma = calibrate_noise_multiplier(
        target_epsilon=target, delta=1e-5, sample_rate=0.02, steps=300, accountant=accountant
    )
    event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=0.02, steps=300, scope="user")
    achieved = compute_epsilon([event], delta=1e-5, accountant=accountant)
    assert achieved <= target
    assert achieved >= 0.95 * target
    assert google_epsilon(sigma, 0.02, 300, 1e-5, "rdp" if accountant == "rdp" else "pld") <= target * 1.02


@settings(max_examples=40)
@given(
    st.lists(
        st.tuples(
            st.floats(0.3, 8.0),
            st.floats(1e-4, 1.0),
            st.integers(0, 2000),
        ),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from([1e-3, 1e-5, 1e-7]),
)
def test_cached_rdp_equals_opacus_rdp_accountant(history: list[tuple[float, float, int]], delta: float) -> None:
    """privfed's RDP path caches each (sigma, q)'s per-step RDP; the epsilon must be Opacus'
    RDPAccountant's for the same history (a slow reference, recomputed from scratch)."""
    import warnings

    from opacus.accountants import RDPAccountant

    events = [
        SampledGaussianEvent(noise_multiplier=s, sample_rate=q, steps=t, scope="sample", subject=0, round=i)
        for i, (s, q, t) in enumerate(history)
    ]
    reference = RDPAccountant()
    reference.history = [(s, q, t) for s, q, t in history if t > 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference.get_epsilon(delta=delta) if reference.history else 0.0
        got = compute_epsilon(events, delta=delta, accountant="rdp")
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
