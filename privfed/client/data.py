"""A client's local examples, ready for batching."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from privfed.data.tokenize import TokenizedTexts
from privfed.tasks import Batch

__all__ = ["ExampleSet"]


@dataclasses.dataclass(frozen=True, eq=False)
class ExampleSet:
    """Tokenized examples and their labels (one client's data, or the eval set).

    Attributes:
        tokens: the examples' token ids.
        labels: int64[n].
    """

    tokens: TokenizedTexts
    labels: npt.NDArray[np.int64]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.labels):
            raise ValueError("tokens and labels must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: npt.NDArray[np.int64]) -> ExampleSet:
        """The examples at ``indices``, as a new set."""
        return ExampleSet(tokens=self.tokens.take(indices), labels=self.labels[indices])

    def batch(self, indices: npt.NDArray[np.int64]) -> Batch:
        """The examples at ``indices`` as tensors, trimmed to their longest member."""
        return Batch.from_arrays(self.tokens.take(indices), self.labels[indices])

    def sequential_batches(self, batch_size: int) -> Iterator[Batch]:
        """All examples in order, ``batch_size`` at a time (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.batch(np.arange(start, min(start + batch_size, len(self)), dtype=np.int64))

    def shuffled_batches(
        self, *, batch_size: int, rng: np.random.Generator, epochs: int = 1, steps: int = 0
    ) -> Iterator[npt.NDArray[np.int64]]:
        """Index batches for local training.

        With ``steps > 0``: exactly ``steps`` batches, reshuffling at each pass.
        Otherwise ``epochs`` passes, the last batch of a pass possibly smaller.
        """
        n = len(self)
        emitted = 0
        passes = 0
        while True:
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                if steps > 0 and emitted >= steps:
                    return
                yield order[start : start + batch_size].astype(np.int64)
                emitted += 1
            passes += 1
            if steps <= 0 and passes >= epochs:
                return
