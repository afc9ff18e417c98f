"""Local training on one client: load the global adapter, train, return the delta."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from privfed.adapters.layout import AdapterLayout
from privfed.client.data import ExampleSet
from privfed.rng import generator, torch_rng
from privfed.tasks import Task

if TYPE_CHECKING:
    from privfed.config import ClientConfig

__all__ = ["ClientTrainer", "LocalResult"]


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

    def __init__(self, *, model: Any, layout: AdapterLayout, task: Task, config: ClientConfig) -> None:
        self.model = model
        self.layout = layout
        self.task = task
        self.config = config
        self._params = [p for p in model.parameters() if p.requires_grad]

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
        cfg = self.config
        self.layout.load_into(self.model, global_vector)
        self.model.train()
        optimizer = self._optimizer()
        losses: list[float] = []
        batches = data.shuffled_batches(
            batch_size=cfg.batch_size, rng=generator(seed, "batches"), epochs=cfg.local_epochs, steps=cfg.local_steps
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
        delta = self.layout.flatten(self.model) - global_vector.astype(np.float32)
        return LocalResult(
            delta=delta.astype(np.float32),
            num_examples=len(data),
            train_loss=float(np.mean(losses)) if losses else float("nan"),
            steps=len(losses),
        )
