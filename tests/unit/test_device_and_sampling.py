"""Where the model runs (model.device) and per-client Poisson rates (client.sampling_rate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_config

from privfed.client.trainer import batch_size_for, local_steps, sampling_rate_for
from privfed.config import ClientConfig
from privfed.errors import ConfigError
from privfed.experiments.runner import build_experiment, resolve_device, resolve_privacy
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.calibrate import calibrate_noise_multiplier
from privfed.privacy.events import SampledGaussianEvent
from privfed.tasks import Batch, get_task


def test_sampling_rate_scales_each_clients_batch() -> None:
    fixed = ClientConfig(batch_size=16, local_epochs=2)
    assert batch_size_for(fixed, 1000) == 16
    assert sampling_rate_for(fixed, 1000) == pytest.approx(0.016)
    assert sampling_rate_for(fixed, 8) == 1.0  # a client smaller than the batch
    assert local_steps(fixed, 1000) == 2 * 63
    rated = ClientConfig(sampling_rate=0.1, local_epochs=2)
    assert [batch_size_for(rated, n) for n in (1000, 35, 3)] == [100, 4, 1]
    assert sampling_rate_for(rated, 1000) == sampling_rate_for(rated, 35) == 0.1
    # Epochs: 1/q steps each for every client, whatever rounding does to q * n (same epsilon for all).
    assert local_steps(rated, 1000) == local_steps(rated, 14) == local_steps(rated, 15) == 2 * 10
    assert local_steps(ClientConfig(sampling_rate=0.1, local_steps=7), 1000) == 7


def test_record_level_sigma_with_a_sampling_rate_is_every_clients_own() -> None:
    """With batch_size, sigma is calibrated for the client with the highest rate (the
    smallest); with sampling_rate every client has the same rate and spends the same."""
    common = {"privacy.mode": "sample", "privacy.sample.target_epsilon": 4.0, "privacy.delta": 1e-3}
    common.update({"partition.alpha": 0.3, "server.rounds": 4, "client.local_steps": 3})
    rated = build_experiment(tiny_config(**common, **{"client.sampling_rate": 0.1}))
    sizes = [len(d) for d in rated.client_data]
    assert max(sizes) > 2 * min(sizes)  # the Dirichlet split is uneven
    sigma = resolve_privacy(rated).sample_noise_multiplier
    assert sigma == pytest.approx(
        calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-3, sample_rate=0.1, steps=12, accountant="rdp"),
        rel=0.02,
    )
    event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=0.1, steps=12, scope="sample")
    assert compute_epsilon([event], delta=1e-3, accountant="rdp") <= 4.0 + 1e-6
    # The same mean batch as a fixed size: sigma must cover the smallest client's higher rate.
    fixed = build_experiment(tiny_config(**common, **{"client.batch_size": round(0.1 * np.mean(sizes))}))
    fixed_sigma = resolve_privacy(fixed).sample_noise_multiplier
    assert fixed_sigma is not None and sigma is not None and fixed_sigma > sigma


def test_dp_sgd_draws_batches_at_the_sampling_rate(monkeypatch: pytest.MonkeyPatch, run_dir: Path) -> None:
    import privfed.client.trainer as trainer_module
    from privfed import run_experiment

    seen: list[tuple[int, float]] = []
    real = trainer_module.poisson_batch

    def spy(n: int, *, rate: float, rng: np.random.Generator) -> Any:
        seen.append((n, rate))
        return real(n, rate=rate, rng=rng)

    monkeypatch.setattr(trainer_module, "poisson_batch", spy)
    config = tiny_config(
        **{
            "privacy.mode": "sample",
            "privacy.sample.noise_multiplier": 1.0,
            "privacy.delta": 1e-3,
            "client.sampling_rate": 0.25,
            "server.rounds": 1,
        }
    )
    summary = run_experiment(config, run_dir, quiet=True)
    assert summary["completed"]
    assert seen and {rate for _, rate in seen} == {0.25}
    assert len({n for n, _ in seen}) > 1  # clients of different sizes, one rate
    # ...and the ledger accounted that rate: one round of 3 steps at q = 0.25, sigma 1.
    event = SampledGaussianEvent(noise_multiplier=1.0, sample_rate=0.25, steps=3, scope="sample")
    assert summary["epsilon_sample_max"] == pytest.approx(compute_epsilon([event], delta=1e-3, accountant="rdp"))


def test_cuda_without_a_gpu_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"model\.device = 'cuda'"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"model\.device"):
        build_experiment(tiny_config(**{"model.device": "cuda"}))
    assert resolve_device("cpu") == torch.device("cpu")


class _MetaClassifier(torch.nn.Module):
    """A stand-in model living on the ``meta`` device, recording where its inputs are."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(3, 4, device="meta"))
        self.seen: list[torch.device] = []

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        self.seen += [input_ids.device, attention_mask.device]
        logits = torch.zeros(input_ids.shape[0], 3, device=input_ids.device) + self.weight.sum()

        class Out:
            pass

        out = Out()
        out.logits = logits  # type: ignore[attr-defined]
        return out


def test_tasks_move_cpu_batches_to_the_models_device() -> None:
    batch = Batch(
        input_ids=torch.ones(2, 5, dtype=torch.int64),
        attention_mask=torch.ones(2, 5, dtype=torch.int64),
        labels=torch.tensor([0, 2]),
    )
    assert batch.to(torch.device("cpu")) is batch
    model = _MetaClassifier()
    task = get_task("classification")
    # cross_entropy would fail on meta logits with CPU labels: the labels move too.
    losses = task.per_example_loss(model, batch)
    assert losses.device.type == "meta" and tuple(losses.shape) == (2,)
    assert model.seen and all(d.type == "meta" for d in model.seen)
    assert batch.input_ids.device.type == "cpu"  # the caller's batch is left where it was
