"""Held-out evaluation of an adapter vector."""

# No ``from __future__ import annotations``: on Python 3.11 a TypedDict sees ``NotRequired``
# only in evaluated annotations (``EvalMetrics.__optional_keys__`` would be empty).
import math
from typing import Any, NotRequired, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from privfed.adapters.layout import AdapterLayout
from privfed.client.data import ExampleSet
from privfed.tasks import EvalCounts, Task

__all__ = ["EvalMetrics", "evaluate_vector"]


class EvalMetrics(TypedDict):
    """Held-out metrics of an adapter (the ``eval_*`` keys of a ``metrics.jsonl`` line)."""

    #: Mean loss per scored unit (example for classification, next token for language models).
    eval_loss: float
    #: Examples for classification, next tokens for language models.
    eval_accuracy: float
    #: Language models only: exp(eval_loss).
    eval_perplexity: NotRequired[float]


def evaluate_vector(
    *, model: Any, layout: AdapterLayout, task: Task, vector: npt.NDArray[np.float32], data: ExampleSet, batch_size: int
) -> EvalMetrics:
    """Load ``vector`` into ``model`` and score ``data``.

    Returns:
        ``eval_loss`` (mean per scored unit), ``eval_accuracy`` (examples for
        classification, next tokens for language models) and, for language
        models, ``eval_perplexity`` = exp(eval_loss).
    """
    layout.load_into(model, vector)
    model.eval()
    counts = EvalCounts()
    with torch.no_grad():
        for batch in data.sequential_batches(batch_size):
            counts.add(task.evaluate(model, batch))
    result: EvalMetrics = {"eval_loss": counts.mean_loss, "eval_accuracy": counts.accuracy}
    if task.name == "causal_lm":
        result["eval_perplexity"] = math.exp(min(counts.mean_loss, 700.0))
    return result
