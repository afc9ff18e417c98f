"""privfed audit on a tiny federation: canaries, both lower bounds, MIA metrics, loud violations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attacks.audit.federated import AuditSettings, CanaryTransport, audit_run
from privfed import ClientUpdate, ConfigError, GlobalModel, dump_config
from privfed.cli import main
from privfed.transport import RoundExchange
from tests.conftest import tiny_config


def audit_config(**overrides: object) -> object:
    base = {
        "partition.num_clients": 60,
        "server.clients_per_round": 10,
        "server.rounds": 3,
        "server.weighting": "uniform",
        "client.local_steps": 1,
    }
    base.update(overrides)
    return tiny_config(**base)


class _Nobody:
    def exchange(self, *, broadcast: bytes, cohort: list[int], on_client_done: object = None) -> RoundExchange:
        return RoundExchange(uploads=(), bytes_down=0, bytes_up=0)


def test_canary_transport_answers_for_canaries_only() -> None:
    direction = np.ones(4, np.float32) / 2
    transport = CanaryTransport(_Nobody(), {3: direction}, norm=0.5, num_examples=7)
    broadcast = GlobalModel(round=1, vector=np.zeros(4, np.float32)).to_bytes()
    exchange = transport.exchange(broadcast=broadcast, cohort=[1, 3])
    (raw,) = exchange.uploads
    update = ClientUpdate.from_bytes(raw)
    assert update.client_id == 3 and update.num_examples == 7
    assert np.allclose(update.delta, 0.25) and np.isclose(np.linalg.norm(update.delta), 0.5)
    assert transport.participations == {3: 1} and transport.initial is not None


def test_nonprivate_audit_finds_the_canaries(tmp_path: Path) -> None:
    settings = AuditSettings(epsilons=(float("inf"),), num_canaries=40, num_unobserved=1000, canary_norm=1.0)
    record = audit_run(audit_config(), settings, tmp_path / "run")
    assert record["epsilon"] is None and record["privacy_mode"] == "none"
    assert record["num_members"] == record["num_inserted"] > 5 and record["num_nonmembers"] >= 1000
    # Without noise an inserted canary that was ever sampled sticks out of the final delta.
    assert record["auc"] > 0.7
    assert record["tpr_at_1pct_fpr"] > 0.2
    assert record["epsilon_lower_bound_one_run"] > 0.0
    assert record["epsilon_lower_bound_one_shot"] > 1.0
    # Record-level black-box MIA on the same final adapter: members are the participants' examples.
    assert record["record_num_members"] > 0 and record["record_num_nonmembers"] > 0
    assert 0.0 <= record["record_loss_auc"] <= 1.0 and 0.0 <= record["record_reference_auc"] <= 1.0


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
    assert record["epsilon"] is not None and record["epsilon"] <= 1.0 + 1e-6
    assert record["epsilon_lower_bound_one_run"] <= record["epsilon"]
    assert not record["bound_violated"]
    assert record["auc"] <= 0.6
    for key in ("privacy_mode", "delta", "epsilon_lower_bound_one_shot", "tpr_at_0.1pct_fpr", "num_nonmembers"):
        assert key in record
    assert (out / "audit.png").exists() and (out / "eps-1" / "canary_roc.png").exists()
    assert "audit directory" in capsys.readouterr().out


def test_audit_settings_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="epsilons"):
        AuditSettings.from_mapping({"epsilons": [0.0]})
    with pytest.raises(ConfigError, match="unknown keys"):
        AuditSettings.from_mapping({"canaries": 3})
    with pytest.raises(ConfigError, match="twice as many clients"):
        audit_run(audit_config(**{"partition.num_clients": 10}), AuditSettings(num_canaries=40), tmp_path / "x")
