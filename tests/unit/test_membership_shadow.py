"""Shadow-federation membership inference: keep matrix, leave-one-out scoring (vs a slow loop), settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attacks.membership import MembershipSettings, balanced_keep, score_targets
from attacks.membership.shadow import ATTACKS
from attacks.metrics import membership_metrics
from privfed import ConfigError
from tests.conftest import tiny_config


@settings(max_examples=40, deadline=None)
@given(half=st.integers(2, 8), n=st.integers(1, 60), seed=st.integers(0, 2**32 - 1))
def test_balanced_keep_puts_every_example_in_exactly_half_the_models(half: int, n: int, seed: int) -> None:
    keep = balanced_keep(2 * half, n, np.random.default_rng(seed))
    assert keep.shape == (2 * half, n) and keep.dtype == bool
    assert np.all(keep.sum(axis=0) == half)


def test_balanced_keep_gives_models_different_halves() -> None:
    keep = balanced_keep(8, 1000, np.random.default_rng(0))
    rows = {row.tobytes() for row in keep}
    assert len(rows) == 8
    # Each model holds about half the pool (binomial: 500 +- 3 sd).
    assert np.all(np.abs(keep.sum(axis=1) - 500) < 3 * math.sqrt(250) + 1)


def _synthetic(signal: float, *, models: int = 8, n: int = 400, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    keep = balanced_keep(models, n, rng)
    difficulty = rng.normal(-1.0, 0.5, n)  # per-example log-likelihood level, shared by all models
    pool = np.minimum(difficulty + signal * keep + rng.normal(0, 0.1, (models, n)), -1e-3)
    population = np.minimum(rng.normal(-1.0, 0.5, (models, 200)), -1e-3)
    base = difficulty - 0.2
    return pool, population, base, keep


def _slow_lira_online(stats: np.ndarray, keep: np.ndarray, t: int) -> np.ndarray:
    """Per-example loops: pooled-variance Gaussians over the other models' IN / OUT statistics."""
    models, n = stats.shape
    others = [m for m in range(models) if m != t]
    mu_in, mu_out, sq_in, sq_out, c_in, c_out = [], [], 0.0, 0.0, 0, 0
    for i in range(n):
        ins = [stats[m, i] for m in others if keep[m, i]]
        outs = [stats[m, i] for m in others if not keep[m, i]]
        mu_in.append(sum(ins) / len(ins))
        mu_out.append(sum(outs) / len(outs))
        sq_in += sum((x - mu_in[-1]) ** 2 for x in ins)
        sq_out += sum((x - mu_out[-1]) ** 2 for x in outs)
        c_in += len(ins)
        c_out += len(outs)
    sd_in, sd_out = math.sqrt(sq_in / c_in), math.sqrt(sq_out / c_out)
    out = []
    for i in range(n):
        log_in = -0.5 * ((stats[t, i] - mu_in[i]) / sd_in) ** 2 - math.log(sd_in)
        log_out = -0.5 * ((stats[t, i] - mu_out[i]) / sd_out) ** 2 - math.log(sd_out)
        out.append(log_in - log_out)
    return np.array(out)


def test_leave_one_out_lira_matches_a_slow_loop() -> None:
    pool, population, base, keep = _synthetic(0.3, models=6, n=50)
    scores, members = score_targets(pool, population, base, keep, task="causal_lm")
    assert set(scores) == set(ATTACKS)
    assert members.shape == (6 * 50,) and np.array_equal(members, keep.reshape(-1))
    for t in range(6):
        np.testing.assert_allclose(scores["lira_online"][t * 50 : (t + 1) * 50], _slow_lira_online(pool, keep, t))
    # LOSS is the target's own log-likelihood; the reference score subtracts the base model's.
    np.testing.assert_allclose(scores["loss"][:50], pool[0])
    np.testing.assert_allclose(scores["reference"][50:100], pool[1] - base)


