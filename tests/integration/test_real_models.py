"""The real pretrained models load offline and learn (slow: tens of seconds each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from privfed.adapters import AdapterLayout, LoraAdapterConfig, wrap_model
from privfed.config import AdapterConfig
from privfed.experiments import run_experiment
from privfed.models import load_base_model
from tests.conftest import tiny_config

pytestmark = pytest.mark.slow

# Two federated rounds of MiniLM + LoRA on 400 BBC articles: about half a minute on 2 cores.
MINILM_SMALL = {
    "model.name": "minilm",
    "model.max_length": 64,
    "data.max_train_examples": 400,
    "data.max_eval_examples": 150,
    "partition.method": "iid",
    "partition.num_clients": 4,
    "server.clients_per_round": 4,
    "server.rounds": 2,
    "client.local_steps": 6,
    "client.batch_size": 16,
    "client.learning_rate": 0.003,
    "eval.batch_size": 50,
}


def test_minilm_lora_has_the_documented_size_and_learns_bbc_topics(tmp_path: Path) -> None:
    loaded = load_base_model("minilm", num_labels=5)
    assert loaded.spec.pretrained
    base = sum(p.numel() for p in loaded.model.parameters())
    assert 22_500_000 < base < 23_000_000
    settings = LoraAdapterConfig(rank=8, target_modules=("query", "value"))
    model = wrap_model(loaded.model, AdapterConfig(method="lora", method_config=settings), loaded.spec)
    layout = AdapterLayout.from_model(model)
    lora = sum(s.size for s in layout.slots if "lora_" in s.name)
    assert lora == 73_728  # 6 layers x 2 modules x (8x384 + 384x8)
    assert layout.dim == lora + 384 * 5 + 5  # plus the trained classification head

    summary = run_experiment(tiny_config(**MINILM_SMALL), tmp_path / "run", quiet=True)
    assert summary["final_eval_accuracy"] > summary["majority_class_rate"] + 0.3


def test_smollm2_loads_from_gguf_cache_and_lora_lowers_fortune_perplexity(tmp_path: Path) -> None:
    from privfed.models.builtin import smollm2_fp32_dir

    loaded = load_base_model("smollm2")
    assert (smollm2_fp32_dir() / "model.safetensors").exists()
    assert 134_000_000 < sum(p.numel() for p in loaded.model.parameters()) < 135_000_000
    assert loaded.tokenizer.pad_token == "<|im_end|>"
    config = tiny_config(
        **{
            "model.name": "smollm2",
            "model.max_length": 48,
            "data.name": "fortunes",
            "data.max_train_examples": 300,
            "data.max_eval_examples": 48,
            "partition.method": "natural",
            "partition.num_clients": 4,
            "server.clients_per_round": 2,
            "server.rounds": 1,
            "client.local_steps": 4,
            "client.batch_size": 8,
            "client.learning_rate": 0.002,
            "eval.batch_size": 16,
        }
    )
    summary = run_experiment(config, tmp_path / "run", quiet=True)
    assert 1.0 < summary["initial_eval_perplexity"] < 500.0  # a real LM, not a random one (~49k)
    assert summary["final_eval_perplexity"] < summary["initial_eval_perplexity"]


def test_dp_with_negligible_noise_reaches_non_private_accuracy_on_minilm(tmp_path: Path) -> None:
    """Opacus #820 guard, end to end: DP-SGD whose noise (sigma * C = 1e-5) and clipping (C = 10)
    are negligible must train like non-private training (a DP wrapper that silently dropped the
    adapter's gradients would stay near the majority rate). Note sigma * C, not sigma, sets the
    noise: sigma = 0.01 with a huge C is loud noise. Even tiny noise costs some accuracy with
    AdamW, which turns noise on coordinates whose true gradient is 0 (LoRA A while B = 0) into
    full-size steps, and Poisson batches differ from shuffled ones; so the bar is 10 points on
    150 held-out articles. The exact equivalence of the DP and plain paths (no noise, SGD) is
    tested in tests/property/test_dp_mechanisms.py."""
    plain = run_experiment(tiny_config(**MINILM_SMALL), tmp_path / "plain", quiet=True)
    private = run_experiment(
        tiny_config(
            **MINILM_SMALL,
            **{
                "privacy.mode": "sample",
                "privacy.delta": 1e-3,
                "privacy.sample.noise_multiplier": 1e-6,
                "privacy.sample.max_grad_norm": 10.0,
            },
        ),
        tmp_path / "dp",
        quiet=True,
    )
    assert private["final_eval_accuracy"] > private["majority_class_rate"] + 0.3
    assert private["final_eval_accuracy"] >= plain["final_eval_accuracy"] - 0.10
