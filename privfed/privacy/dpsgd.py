"""Record-level DP-SGD on a client with Opacus, noise from privfed's injected sources.

One :class:`opacus.GradSampleModule` wraps the shared model once (Opacus
issues #688/#608: wrapping the same model again every round double-hooks it
and restarts the accountant), a fresh :class:`DPOptimizer` is made per local
training run, batches are Poisson-sampled from an injected generator, and the
privacy spent is recorded by privfed's ledger, not by an Opacus accountant.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed

from privfed.errors import ConfigError
from privfed.privacy.noise import NoiseSource

__all__ = [
    "NoisedDPOptimizer",
    "check_per_sample_gradients",
    "make_grad_sample_module",
    "noise_only_step",
    "poisson_batch",
]


class NoisedDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """Opacus' DPOptimizer with Gaussian noise drawn from a privfed :class:`NoiseSource`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise: NoiseSource, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        self._noise = noise

    def add_noise(self) -> None:
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            draw = self._noise.normal(std=self.noise_multiplier * self.max_grad_norm, shape=tuple(p.summed_grad.shape))
            p.grad = (p.summed_grad + torch.from_numpy(draw).to(p.summed_grad.dtype)).view_as(p)
            _mark_as_processed(p.summed_grad)


def make_grad_sample_module(model: Any) -> GradSampleModule:
    """Wrap ``model`` for per-sample gradients; ``ConfigError`` if Opacus cannot handle its trainable layers."""
    try:
        return GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    except (NotImplementedError, ValueError) as exc:
        raise ConfigError(
            f"privacy.mode needs per-sample gradients, and Opacus cannot compute them for this adapter: {exc}"
        ) from None


def noise_only_step(optimizer: DPOptimizer, params: list[torch.nn.Parameter]) -> None:
    """A DP step on an empty Poisson batch: the clipped sum is zero, the noise is still added."""
    for p in params:
        p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)  # type: ignore[attr-defined]
    optimizer.step()


def poisson_batch(n: int, *, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a Poisson-sampled batch: each of ``n`` examples independently with probability ``rate``."""
    return np.flatnonzero(rng.random(n) < rate).astype(np.int64)


def check_per_sample_gradients(model: Any, loss: torch.Tensor) -> None:
    """Backpropagate ``loss`` (computed through the GradSampleModule on a small batch) and
    require a per-sample gradient on every trainable parameter of ``model``.

    Opacus issue #820: some adapter layers get no hooks, and DP training then
    runs with normal-looking loss and epsilon while those parameters are
    never clipped or noised. A missing per-sample gradient is a ``ConfigError``.
    """
    loss.backward()  # type: ignore[no-untyped-call]
    missing = [
        name for name, p in model.named_parameters() if p.requires_grad and getattr(p, "grad_sample", None) is None
    ]
    for p in model.parameters():
        p.grad = None
        if hasattr(p, "grad_sample"):
            p.grad_sample = None
    if missing:
        raise ConfigError(
            f"privacy.mode needs per-sample gradients, and Opacus cannot compute them for {len(missing)} adapter "
            f"parameter(s) (e.g. {missing[0]}); use adapter.method = 'lora' or 'prompt_tuning'"
        )
