"""privfed audit on a tiny federation: canaries, both lower bounds, MIA metrics, loud violations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attacks.audit.federated import (
    AuditRecord,
    AuditSettings,
    CanaryTransport,
    audit_run,
    audit_table,
    audit_verdict,
    plot_audit,
    read_audit_record,
)
from attacks.metrics import load_scores, membership_metrics
from attacks.results import upgrade_record
from privfed import ClientUpdate, ConfigError, GlobalModel, dump_config
from privfed.cli import main
from privfed.transport import Exchange, Reply
from tests.conftest import tiny_config


def audit_config(**overrides: object) -> object:
    base = {
        "partition.num_clients": 60,
        "server.clients_per_round": 10,
        "server.rounds": 3,
        "server.weighting": "uniform",
        "client.local_steps": 1,
        "partition.method": "iid",
        "data.max_train_examples": 600,
    }
    base.update(overrides)
    return tiny_config(**base)


class _Nobody:
    def exchange(self, messages: dict[int, bytes], *, round: int, stage: str, on_reply: object = None) -> Exchange:
        return Exchange(replies=(), bytes_down=0, bytes_up=0)


def test_canary_transport_answers_for_canaries_only() -> None:
    direction = np.ones(4, np.float32) / 2
    transport = CanaryTransport(_Nobody(), {3: direction}, norm=0.5, num_examples=7)
    broadcast = GlobalModel(round=1, vector=np.zeros(4, np.float32)).to_bytes()
    exchange = transport.exchange(dict.fromkeys([1, 3], broadcast), round=1, stage="train")
    (reply,) = exchange.replies
    update = ClientUpdate.from_bytes(reply.data)
    assert reply.sender == 3
    assert update.client_id == 3 and update.num_examples == 7
    assert np.allclose(update.delta, 0.25) and np.isclose(np.linalg.norm(update.delta), 0.5)
    assert transport.participations == {3: 1} and transport.initial is not None


def test_nonprivate_audit_finds_the_canaries(tmp_path: Path) -> None:
    settings = AuditSettings(epsilons=(float("inf"),), num_canaries=150, num_unobserved=1000, canary_norm=1.0)
    config = audit_config(**{"partition.num_clients": 200, "server.clients_per_round": 20, "server.rounds": 4})
    record = audit_run(config, settings, tmp_path / "run")
    # The declared shape: every key of AuditRecord in its order, but those run_audit puts in front.
    assert list(record) == [k for k in AuditRecord.__annotations__ if k not in ("run", "target_epsilon")]
    assert record["epsilon"] is None and record["privacy_mode"] == "none"
    assert record["num_members"] == record["num_inserted"] > 5 and record["num_nonmembers"] >= 1000
    # Without noise an inserted canary that was ever sampled sticks out of the final delta; about a third
    # are sampled in 4 rounds at 20/200, and unsampled ones are indistinguishable: AUC ~ 0.5 + 0.34 / 2.
    assert record["auc"] > 0.6
    assert record["tpr_at_1pct_fpr"] > 0.2
    assert record["epsilon_lower_bound_one_run"] > 0.5
    assert record["epsilon_lower_bound_one_run_final_model"] > 0.5
    assert record["epsilon_estimate_one_shot"] > 1.0  # an estimate (Andrew et al.), not a bound
    assert "epsilon_lower_bound_one_shot" not in record
    # Record-level black-box MIA on the same final adapter: members are the participants' examples.
    assert record["record_num_members"] > 0 and record["record_num_nonmembers"] > 0
    assert 0.0 <= record["record_loss_auc"] <= 1.0 and 0.0 <= record["record_reference_auc"] <= 1.0
    # Every AUC/TPR of the record recomputes exactly from the saved scores.
    views = load_scores(tmp_path / "run" / "audit_scores.npz")
    assert set(views) == {"whitebox", "final_model", "record_loss", "record_reference"}
    for view, prefix in (("whitebox", ""), ("final_model", "final_model_"), ("record_loss", "record_loss_")):
        recomputed = membership_metrics(*views[view]).to_dict()
        for key in ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "tpr_at_1pct_fpr_ci95"):
            if f"{prefix}{key}" in record:
                assert record[f"{prefix}{key}"] == recomputed[key], (view, key)
    # 1000+ non-members resolve 0.1% FPR; the record-level MIA's few held-out examples do not.
    assert record["tpr_at_0.1pct_fpr"] is not None and record["tpr_at_0.1pct_fpr_ci95"] is not None
    assert record["min_resolvable_fpr"] == 1 / record["num_nonmembers"]
    if record["record_num_nonmembers"] < 1000:
        assert record["record_loss_tpr_at_0.1pct_fpr"] is None


def test_dp_audit_respects_the_accountant_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = audit_config(
        **{"privacy.mode": "user", "privacy.user.noise_multiplier": 2.0, "privacy.user.clip_norm": 0.05}
    )
    path = tmp_path / "audit.toml"
    text = dump_config(config) + "\n[audit]\nepsilons = [1.0]\nnum_canaries = 40\nnum_unobserved = 500\n"
    path.write_text(text)
    out = tmp_path / "out"
    assert main(["audit", str(path), "--out", str(out), "--quiet"]) == 0
    (record,) = json.loads((out / "audit_results.json").read_text())
    assert list(record) == list(AuditRecord.__annotations__)  # a result file's record: exactly the declared keys
    assert record["epsilon"] is not None and record["epsilon"] <= 1.0 + 1e-6
    assert record["epsilon_lower_bound_one_run"] <= record["epsilon"]
    assert not record["bound_violated"]
    assert record["auc"] <= 0.6
    for key in ("privacy_mode", "delta", "epsilon_estimate_one_shot", "tpr_at_0.1pct_fpr", "num_nonmembers"):
        assert key in record
    assert (out / "audit.png").exists() and (out / "eps-1" / "canary_roc.png").exists()
    scores = load_scores(out / "audit_scores.npz")
    assert set(scores) >= {"1.whitebox", "1.final_model"}
    # What the audit writes is already in the form attacks.results derives from the scores (every view,
    # the record-level ones included, with its own min_resolvable_fpr): upgrading it changes nothing.
    assert upgrade_record(record, scores) == record
    assert record["record_loss_min_resolvable_fpr"] == 1 / record["record_num_nonmembers"]
    printed = capsys.readouterr().out
    assert "audit directory" in printed
    assert f"accountant epsilon {record['epsilon']:.3f}: OK" in printed  # one verdict line per audit
    assert printed.count(": OK") == 1


def test_audit_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epsilons"):
        AuditSettings.from_mapping({"epsilons": [0.0]})
    with pytest.raises(ConfigError, match=r"unknown key audit\.canaries"):
        AuditSettings.from_mapping({"canaries": 3})
    with pytest.raises(ConfigError, match="twice as many clients"):
        audit_run(audit_config(**{"partition.num_clients": 10}), AuditSettings(num_canaries=40), tmp_path / "x")


def _simulated_dp_fedavg_scores(
    *, m: int, d: int, q: float, rounds: int, sigma: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Canary-only DP-FedAvg aggregation in numpy; scored by the white-box statistic."""
    from attacks.audit.federated import whitebox_scores

    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    directions = rng.normal(size=(m, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    deltas = []
    for _ in range(rounds):
        sampled = included & (rng.random(m) < q)
        deltas.append((directions[sampled].sum(axis=0) + rng.normal(0.0, sigma, size=d)) / (q * m))
    config = tiny_config(
        **{
            "partition.num_clients": m,
            "server.clients_per_round": max(1, round(q * m)),
            "privacy.mode": "user",
            "privacy.user.noise_multiplier": sigma,
            "privacy.user.clip_norm": 1.0,
        }
    )
    summary = {"user_noise_multiplier": sigma}
    scores = whitebox_scores(directions.astype(np.float32), np.stack(deltas), config, summary, [], 1.0)
    return scores, included


def test_whitebox_statistic_is_the_exact_log_likelihood_ratio() -> None:
    scores, _ = _simulated_dp_fedavg_scores(m=50, d=400, q=0.2, rounds=3, sigma=1.5, seed=1)
    assert scores.shape == (50,) and np.all(np.isfinite(scores))
    # Reference: a canary never seen has LR ratio per round (1-q) + q exp(mu s - mu^2/2), mu = 1/sigma.
    # Flipping the sign of a direction flips s: the statistic must be monotone in s per round.
    from attacks.audit.federated import whitebox_scores

    config = tiny_config(
        **{
            "partition.num_clients": 10,
            "server.clients_per_round": 2,
            "privacy.mode": "user",
            "privacy.user.noise_multiplier": 2.0,
            "privacy.user.clip_norm": 1.0,
        }
    )
    u = np.eye(3, dtype=np.float32)
    rounds = np.array([[0.3, -0.1, 0.0]])  # noise unit: eta * sigma * C / E = 1.0
    got = whitebox_scores(u, rounds, config, {"user_noise_multiplier": 2.0}, [], 1.0)
    q, mu = 0.2, 0.5
    want = [np.log((1 - q) + q * np.exp(mu * s - mu * mu / 2)) for s in (0.3, -0.1, 0.0)]
    assert np.allclose(got, want, rtol=1e-12)


def test_whitebox_one_run_audit_of_the_gaussian_mechanism_is_valid_and_strong() -> None:
    from attacks.audit import best_one_run_bound
    from privfed import SampledGaussianEvent, compute_epsilon

    sigma = 1.0
    scores, included = _simulated_dp_fedavg_scores(m=1000, d=10000, q=1.0, rounds=1, sigma=sigma, seed=0)
    eps_hat, _ = best_one_run_bound(scores, included, delta=1e-5, positive_only=True)
    event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=1.0, steps=1, scope="user", subject=None, round=0)
    eps = compute_epsilon([event], delta=1e-5)
    assert eps_hat <= eps  # a violation would mean broken accounting or a broken bound
    # The one-run ceiling for a Gaussian mechanism with 1000 ideal canaries is about 0.3-0.4 eps.
    assert eps_hat >= 0.25 * eps


class _TwoClients:
    def exchange(self, messages: dict[int, bytes], *, round: int, stage: str, on_reply: object = None) -> Exchange:
        ups = [
            Reply(
                sender=c,
                data=ClientUpdate(
                    round=1, client_id=c, num_examples=5, train_loss=0.1, delta=np.full(4, c, np.float32)
                ).to_bytes(),
            )
            for c in messages
        ]
        return Exchange(replies=tuple(ups), bytes_down=0, bytes_up=0)


def test_automatic_canary_norm_is_the_median_real_update_norm() -> None:
    transport = CanaryTransport(_TwoClients(), {9: np.array([1, 0, 0, 0], np.float32)}, norm=None)
    broadcast = GlobalModel(round=1, vector=np.zeros(4, np.float32)).to_bytes()
    exchange = transport.exchange(dict.fromkeys([1, 2, 3, 9], broadcast), round=1, stage="train")
    canary = ClientUpdate.from_bytes(exchange.replies[-1].data)
    assert canary.client_id == 9
    assert transport.norm == pytest.approx(4.0)  # real norms 2, 4, 6
    assert np.allclose(canary.delta, [4.0, 0, 0, 0])


def test_cli_rejects_bad_audit_and_exposure_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text(dump_config(audit_config()) + "\n[audit]\nnum_canaries = 'many'\n")
    assert main(["audit", str(path), "--out", str(tmp_path / "a")]) == 2
    path.write_text(dump_config(audit_config()) + "\n[exposure]\nrepeats = [0]\n")
    assert main(["attack", "exposure", str(path), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "audit.num_canaries must be an integer; got 'many' (str)" in err
    assert "exposure.repeats must be a non-empty list of counts >= 1; got [0]" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _old_record(**changes: object) -> dict[str, object]:
    """An audit record as result files before the rename hold it (docs/audit_results.json, 2026-11-26)."""
    record: dict[str, object] = {
        "run": "8",
        "epsilon": 7.96,
        "epsilon_lower_bound_one_run": 1.07,
        "epsilon_lower_bound_one_shot": 3.17,
        "auc": 0.63,
        "tpr_at_0.1pct_fpr": 0.02,
        "tpr_at_1pct_fpr": 0.054,
        "num_nonmembers": 2504,
        "final_eval_accuracy": 0.333,
    }
    record.update(changes)
    return record


def test_old_result_files_are_read_under_the_new_one_shot_key(tmp_path: Path) -> None:
    new = read_audit_record(_old_record())
    assert new["epsilon_estimate_one_shot"] == 3.17 and "epsilon_lower_bound_one_shot" not in new
    # An old file holds every required key of AuditRecord; the NotRequired ones stay missing (not invented).
    assert AuditRecord.__required_keys__ <= set(new) and "delta" not in new and "record_loss_auc" not in new
    assert set(new) <= set(AuditRecord.__annotations__)
    both = read_audit_record(_old_record(epsilon_estimate_one_shot=1.5))
    assert both["epsilon_estimate_one_shot"] == 1.5
    # Tables and plots built from an old file work and call the one-shot figure an estimate.
    table = audit_table([_old_record(), _old_record(run="inf", epsilon=None, **{"tpr_at_0.1pct_fpr": None})])
    assert "one-shot ε estimate (not a bound)" in table and "lower bound" in table
    assert "| 8 | 7.96 | 1.07 | 3.17 |" in table and "n/a" in table
    plot_audit([_old_record()], tmp_path / "old.png")  # no delta in the file: the axis says so
    assert "δ unknown" in (tmp_path / "old.svg").read_text()
    plot_audit([_old_record(delta=1e-5), _old_record(run="inf", epsilon=None, delta=1e-5)], tmp_path / "a.png")
    assert all((tmp_path / f"a.{fmt}").stat().st_size > 1000 for fmt in ("png", "pdf", "svg"))
    svg = (tmp_path / "a.svg").read_text()  # the house style keeps text as text: the ε axis names unit and δ
    assert "user-level" in svg and "δ = 1e-05" in svg and "no DP" in svg


def test_audit_verdict_is_ok_or_violated() -> None:
    assert audit_verdict(_old_record()).endswith("accountant epsilon 7.960: OK (one-shot estimate 3.170, not a bound)")
    assert "> accountant epsilon 0.500: VIOLATED" in audit_verdict(_old_record(epsilon=0.5))
    assert ": OK" in audit_verdict(_old_record(epsilon=1.07))  # equal is not a violation
    assert "privacy off" in audit_verdict(_old_record(epsilon=None))
