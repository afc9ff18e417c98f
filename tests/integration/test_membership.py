"""privfed attack membership on tiny federations: keep_half, reuse, rerun of unfinished runs, results, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attacks.membership import MembershipSettings, balanced_keep, keep_half, run_membership
from attacks.membership.shadow import ATTACKS
from attacks.metrics import load_scores, membership_metrics
from privfed import ConfigError, dump_config
from privfed.cli import main
from privfed.experiments import build_experiment
from privfed.rng import generator
from tests.conftest import tiny_config


def member_config(**overrides: object) -> object:
    base = {
        "data.max_train_examples": 48,
        "data.max_eval_examples": 40,
        "partition.method": "iid",
        "partition.num_clients": 2,
        "server.clients_per_round": 2,
        "server.rounds": 2,
        "client.local_steps": 0,
        "client.local_epochs": 3,
        "client.learning_rate": 0.01,
    }
    base.update(overrides)
    return tiny_config(**base)


def test_keep_half_gives_each_client_its_kept_examples_only() -> None:
    exp = build_experiment(member_config())
    n = sum(len(d) for d in exp.client_data)
    keep = balanced_keep(4, n, np.random.default_rng(1))[0]
    half = keep_half(exp, keep)
    pool = np.concatenate(exp.client_indices)
    assert np.array_equal(np.sort(np.concatenate(half.client_indices)), np.sort(pool[keep]))
    for c, data in enumerate(half.client_data):
        assert len(data) == len(half.client_indices[c])
    assert half.eval_data is exp.eval_data and half.model is exp.model
    with pytest.raises(ValueError, match="pool"):
        keep_half(exp, keep[:-1])
    nobody = np.zeros(n, bool)
    nobody[: len(exp.client_indices[0])] = True  # client 1 keeps nothing
    with pytest.raises(ConfigError, match="client 1 keeps none"):
        keep_half(exp, nobody)


def test_run_membership_scores_every_target_and_reuses_finished_federations(tmp_path: Path) -> None:
    settings = MembershipSettings.from_mapping(
        {
            "num_models": 4,
            "population": 30,
            "variants": [
                {"name": "lora", "set": {"adapter.method": "lora"}},
                {"name": "full", "set": {"adapter.method": "full", "client.learning_rate": 0.002}},
            ],
        }
    )
    out = tmp_path / "m"
    records = run_membership(member_config(), settings, out)
    assert [r["variant"] for r in records] == ["lora", "full"]
    for r in records:
        n = r["pool_examples"]
        assert r["num_members"] == r["num_nonmembers"] == 2 * n  # 4 targets x n, half IN
        for attack in ATTACKS:
            assert 0.0 <= r[f"{attack}_auc"] <= 1.0
            # Under 100 non-members: no TPR at 0.1% or 1% FPR, the smallest measurable FPR beside them.
            assert r["num_nonmembers"] < 100
            for fpr in ("0.1pct", "1pct"):
                assert r[f"{attack}_tpr_at_{fpr}_fpr"] is None and r[f"{attack}_tpr_at_{fpr}_fpr_ci95"] is None
            assert r[f"{attack}_min_resolvable_fpr"] == 1 / r["num_nonmembers"]
        assert 0.0 <= r["eval_accuracy_mean"] <= 1.0
    assert records[1]["trainable_params"] > 10 * records[0]["trainable_params"]
    # Full fine-tuning with three epochs over 24 examples overfits: members are easier.
    assert records[1]["generalization_gap"] > 0 and records[1]["loss_auc"] > 0.6
    assert json.loads((out / "membership_results.json").read_text()) == records
    table = (out / "membership_results.md").read_text()
    assert "| lora | record | final_model |" in table and "| full | record | client_update |" in table
    assert " / n/a / n/a |" in table
    # Every AUC/TPR of the results recomputes exactly from membership_scores.npz.
    views = load_scores(out / "membership_scores.npz")
    assert len(views) == 2 * 2 * len(ATTACKS)  # 2 variants x 2 views x attacks
    for r in records:
        for view in ("", "client_update_"):
            for attack in ATTACKS:
                recomputed = membership_metrics(*views[f"{r['variant']}.{view}{attack}"]).to_dict()
                for key, value in recomputed.items():
                    assert r[f"{view}{attack}_{key}"] == value, (r["variant"], view, attack, key)
    assert (out / "membership.png").stat().st_size > 0 and (out / "full" / "roc.png").stat().st_size > 0

    # Finished federations are reused; one without its scores is rerun from scratch.
    stats = out / "lora" / "model-0" / "stats.npz"
    before = stats.stat().st_mtime_ns
    (out / "full" / "model-3" / "stats.npz").unlink()
    again = run_membership(member_config(), settings, out)
    assert stats.stat().st_mtime_ns == before
    assert (out / "full" / "model-3" / "stats.npz").exists()
    assert again == records  # the rerun federation is trained from the same seeds: same scores


def test_cli_validates_the_membership_table_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = dump_config(member_config())
    bad = tmp_path / "bad.toml"
    bad.write_text(text + "\n[membership]\nnum_models = 3\n")
    assert main(["attack", "membership", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "num_models" in capsys.readouterr().err
    override = tmp_path / "override.toml"
    override.write_text(text + '\n[membership]\n[[membership.variants]]\nname = "x"\nset = { "client.nope" = 1 }\n')
    assert main(["attack", "membership", str(override), "--out", str(tmp_path / "o")]) == 2
    assert "client.nope" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_causal_lm_variant_scores_sequences_by_mean_token_log_likelihood(tmp_path: Path) -> None:
    from attacks.membership.shadow import run_variant

    config = member_config(
        **{
            "model.name": "tiny-llama",
            "data.name": "fortunes",
            "client.learning_rate": 0.02,
            "client.local_epochs": 1,
            "server.rounds": 1,
        }
    )
    settings = MembershipSettings(num_models=4, population=20)
    record, scores, members = run_variant("lm", config, settings, tmp_path / "lm")
    assert record["adapter_method"] == "lora" and members.sum() == (~members).sum() == 2 * record["pool_examples"]
    with np.load(tmp_path / "lm" / "model-0" / "stats.npz") as saved:
        pool = saved["pool"]
    # LOSS scores of target 0 are its own mean token log-likelihoods (negative: losses are > 0).
    np.testing.assert_array_equal(scores["loss"][: pool.size], pool)
    assert np.all(pool < 0)
    assert all(np.isfinite(v).all() for v in scores.values())


def test_local_model_transport_records_each_clients_model_and_leaves_out_absent_clients(tmp_path: Path) -> None:
    """One round, every client: the FedAvg of the recorded local models is the new global adapter."""
    from attacks.membership import LocalModelTransport
    from privfed import RunDirectory, run_experiment
    from privfed.transport import Transport

    config = member_config(**{"partition.num_clients": 3, "server.clients_per_round": 3, "server.rounds": 1})
    exp = build_experiment(config)
    seen: list[LocalModelTransport] = []

    def wrap(inner: Transport) -> Transport:
        seen.append(LocalModelTransport(inner, frozenset({1})))
        return seen[-1]

    run_experiment(config, tmp_path / "r", quiet=True, transport_hook=wrap)
    locals_ = seen[0].local_models
    assert sorted(locals_) == [0, 2]  # client 1 is not in this federation
    final = RunDirectory(tmp_path / "r").load_checkpoint().arrays["global"]  # type: ignore[union-attr]
    weights = np.array([len(exp.client_data[c]) for c in (0, 2)], dtype=np.float64)
    expected = (weights[0] * locals_[0] + weights[1] * locals_[2]) / weights.sum()
    np.testing.assert_allclose(final, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(locals_[0], locals_[2])
    metrics = RunDirectory(tmp_path / "r").read_metrics()
    assert [m["num_clients"] for m in metrics] == [2]


def test_client_update_view_scores_each_example_under_its_own_clients_model(tmp_path: Path) -> None:
    from attacks.membership.shadow import run_variant

    config = member_config()
    settings = MembershipSettings(num_models=4, population=20)
    record, _, _ = run_variant("lora", config, settings, tmp_path / "v")
    exp = build_experiment(config)
    sizes = [len(d) for d in exp.client_data]
    assert record["client_update_clients"] == len(sizes)
    assert record["client_update_loss_num_members"] == record["num_members"]
    for attack in ATTACKS:
        assert 0.0 <= record[f"client_update_{attack}_auc"] <= 1.0
    with np.load(tmp_path / "v" / "model-0" / "stats.npz") as saved:
        client_pool, final_pool = saved["client_pool"], saved["pool"]
        assert saved["client_population"].shape == (len(sizes), 20)
    # Client 0's local model is not the global one: its examples score differently.
    assert client_pool.shape == final_pool.shape and not np.allclose(client_pool, final_pool)
    keep = balanced_keep(4, sum(sizes), generator(config.seed, "membership", "keep"))
    with np.load(tmp_path / "v" / "model-1" / "stats.npz") as saved:
        client_pool_1 = saved["client_pool"]
    with np.load(tmp_path / "v" / "scores.npz") as scores:
        # Client-major blocks, target-major inside: client 0 under targets 0, 1, ..., then client 1.
        loss = scores["client_update_loss"]
        np.testing.assert_array_equal(loss[: sizes[0]], client_pool[: sizes[0]])
        np.testing.assert_array_equal(loss[sizes[0] : 2 * sizes[0]], client_pool_1[: sizes[0]])
        bounds = np.cumsum([0, *sizes])
        labels = np.concatenate([keep[:, bounds[c] : bounds[c + 1]].reshape(-1) for c in range(len(sizes))])
        np.testing.assert_array_equal(scores["client_update_members"], labels)
    assert (tmp_path / "v" / "roc_client_update.png").stat().st_size > 0

    # A finished federation is reused only for the config it was trained from (its name is a label).
    from privfed.config import replace_path
    from privfed.experiments.sweep import _config_differences

    run = tmp_path / "v" / "model-0"
    assert _config_differences(config, run, ignore_name=True) == []
    assert _config_differences(replace_path(config, "name", "other"), run, ignore_name=True) == []
    assert _config_differences(replace_path(config, "name", "other"), run) == ["name"]
    changed = replace_path(config, "client.learning_rate", 0.02)
    assert _config_differences(changed, run, ignore_name=True) == ["client.learning_rate"]

    # A federation recorded before the client view existed is reused, and the view is left out.
    for m in range(4):
        path = tmp_path / "v" / f"model-{m}" / "stats.npz"
        with np.load(path) as saved:
            old = {k: saved[k] for k in ("pool", "population", "keep")}
        np.savez(path, **old)
    again, _, _ = run_variant("lora", config, settings, tmp_path / "v")
    assert not any(k.startswith("client_update_") for k in again)
    assert {k: v for k, v in record.items() if not k.startswith("client_update_")} == again

    # A half-written statistics file is not a finished federation: it is trained again.
    (tmp_path / "v" / "model-2" / "stats.npz").write_bytes(b"PK\x03\x04 truncated")
    assert run_variant("lora", config, settings, tmp_path / "v")[0] == again

    # A different population size cannot reuse the stored statistics: the federations are trained again.
    smaller, _, _ = run_variant("lora", config, MembershipSettings(num_models=4, population=10), tmp_path / "v")
    with np.load(tmp_path / "v" / "model-0" / "stats.npz") as saved:
        assert saved["population"].shape == (10,) and "client_pool" in saved.files
    assert smaller["eval_accuracy_mean"] == record["eval_accuracy_mean"]  # same seeds, same federations


def test_client_level_membership_leaves_out_clients_and_scores_clients(tmp_path: Path) -> None:
    from attacks.membership.shadow import run_variant
    from privfed import RunDirectory

    config = member_config(**{"partition.num_clients": 6, "server.clients_per_round": 6})
    settings = MembershipSettings(num_models=4, population=20, unit="client")
    record, scores, members = run_variant("clients", config, settings, tmp_path / "c")
    assert record["unit"] == "client" and record["num_clients"] == 6
    assert members.shape == (4 * 6,) and members.sum() == 12  # each client IN exactly 2 of 4 federations
    assert all(v.shape == (24,) for v in scores.values())
    assert not any(k.startswith("client_update_") for k in record)  # trivial at client level
    keep = members.reshape(4, 6)
    np.testing.assert_array_equal(keep, balanced_keep(4, 6, generator(config.seed, "membership", "keep", "client")))
    for m in range(4):
        metrics = RunDirectory(tmp_path / "c" / f"model-{m}").read_metrics()
        assert all(row["num_clients"] == int(keep[m].sum()) for row in metrics)
        with np.load(tmp_path / "c" / f"model-{m}" / "stats.npz") as saved:
            np.testing.assert_array_equal(saved["uploaded"], keep[m])  # exactly the IN clients trained
    # Target 0's LOSS score of client c is the mean log-likelihood of c's examples under federation 0.
    exp = build_experiment(config)
    sizes = [len(d) for d in exp.client_data]
    with np.load(tmp_path / "c" / "model-0" / "stats.npz") as saved:
        pool = saved["pool"]
        assert "client_pool" not in saved.files
    means = [block.mean() for block in np.split(pool, np.cumsum(sizes)[:-1])]
    np.testing.assert_allclose(scores["loss"][:6], means)


def test_client_level_membership_refuses_secure_aggregation() -> None:
    settings = MembershipSettings(num_models=4, unit="client", variants=())
    config = member_config(
        **{
            "secagg.enabled": True,
            "server.weighting": "uniform",
            "partition.num_clients": 4,
            "server.clients_per_round": 4,
        }
    )
    with pytest.raises(ConfigError, match="secure aggregation"):
        settings.resolved_variants(config)
    with pytest.raises(ConfigError, match="unit"):
        MembershipSettings(unit="sample")


def test_a_dp_sgd_variant_trains_every_federation_within_its_budget(tmp_path: Path) -> None:
    """Overrides switch DP-SGD on together with its budget; each federation is accounted on its half."""
    from privfed import RunDirectory

    settings = MembershipSettings.from_mapping(
        {
            "num_models": 4,
            "population": 20,
            "variants": [
                {"name": "dp", "set": {"privacy.mode": "sample", "privacy.sample.target_epsilon": 4.0}},
            ],
        }
    )
    config = member_config(**{"server.rounds": 1, "client.local_epochs": 1})
    records = run_membership(config, settings, tmp_path / "dp")
    assert records[0]["privacy_mode"] == "sample"
    for m in range(4):
        summary = RunDirectory(tmp_path / "dp" / "dp" / f"model-{m}").read_summary()
        assert 0.0 < summary["epsilon_sample_max"] <= 4.0 + 1e-6
    for attack in ATTACKS:
        assert 0.0 <= records[0][f"client_update_{attack}_auc"] <= 1.0
