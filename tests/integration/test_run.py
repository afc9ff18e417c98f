"""End-to-end runs on tiny models: run directory, resume, adapters, CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from privfed.cli import main
from privfed.config import dump_config, load_config
from privfed.errors import CheckpointError, ConfigError
from privfed.experiments import RunDirectory, build_experiment, resume_experiment, run_experiment
from tests.conftest import tiny_config

ROUND_KEYS = {"round", "train_loss", "eval_loss", "eval_accuracy", "num_clients", "bytes_up", "bytes_down", "seconds"}
SUMMARY_KEYS = {
    "final_eval_accuracy",
    "rounds",
    "num_clients_total",
    "bytes_up_total",
    "trainable_params",
    "base_params",
}


def metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in records]


def test_run_writes_a_complete_run_directory(run_dir: Path) -> None:
    config = tiny_config()
    summary = run_experiment(config, run_dir, quiet=True)
    assert load_config(run_dir / "config.resolved.toml") == config
    assert tomllib.loads((run_dir / "config.resolved.toml").read_text())["server"]["rounds"] == 3
    records = metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert set(r) >= ROUND_KEYS
        assert r["num_clients"] == 3
        assert 0.0 <= r["eval_accuracy"] <= 1.0
    d = summary["trainable_params"]
    # Each round: 3 broadcasts and 3 updates of d float32 values plus fixed headers.
    assert records[0]["bytes_down"] == 3 * (4 * d + 18)
    assert records[0]["bytes_up"] == 3 * (4 * d + 38)
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert set(on_disk) >= SUMMARY_KEYS and on_disk == json.loads(json.dumps(summary))
    assert summary["rounds"] == 3 and summary["completed"] is True
    assert summary["bytes_up_total"] == sum(r["bytes_up"] for r in records)
    assert summary["final_eval_accuracy"] == records[-1]["eval_accuracy"]
    assert summary["base_params"] > 50 * summary["trainable_params"]
    assert 0 < summary["majority_class_rate"] < 1


def test_saved_adapter_loads_with_peft_and_matches_the_final_global_model(run_dir: Path) -> None:
    from peft import PeftModel

    from privfed.models import load_base_model
    from privfed.rng import derive_seed

    config = tiny_config()
    run_experiment(config, run_dir, quiet=True)
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    exp = build_experiment(config)  # same seed -> same frozen base weights
    checkpoint = RunDirectory(run_dir).load_checkpoint()
    assert checkpoint is not None
    exp.layout.load_into(exp.model, checkpoint.arrays["global"])
    # A user rebuilds the base the experiment started from (tiny models are seeded from the config).
    base = load_base_model("tiny-bert", num_labels=5, init_seed=derive_seed(config.seed, "model-init"))
    reloaded = PeftModel.from_pretrained(base.model, str(run_dir / "adapter"))
    batch = exp.eval_data.batch(np.arange(8, dtype=np.int64))
    exp.model.eval()
    reloaded.eval()
    with torch.no_grad():
        ours = exp.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        theirs = reloaded(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_resume_ends_with_the_same_metrics(tmp_path: Path, strategy: str) -> None:
    config = tiny_config(**{"server.strategy": strategy, "server.learning_rate": 1.0 if strategy == "fedavg" else 0.01})
    straight = run_experiment(config, tmp_path / "straight", quiet=True)
    partial = run_experiment(config, tmp_path / "resumed", quiet=True, stop_after_round=1)
    assert partial["completed"] is False and partial["rounds"] == 1
    assert not (tmp_path / "resumed" / "adapter").exists()
    # A crash after writing round 2's metrics line but before its checkpoint:
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as handle:
        handle.write('{"round": 2, "train_loss": 99.0}\n{"round": 3, "trunc')
    resumed = resume_experiment(tmp_path / "resumed", quiet=True)
    assert without_timings(metrics(tmp_path / "resumed")) == without_timings(metrics(tmp_path / "straight"))
    drop = {"seconds_total"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in straight.items() if k not in drop}


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path: Path) -> None:
    a = run_experiment(tiny_config(), tmp_path / "a", quiet=True)
    b = run_experiment(tiny_config(), tmp_path / "b", quiet=True)
    c = run_experiment(tiny_config(seed=4), tmp_path / "c", quiet=True)
    assert without_timings(metrics(tmp_path / "a")) == without_timings(metrics(tmp_path / "b"))
    assert a["final_eval_loss"] == b["final_eval_loss"] != c["final_eval_loss"]


def test_training_reduces_held_out_loss(run_dir: Path) -> None:
    config = tiny_config(**{"server.rounds": 6, "client.local_steps": 5, "client.learning_rate": 0.01})
    summary = run_experiment(config, run_dir, quiet=True)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.01


@pytest.mark.parametrize(
    ("model", "dataset", "method"),
    [
        ("tiny-bert", "drug_reviews", "ia3"),
        ("tiny-bert", "tweets", "prompt_tuning"),
        ("tiny-llama", "fortunes", "lora"),
        ("tiny-llama", "bbc_news", "prompt_tuning"),
    ],
)
def test_other_adapter_methods_and_tasks_run_through_the_flat_vector(
    run_dir: Path, model: str, dataset: str, method: str
) -> None:
    config = tiny_config(
        **{
            "model.name": model,
            "data.name": dataset,
            "adapter.method": method,
            "partition.method": "natural" if dataset in ("drug_reviews", "fortunes") else "iid",
            "server.rounds": 2,
        }
    )
    summary = run_experiment(config, run_dir, quiet=True)
    records = metrics(run_dir)
    assert len(records) == 2 and all(r["update_norm"] > 0 for r in records)
    assert summary["adapter_method"] == method
    if model == "tiny-llama":
        assert summary["final_eval_perplexity"] == pytest.approx(np.exp(summary["final_eval_loss"]))
        assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]


def test_incompatible_model_and_dataset_is_a_config_error(run_dir: Path) -> None:
    with pytest.raises(ConfigError, match="language-modelling"):
        run_experiment(tiny_config(**{"data.name": "fortunes"}), run_dir, quiet=True)
    with pytest.raises(ConfigError, match="image dataset"):
        run_experiment(tiny_config(**{"data.name": "digits"}), run_dir / "x", quiet=True)


def test_existing_run_is_never_overwritten(run_dir: Path) -> None:
    run_experiment(tiny_config(**{"server.rounds": 1}), run_dir, quiet=True)
    before = (run_dir / "metrics.jsonl").read_bytes()
    with pytest.raises(CheckpointError, match="--resume"):
        run_experiment(tiny_config(), run_dir, quiet=True)
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def test_resume_refuses_a_changed_config(run_dir: Path) -> None:
    run_experiment(tiny_config(), run_dir, quiet=True, stop_after_round=1)
    (run_dir / "config.resolved.toml").write_text(dump_config(tiny_config(**{"client.learning_rate": 0.5})))
    with pytest.raises(CheckpointError, match="changed"):
        resume_experiment(run_dir, quiet=True)


def test_cli_run_quiet_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "c.toml"
    config_path.write_text(dump_config(tiny_config(**{"server.rounds": 2})))
    out = tmp_path / "out"
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "rounds" not in captured.err  # no progress bar
    body, final = captured.out.split("\n", 1)[1].rstrip("\n").rsplit("\n", 1)
    assert json.loads(body)["rounds"] == 2
    assert final.startswith("final: 2 round(s), accuracy ") and final.endswith("not private (no ε)")
    assert main(["run", "--resume", str(out), "--quiet"]) == 0  # already complete: nothing to redo
    assert len(metrics(out)) == 2
    assert main(["run", str(config_path), "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_cli_shows_progress_unless_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = tmp_path / "c.toml"
    config_path.write_text(dump_config(tiny_config(**{"server.rounds": 1})))
    assert main(["run", str(config_path), "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "rounds" in err and "1/1" in err


def test_ffa_lora_trains_only_b_and_keeps_a_at_its_seeded_init(run_dir: Path) -> None:
    config = tiny_config(**{"adapter.method": "ffa_lora", "server.rounds": 2})
    first = build_experiment(config)
    names = first.layout.names
    assert names and not any(".lora_A." in n for n in names)
    assert any(".lora_B." in n for n in names)
    frozen_a = {n: p.detach().clone() for n, p in first.model.named_parameters() if ".lora_A." in n}
    assert frozen_a and all(float(a.abs().sum()) > 0 for a in frozen_a.values())
    # A is re-derived from the adapter-init seed, so another party builds the same A.
    again = {n: p for n, p in build_experiment(config).model.named_parameters() if ".lora_A." in n}
    assert all(torch.equal(frozen_a[n], again[n]) for n in frozen_a)
    summary = run_experiment(config, run_dir, quiet=True)
    assert summary["adapter_method"] == "ffa_lora"
    records = metrics(run_dir)
    assert len(records) == 2 and all(r["update_norm"] > 0 for r in records)
    assert first.layout.dim < build_experiment(tiny_config()).layout.dim


def test_full_fine_tuning_trains_every_parameter(run_dir: Path) -> None:
    config = tiny_config(**{"adapter.method": "full", "server.rounds": 2})
    exp = build_experiment(config)
    total = sum(p.numel() for p in exp.model.parameters())
    assert exp.layout.dim == total == exp.base_params  # no adapter: the whole model travels
    assert exp.layout.dim > 10 * build_experiment(tiny_config()).layout.dim
    summary = run_experiment(config, run_dir, quiet=True)
    assert summary["adapter_method"] == "full" and summary["completed"]
    records = metrics(run_dir)
    assert all(r["update_norm"] > 0 for r in records)
    # The embeddings (frozen under every PEFT method) moved.
    final = RunDirectory(run_dir).load_checkpoint()
    assert final is not None
    name = next(n for n in exp.layout.names if "word_embeddings" in n)
    slot = exp.layout.slots[exp.layout.names.index(name)]
    window = slice(slot.offset, slot.offset + slot.size)
    moved = final.arrays["global"][window] - exp.initial_vector[window]
    assert float(abs(moved).max()) > 0


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_full_fine_tuning_under_sample_level_dp_is_refused_before_anything_is_written(run_dir: Path, mode: str) -> None:
    # BERT's position embeddings read a buffer shared by the batch: Opacus gives them one
    # gradient for all examples, which DP-SGD cannot clip per example (a late crash before).
    config = tiny_config(
        **{
            "adapter.method": "full",
            "server.rounds": 1,
            "privacy.mode": "sample",
            "privacy.delta": 1e-3,
            "privacy.sample.noise_multiplier": 1.0,
            "privacy.sample.grad_sample_mode": mode,
        }
    )
    with pytest.raises(ConfigError, match=r"position.embeddings"):
        run_experiment(config, run_dir, quiet=True)
    assert not run_dir.exists()


def test_aborted_or_refused_rounds_count_as_rounds_without_an_update() -> None:
    from privfed.experiments.runner import _no_update_warnings, _round_record
    from privfed.server import RoundResult

    base: dict[str, Any] = {
        "round": 1,
        "num_clients": 3,
        "rejected_updates": 0,
        "train_loss": 1.0,
        "bytes_up": 1,
        "bytes_down": 1,
        "update_norm": 0.1,
    }
    ok = RoundResult(**base)
    aborted = RoundResult(**{**base, "round": 2, "num_clients": 0, "aborted": "below threshold"})
    refused = RoundResult(**{**base, "round": 3, "aggregate_rejected": "the aggregate is not finite"})
    records: list[dict[str, Any]] = [
        dict(_round_record(r, None, {}, seconds=0.0, seconds_train=0.0, seconds_eval=0.0))
        for r in (ok, aborted, refused)
    ]
    assert [r["update_applied"] for r in records] == [True, False, False]
    assert [r["aggregate_rejected"] for r in records] == [None, None, "the aggregate is not finite"]
    rounds, warnings = _no_update_warnings(records)
    assert rounds == [2, 3] and warnings == ["2 of 3 rounds applied no client update (rounds 2, 3)"]
    assert "NO round applied" in _no_update_warnings(records[1:])[1][0]
