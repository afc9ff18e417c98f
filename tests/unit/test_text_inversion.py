"""DAGER-style span attacks on the demo text model (MiniLM): where theory says
recovery must succeed it is exact; where the span holds no information it fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from attacks import Observation, ThreatModel
from attacks.inversion.sweep import InversionSweep, TextSweep, load_inversion_config, run_inversion_sweep
from attacks.inversion.text import span_basis, text_span_attack, tokens_from_embedding_gradient
from attacks.inversion.victim import TextBatch, TextVictim
from attacks.metrics import token_recovery
from privfed import ConfigError
from privfed.cli import main

SENTENCE = "the quick brown fox jumps over the lazy dog"
OTHER = "federated learning keeps data on phones"


@pytest.fixture(scope="module")
def victim() -> TextVictim:
    return TextVictim("minilm", num_labels=3, max_length=16, seed=0)


def observe(victim: TextVictim, model: Any, batches: list[TextBatch], **kw: Any) -> Observation:
    args = {"learning_rate": 0.1, "noise_multiplier": 0.0, "clip_norm": 1.0, "quant_bits": 0}
    args.update(kw)
    return victim.observe(model, batches, rng=np.random.default_rng(0), **args)


def attack(victim: TextVictim, model: Any, obs: Observation, target: Any, batch: TextBatch, **kw: Any) -> Any:
    return text_span_attack(
        obs,
        model,
        target=target,
        max_positions=batch.input_ids.shape[1],
        exclude_tokens=[victim.tokenizer.pad_token_id],
        **kw,
    )


@pytest.mark.parametrize(("target", "rank"), [("full", 0), ("lora", 64), ("ffa_lora", 64)])
def test_single_example_update_gives_exact_tokens_and_order(victim: TextVictim, target: Any, rank: int) -> None:
    batch = victim.tokenize([SENTENCE], [1])
    model = victim.model(target, rank)
    obs = observe(victim, model, [batch])
    result = attack(victim, model, obs, target, batch)
    truth = batch.input_ids[0].tolist()
    assert not result.saturated
    assert result.span_rank == len(truth)  # one independent input per position
    assert list(result.tokens) == truth and list(result.positions) == list(range(len(truth)))
    assert max(result.residuals) < 1e-3
    assert victim.decode(result.sequences[0]) == SENTENCE


def test_embedding_gradient_rows_are_the_batch_vocabulary(victim: TextVictim) -> None:
    batch = victim.tokenize([SENTENCE, OTHER], [1, 2])
    model = victim.model("full", 0)
    obs = observe(victim, model, [batch])
    name = next(n for n in obs.updates if n.endswith("word_embeddings.weight"))
    truth = set(batch.input_ids[batch.attention_mask.astype(bool)].tolist())
    assert set(tokens_from_embedding_gradient(obs, name)) == truth


def test_lora_first_round_leaks_nothing_through_a(victim: TextVictim) -> None:
    # B = 0 at initialisation, so dL/dA = s B^T dL/dW vanishes: the span is empty.
    batch = victim.tokenize([SENTENCE], [1])
    model = victim.model("lora", 8)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.data.zero_()
    result = attack(victim, model, observe(victim, model, [batch]), "lora", batch)
    assert result.span_rank == 0 and result.tokens == ()


def test_low_rank_lora_saturates_and_cannot_certify(victim: TextVictim) -> None:
    batch = victim.tokenize([SENTENCE], [1])  # 11 tokens > 2 * rank 4 spanned directions
    model = victim.model("lora", 4)
    result = attack(victim, model, observe(victim, model, [batch]), "lora", batch)
    assert result.saturated and result.span_rank == 8
    # A token is certified only inside the span; none of the true inputs is.
    assert min(result.residuals) > 0.05


def test_random_update_recovers_nothing(victim: TextVictim) -> None:
    batch = victim.tokenize([SENTENCE], [1])
    model = victim.model("full", 0)
    real = observe(victim, model, [batch])
    rng = np.random.default_rng(1)
    noise = {n: (rng.normal(size=v.shape) * np.std(v)).astype(np.float32) for n, v in real.updates.items()}
    fake = Observation(threat=ThreatModel(), updates=noise, learning_rate=0.1)
    truth = batch.input_ids[0].tolist()
    result = attack(victim, model, fake, "full", batch, guesses=len(truth))
    assert result.saturated
    assert token_recovery(truth, result.tokens).f1 <= 0.2


def test_dp_noise_destroys_recovery_and_secagg_dilutes_it(victim: TextVictim) -> None:
    batch = victim.tokenize([SENTENCE], [1])
    model = victim.model("full", 0)
    truth = batch.input_ids[0].tolist()
    noisy = attack(victim, model, observe(victim, model, [batch], noise_multiplier=1.0), "full", batch, guesses=11)
    assert token_recovery(truth, noisy.tokens).f1 <= 0.2
    other = victim.tokenize([OTHER], [2])
    summed = observe(victim, model, [batch, other])
    assert summed.threat.view == "secagg_aggregate" and summed.threat.num_clients == 2
    result = attack(victim, model, summed, "full", batch)
    # Both clients' tokens are in the span: full recall, but the target's share is diluted.
    score = token_recovery(truth, result.tokens)
    assert score.recall == 1.0 and score.precision < 0.75


def test_span_basis_rank_and_saturation() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 10)) @ rng.normal(size=(10, 10))
    low = rng.normal(size=(5, 2)) @ rng.normal(size=(2, 10))
    basis, saturated = span_basis(rows)
    assert basis.shape == (3, 10) and saturated
    basis, saturated = span_basis(low)
    assert basis.shape == (2, 10) and not saturated
    assert np.allclose(basis @ basis.T, np.eye(2), atol=1e-10)


def test_sweep_records_resume_and_bad_config(tmp_path: Path) -> None:
    sweep = InversionSweep(
        modalities=("text",),
        text=TextSweep(
            targets=("lora",),
            ranks=(64,),
            batch_sizes=(1,),
            noise_multipliers=(0.0, 1.0),
            secagg_clients=(1,),
            quant_bits=(0,),
            max_length=16,
        ),
    )
    records = run_inversion_sweep(sweep, tmp_path)
    saved = json.loads((tmp_path / "inversion_results.json").read_text())
    assert saved == records and len(records) == 2
    clean, noisy = records
    for key in ("modality", "target", "rank", "batch_size", "noise_multiplier", "secagg_clients", "quant_bits"):
        assert key in clean
    assert clean["token_f1"] == 1.0 and clean["rouge1"] == pytest.approx(1.0)
    assert noisy["token_f1"] <= noisy["chance_token_f1"] + 0.15
    assert (tmp_path / "inversion_results.md").exists() and (tmp_path / "inversion_vs_defence.png").exists()
    # A rerun reuses every finished record (no attack runs: identical, including timings).
    assert run_inversion_sweep(sweep, tmp_path) == records
    bad = tmp_path / "bad.toml"
    bad.write_text("[inversion]\ndesign = 'random'\n")
    with pytest.raises(ConfigError, match="design"):
        load_inversion_config(bad)
    bad.write_text("[inversion.text]\nranks = []\n")
    with pytest.raises(ConfigError, match="non-empty"):
        load_inversion_config(bad)
    bad.write_text("[inversion.image]\nbogus = 1\n")
    with pytest.raises(ConfigError, match=r"unknown key inversion\.image\.bogus"):
        load_inversion_config(bad)


def test_cli_attack_inversion_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "inv.toml"
    config.write_text(
        "[inversion]\nmodalities = ['image']\n[inversion.image]\nbatch_sizes = [1]\nnoise_multipliers = [0.0, 1.0]\n"
        "secagg_clients = [1]\nquant_bits = [0]\nsteps = 150\nrestarts = 1\n"
    )
    out = tmp_path / "out"
    assert main(["attack", "inversion", str(config), "--out", str(out), "--quiet"]) == 0
    records = json.loads((out / "inversion_results.json").read_text())
    clean, noisy = records
    assert clean["modality"] == "image" and clean["psnr_db"] > 25 and clean["ssim"] > 0.9
    assert clean["label_accuracy"] == 1.0
    assert noisy["psnr_db"] < clean["psnr_db"] - 15
    assert (out / "image_reconstructions.png").exists()
    assert "psnr_db" in capsys.readouterr().out
