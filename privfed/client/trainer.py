"""Local training on one client: load the global adapter, train, return the delta."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from privfed.adapters.layout import AdapterLayout
from privfed.client.data import ExampleSet
from privfed.client.schedule import batch_size_for, local_steps, sampling_rate_for
from privfed.privacy.dpsgd import (
    NoisedDPOptimizer,
    NoisedGhostDPOptimizer,
    check_per_sample_gradients,
    ghost_backward,
    make_grad_sample_module,
    noise_only_step,
    poisson_batch,
)
from privfed.privacy.noise import make_noise
from privfed.rng import generator, torch_rng
from privfed.tasks import Task

if TYPE_CHECKING:
    from privfed.config import ClientConfig

__all__ = ["ClientTrainer", "LocalResult", "SampleDP", "batch_size_for", "local_steps", "sampling_rate_for"]


@dataclasses.dataclass(frozen=True, eq=False)
class LocalResult:
    """Outcome of one client's local training.

    Attributes:
        delta: float32[d], local adapter minus the global adapter it started from.
        num_examples: examples the client holds (its FedAvg weight).
        train_loss: mean training loss over the local steps.
        steps: optimizer steps taken.
    """

    delta: npt.NDArray[np.float32]
    num_examples: int
    train_loss: float
    steps: int


class ClientTrainer:
    """Trains the shared PEFT model on one client's data at a time.

    In simulation one model instance serves every client: each call first
    overwrites the trainable parameters with the global vector and starts a
    fresh optimizer, so nothing leaks from one client to the next.
    """

    def __init__(
        self, *, model: Any, layout: AdapterLayout, task: Task, config: ClientConfig, dp: SampleDP | None = None
    ) -> None:
        self.model = model
        self.layout = layout
        self.task = task
        self.config = config
        self.dp = dp
        self._params = [p for p in model.parameters() if p.requires_grad]
        # Hooks are registered once for the shared model (Opacus #688/#608).
        self._dp_module = (
            make_grad_sample_module(model, mode=dp.grad_sample_mode, max_grad_norm=dp.max_grad_norm)
            if dp is not None
            else None
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(self._params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return torch.optim.AdamW(self._params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def train(self, *, global_vector: npt.NDArray[np.float32], data: ExampleSet, seed: int) -> LocalResult:
        """Run local training from ``global_vector`` on ``data``.

        Args:
            global_vector: float32[d], the adapter broadcast by the server.
            data: the client's examples.
            seed: drives batch order and dropout; derive it from
                ``(experiment seed, round, client)`` for reproducible runs.
        """
        if self.dp is not None:
            return self._train_private(global_vector=global_vector, data=data, seed=seed)
        cfg = self.config
        self.layout.load_into(self.model, global_vector)
        self.model.train()
        optimizer = self._optimizer()
        losses: list[float] = []
        batches = data.shuffled_batches(
            batch_size=batch_size_for(cfg, len(data)),
            rng=generator(seed, "batches"),
            epochs=cfg.local_epochs,
            steps=cfg.local_steps,
        )
        with torch_rng(seed):
            for indices in batches:
                loss = self.task.loss(self.model, data.batch(indices))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self._params, cfg.max_grad_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        return self._result(global_vector, num_examples=len(data), losses=losses, steps=len(losses))

    def check_private_training(self, data: ExampleSet) -> None:
        """Fail early (``ConfigError``) unless DP-SGD reaches every trainable parameter."""
        if self._dp_module is None:
            return
        self.model.train()
        indices = np.arange(min(2, len(data)), dtype=np.int64)
        assert self.dp is not None
        batch = data.batch(indices)
        if self.dp.grad_sample_mode == "ghost":
            self._dp_module.enable_hooks()
            losses = self.task.per_example_loss(self._dp_module, batch)
            check_per_sample_gradients(self.model, losses.mean(), attribute="_norm_sample", batch_size=len(indices))
        else:
            check_per_sample_gradients(self.model, self.task.loss(self._dp_module, batch), batch_size=len(indices))

    def steps_for(self, num_examples: int) -> int:
        """Local steps a client with ``num_examples`` examples takes per round."""
        return local_steps(self.config, num_examples)

    def _train_private(self, *, global_vector: npt.NDArray[np.float32], data: ExampleSet, seed: int) -> LocalResult:
        """DP-SGD: Poisson batches of expected size ``batch_size``, per-sample clipping, Gaussian noise."""
        assert self.dp is not None and self._dp_module is not None
        cfg = self.config
        self.layout.load_into(self.model, global_vector)
        self.model.train()
        n = len(data)
        rate = sampling_rate_for(cfg, n)
        ghost = self.dp.grad_sample_mode == "ghost"
        optimizer = (NoisedGhostDPOptimizer if ghost else NoisedDPOptimizer)(
            self._optimizer(),
            noise=make_noise(secure=self.dp.secure_noise, seed=self.dp.seed, path=("sample", seed)),
            noise_multiplier=self.dp.noise_multiplier,
            max_grad_norm=self.dp.max_grad_norm,
            expected_batch_size=max(1, round(rate * n)),
        )
        rng = generator(seed, "poisson")
        losses: list[float] = []
        steps = self.steps_for(n)
        with torch_rng(seed):
            for _ in range(steps):
                indices = poisson_batch(n, rate=rate, rng=rng)
                optimizer.zero_grad(set_to_none=True)
                if len(indices) == 0:
                    noise_only_step(optimizer, self._params)
                    continue
                if ghost:
                    per_example = self.task.per_example_loss(self._dp_module, data.batch(indices))
                    ghost_backward(self._dp_module, optimizer, per_example)
                    loss = per_example.mean()
                else:
                    loss = self.task.loss(self._dp_module, data.batch(indices))
                    loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        return self._result(global_vector, num_examples=n, losses=losses, steps=steps)

    def _result(
        self, global_vector: npt.NDArray[np.float32], *, num_examples: int, losses: list[float], steps: int
    ) -> LocalResult:
        delta = self.layout.flatten(self.model) - global_vector.astype(np.float32)
        return LocalResult(
            delta=delta.astype(np.float32),
            num_examples=num_examples,
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            steps=steps,
        )


@dataclasses.dataclass(frozen=True)
class SampleDP:
    """Resolved record-level DP settings for local training.

    Attributes:
        noise_multiplier: sigma of DP-SGD.
        max_grad_norm: per-sample clipping bound C.
        secure_noise: draw noise from the OS CSPRNG instead of the seeded stream.
        seed: experiment seed for the seeded noise stream.
        grad_sample_mode: ``"hooks"`` (per-sample gradients) or ``"ghost"`` (ghost clipping).
    """

    noise_multiplier: float
    max_grad_norm: float
    secure_noise: bool
    seed: int
    grad_sample_mode: str = "hooks"
