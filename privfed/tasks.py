"""Training objectives: how a batch becomes a loss and evaluation counts.

A task turns tokenized examples into tensors, computes the training loss,
and counts what evaluation needs. ``classification`` scores a sequence
classifier (accuracy over examples); ``causal_lm`` scores next-token
prediction (accuracy over predicted tokens, perplexity = exp(mean loss)).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from privfed.data.tokenize import TokenizedTexts
from privfed.errors import ModelError

__all__ = ["Batch", "EvalCounts", "Task", "get_task"]


@dataclasses.dataclass(frozen=True)
class Batch:
    """Tensors of one batch: ``input_ids``/``attention_mask`` int64[b, t], ``labels`` int64[b]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @staticmethod
    def from_arrays(tokens: TokenizedTexts, labels: npt.NDArray[np.int64]) -> Batch:
        return Batch(
            input_ids=torch.from_numpy(tokens.input_ids.astype(np.int64)),
            attention_mask=torch.from_numpy(tokens.attention_mask.astype(np.int64)),
            labels=torch.from_numpy(labels.astype(np.int64)),
        )

    def to(self, device: torch.device) -> Batch:
        """This batch on ``device`` (itself if it is there already)."""
        if self.input_ids.device == device:
            return self
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=self.labels.to(device),
        )


def _on_model_device(model: Any, batch: Batch) -> Batch:
    """``batch`` moved to the device of ``model``'s parameters (batches are built on the CPU)."""
    return batch.to(next(model.parameters()).device)


@dataclasses.dataclass
class EvalCounts:
    """Running sums for evaluation: summed loss, number of scored units, number correct."""

    loss_sum: float = 0.0
    count: int = 0
    correct: int = 0

    def add(self, other: EvalCounts) -> None:
        self.loss_sum += other.loss_sum
        self.count += other.count
        self.correct += other.correct

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")


class Task(Protocol):
    """A training objective."""

    name: str

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        """Mean loss over the batch's examples (a scalar with grad)."""
        ...

    def per_example_loss(self, model: Any, batch: Batch) -> torch.Tensor:
        """float[b]: each example's loss, depending on that example alone (for DP-SGD)."""
        ...

    def evaluate(self, model: Any, batch: Batch) -> EvalCounts:
        """Summed loss and correct count over the batch (no grad needed)."""
        ...


class ClassificationTask:
    """Sequence classification with cross-entropy; units are examples."""

    name = "classification"

    def _logits(self, model: Any, batch: Batch) -> torch.Tensor:
        batch = _on_model_device(model, batch)
        logits: torch.Tensor = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return logits

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: Any, batch: Batch) -> torch.Tensor:
        batch = _on_model_device(model, batch)
        return F.cross_entropy(self._logits(model, batch), batch.labels, reduction="none")

    def evaluate(self, model: Any, batch: Batch) -> EvalCounts:
        batch = _on_model_device(model, batch)
        logits = self._logits(model, batch)
        loss = F.cross_entropy(logits, batch.labels, reduction="sum")
        correct = int((logits.argmax(dim=-1) == batch.labels).sum())
        return EvalCounts(float(loss), len(batch.labels), correct)


class CausalLMTask:
    """Next-token prediction; units are predicted (non-padding) tokens."""

    name = "causal_lm"

    def _shifted(self, model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = _on_model_device(model, batch)
        logits: torch.Tensor = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        # Prompt-tuning prepends virtual tokens: score only the real positions.
        logits = logits[:, -batch.input_ids.shape[1] :, :]
        targets = batch.input_ids[:, 1:]
        mask = batch.attention_mask[:, 1:].bool()
        return logits[:, :-1, :], targets, mask

    def loss(self, model: Any, batch: Batch) -> torch.Tensor:
        return self.per_example_loss(model, batch).mean()

    def per_example_loss(self, model: Any, batch: Batch) -> torch.Tensor:
        # Each sequence's mean token loss: every example's gradient depends on that
        # example alone, as per-sample clipping (DP-SGD) needs.
        logits, targets, mask = self._shifted(model, batch)
        token_loss = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        counts = mask.sum(dim=1).clamp(min=1)
        return (token_loss * mask).sum(dim=1) / counts

    def evaluate(self, model: Any, batch: Batch) -> EvalCounts:
        logits, targets, mask = self._shifted(model, batch)
        scored_logits, scored_targets = logits[mask], targets[mask]
        loss = F.cross_entropy(scored_logits, scored_targets, reduction="sum")
        correct = int((scored_logits.argmax(dim=-1) == scored_targets).sum())
        return EvalCounts(float(loss), int(mask.sum()), correct)


_TASKS: dict[str, Task] = {"classification": ClassificationTask(), "causal_lm": CausalLMTask()}


def get_task(name: str) -> Task:
    """The task registered as ``name`` (``classification`` or ``causal_lm``)."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ModelError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}") from None
