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
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import DPOptimizer, _check_processed_flag, _mark_as_processed
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

from privfed.errors import ConfigError
from privfed.privacy.noise import NoiseSource

__all__ = [
    "NoisedDPOptimizer",
    "NoisedGhostDPOptimizer",
    "check_per_sample_gradients",
    "ghost_backward",
    "make_grad_sample_module",
    "noise_only_step",
    "poisson_batch",
]


def _add_injected_noise(optimizer: Any, noise: NoiseSource) -> None:
    """Opacus' ``add_noise`` with the Gaussian drawn from a privfed :class:`NoiseSource`."""
    for p in optimizer.params:
        _check_processed_flag(p.summed_grad)
        draw = noise.normal(std=optimizer.noise_multiplier * optimizer.max_grad_norm, shape=tuple(p.summed_grad.shape))
        noise_t = torch.from_numpy(draw).to(device=p.summed_grad.device, dtype=p.summed_grad.dtype)
        p.grad = (p.summed_grad + noise_t).view_as(p)
        _mark_as_processed(p.summed_grad)


class _InjectedNoise:
    """Mixin for Opacus optimizers: Gaussian noise from a privfed :class:`NoiseSource`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, noise: NoiseSource, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[call-arg]
        self._noise = noise

    def add_noise(self) -> None:
        _add_injected_noise(self, self._noise)


class NoisedDPOptimizer(_InjectedNoise, DPOptimizer):  # type: ignore[misc]
    """Opacus' DPOptimizer (per-sample gradients from hooks) with privfed's noise."""


class NoisedGhostDPOptimizer(_InjectedNoise, DPOptimizerFastGradientClipping):  # type: ignore[misc]
    """Opacus' optimizer for ghost clipping (Li et al. 2022; Bu et al. 2023) with privfed's noise."""


def ghost_backward(module: Any, optimizer: Any, loss_per_sample: torch.Tensor) -> None:
    """Ghost clipping's two backward passes: per-sample gradient norms without
    materialising per-sample gradients, then the clipped sum."""
    DPTensorFastGradientClipping(module, optimizer, loss_per_sample, "mean").backward()


def make_grad_sample_module(model: Any, *, mode: str = "hooks", max_grad_norm: float = 1.0) -> Any:
    """Wrap ``model`` for per-sample gradients (``hooks``) or per-sample norms (``ghost``);
    ``ConfigError`` if Opacus cannot handle its trainable layers."""
    try:
        if mode == "ghost":
            return GradSampleModuleFastGradientClipping(
                model, batch_first=True, loss_reduction="mean", max_grad_norm=max_grad_norm, use_ghost_clipping=True
            )
        return GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    except (NotImplementedError, ValueError) as exc:
        raise ConfigError(
            f"privacy.mode needs per-sample gradients, and Opacus cannot compute them for this adapter: {exc}"
        ) from None


def noise_only_step(optimizer: DPOptimizer, params: list[torch.nn.Parameter]) -> None:
    """A DP step on an empty Poisson batch: the clipped sum is zero, the noise is still added."""
    for p in params:
        if isinstance(optimizer, DPOptimizerFastGradientClipping):
            p.grad = torch.zeros_like(p)
        else:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)  # type: ignore[attr-defined]
    optimizer.step()


def poisson_batch(n: int, *, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a Poisson-sampled batch: each of ``n`` examples independently with probability ``rate``."""
    return np.flatnonzero(rng.random(n) < rate).astype(np.int64)


def check_per_sample_gradients(
    model: Any, loss: torch.Tensor, *, attribute: str = "grad_sample", batch_size: int | None = None
) -> None:
    """Backpropagate ``loss`` (computed through the GradSampleModule on a small batch) and
    require a per-sample gradient (``grad_sample``; ghost clipping: per-sample norm,
    ``_norm_sample``) on every trainable parameter of ``model``.

    Opacus issue #820: some adapter layers get no hooks, and DP training then
    runs with normal-looking loss and epsilon while those parameters are
    never clipped or noised. A missing per-sample gradient is a ``ConfigError``,
    and so (given ``batch_size``) is one whose leading dimension is not the
    batch: a layer fed a buffer shared by the batch (BERT's position
    embeddings under full fine-tuning) gets one gradient for all examples.
    Opacus failing inside the probe's backward is a ``ConfigError`` too.
    """
    try:
        loss.backward()  # type: ignore[no-untyped-call]
    except RuntimeError as exc:
        raise ConfigError(
            "privacy.mode needs per-sample gradients, and Opacus failed to compute them for this model and "
            f"adapter (e.g. a layer that reads a buffer shared by the batch, such as position embeddings): {exc}"
        ) from None
    missing = [name for name, p in model.named_parameters() if p.requires_grad and getattr(p, attribute, None) is None]
    shared = [
        name
        for name, p in model.named_parameters()
        if batch_size is not None
        and p.requires_grad
        and getattr(p, attribute, None) is not None
        and int(getattr(p, attribute).shape[0]) != batch_size
    ]
    for p in model.parameters():
        p.grad = None
        for attr in ("grad_sample", "_norm_sample"):
            if hasattr(p, attr):
                setattr(p, attr, None)
    if missing:
        raise ConfigError(
            f"privacy.mode needs per-sample gradients, and Opacus cannot compute them for {len(missing)} adapter "
            f"parameter(s) (e.g. {missing[0]}); use adapter.method = 'lora' or 'prompt_tuning'"
        )
    if shared:
        raise ConfigError(
            f"privacy.mode needs per-sample gradients, and {len(shared)} trainable parameter(s) (e.g. {shared[0]}) "
            "get one gradient for the whole batch (their layer reads a buffer shared by all examples), so "
            "DP-SGD could not clip examples separately; use a PEFT adapter.method such as 'lora'"
        )