def test_classifier_statistic_is_the_logit_confidence() -> None:
    pool, population, base, keep = _synthetic(0.3, models=4, n=30)
    clf, _ = score_targets(pool, population, base, keep, task="classification")
    p = np.exp(pool)
    phi = np.log(p) - np.log1p(-p)
    lm, _ = score_targets(phi, population, base, keep, task="causal_lm")
    np.testing.assert_allclose(clf["lira_online"], lm["lira_online"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(clf["lira_offline"], lm["lira_offline"], rtol=1e-9, atol=1e-9)


def test_attacks_find_a_planted_membership_signal_and_not_a_missing_one() -> None:
    strong, members = score_targets(*_synthetic(0.3), task="causal_lm")
    for attack in ("lira_online", "lira_offline", "rmia"):
        assert membership_metrics(strong[attack], members).auc > 0.9, attack
    # Calibrating away the per-example difficulty is what makes LiRA beat LOSS.
    assert membership_metrics(strong["lira_online"], members).auc > membership_metrics(strong["loss"], members).auc
    null, members = score_targets(*_synthetic(0.0), task="causal_lm")
    for attack in ATTACKS:
        assert abs(membership_metrics(null[attack], members).auc - 0.5) < 0.05, attack


def test_score_targets_rejects_mismatched_shapes() -> None:
    pool, population, base, keep = _synthetic(0.1, models=4, n=20)
    with pytest.raises(ValueError, match="shapes"):
        score_targets(pool, population, base, keep[:, :10], task="causal_lm")
    with pytest.raises(ValueError, match="shapes"):
        score_targets(pool, population[:3], base, keep, task="causal_lm")


def test_settings_validate_at_the_boundary() -> None:
    assert MembershipSettings.from_mapping({}).num_models == 8
    for bad in ({"num_models": 5}, {"num_models": 2}, {"population": 3}, {"rmia_gamma": 0}, {"shadows": 4}):
        with pytest.raises(ConfigError, match="membership"):
            MembershipSettings.from_mapping(bad)
    with pytest.raises(ConfigError, match="membership"):
        MembershipSettings.from_mapping({"num_models": "eight"})
    with pytest.raises(ConfigError, match="unique names"):
        MembershipSettings.from_mapping({"variants": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="name"):
        MembershipSettings.from_mapping({"variants": [{"set": {}}]})
    settings_ = MembershipSettings.from_mapping(
        {"variants": [{"name": "full", "set": {"adapter.method": "full", "client.learning_rate": 1e-4}}]}
    )
    [(name, cfg)] = settings_.resolved_variants(tiny_config())
    assert name == "full" and cfg.adapter.method == "full" and cfg.client.learning_rate == 1e-4
    with pytest.raises(ConfigError, match="unknown config key"):
        MembershipSettings.from_mapping({"variants": [{"name": "x", "set": {"adapter.nope": 1}}]}).resolved_variants(
            tiny_config()
        )
    [(name, _)] = MembershipSettings().resolved_variants(tiny_config())
    assert name == "lora"


def test_local_model_transport_keeps_only_what_the_server_would_accept() -> None:
    """Malformed, wrong-round, unexpected, replayed, non-finite or wrong-size uploads never enter the view."""
    from collections.abc import Callable

    from attacks.membership import LocalModelTransport
    from privfed import ClientUpdate, GlobalModel
    from privfed.errors import ProtocolError
    from privfed.transport import Exchange, Reply

    start = np.arange(4, dtype=np.float32)

    def update(client: int, delta: list[float], round: int = 2) -> bytes:
        return ClientUpdate(round, client, 1, 0.0, np.asarray(delta, dtype=np.float32)).to_bytes()

    replies = (
        update(0, [1, 1, 1, 1]),
        update(0, [9, 9, 9, 9]),  # a replay: the server keeps the first
        update(1, [1, 2, 3, 4], round=1),  # stale round
        update(5, [1, 1, 1, 1]),  # not in the cohort
        update(2, [float("nan"), 0, 0, 0]),
        update(3, [1, 1]),  # wrong size
        b"\x00garbage",
    )
    cohorts: list[list[int]] = []

    def sender(raw: bytes) -> int:
        try:
            return ClientUpdate.from_bytes(raw).client_id
        except ProtocolError:
            return 3

    class Inner:
        def exchange(
            self,
            messages: dict[int, bytes],
            *,
            round: int,
            stage: str,
            on_reply: Callable[[int], None] | None = None,
        ) -> Exchange:
            cohorts.append(list(messages))
            return Exchange(replies=tuple(Reply(sender(r), r) for r in replies), bytes_down=0, bytes_up=0)

    transport = LocalModelTransport(Inner(), frozenset({4}))
    broadcast = GlobalModel(round=2, vector=start).to_bytes()
    transport.exchange(dict.fromkeys([0, 1, 2, 3, 4], broadcast), round=2, stage="train")
    assert cohorts == [[0, 1, 2, 3]]  # the absent client is never asked
    assert sorted(transport.local_models) == [0]
    np.testing.assert_array_equal(transport.local_models[0], start + 1)


def test_client_level_membership_refuses_user_level_dp() -> None:
    config = tiny_config(**{"privacy.mode": "user", "privacy.user.noise_multiplier": 1.0, "privacy.delta": 1e-3})
    with pytest.raises(ConfigError, match="user-level DP"):
        MembershipSettings(unit="client").resolved_variants(config)
    assert MembershipSettings().resolved_variants(config)[0][1] == config  # record level is fine
