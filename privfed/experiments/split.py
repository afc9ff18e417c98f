"""Which rows of a dataset a run trains on, holds out, and gives each client.

Pure numpy (no torch, no model), so ``privfed validate`` gets a run's exact client
sizes from the config and the data alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from privfed.data.partition import PartitionInputs, partition, stratified_split
from privfed.errors import ConfigError
from privfed.rng import generator

if TYPE_CHECKING:
    from privfed.config import ExperimentConfig
    from privfed.data.records import Dataset

__all__ = ["IndexArray", "split_data"]

IndexArray = npt.NDArray[np.int64]


def _subsample(indices: IndexArray, limit: int, rng: np.random.Generator) -> IndexArray:
    if limit <= 0 or limit >= len(indices):
        return indices
    return np.sort(rng.choice(indices, size=limit, replace=False)).astype(np.int64)


def split_data(config: ExperimentConfig, dataset: Dataset) -> tuple[IndexArray, IndexArray, list[IndexArray]]:
    """Rows of ``dataset`` for training, held-out evaluation, and each client, as ``config`` says.

    Stratified hold-out, then the subsample limits, then the partitioner, each from its own
    generator keyed by the seed (so ``privfed validate`` gets the run's exact client sizes).

    Raises:
        ConfigError: the partition is impossible for this data.
    """
    seed = config.seed
    train, held = stratified_split(
        dataset.labels, eval_fraction=config.data.eval_fraction, rng=generator(seed, "split")
    )
    train = _subsample(train, config.data.max_train_examples, generator(seed, "subsample", "train"))
    held = _subsample(held, config.data.max_eval_examples, generator(seed, "subsample", "eval"))
    p = config.partition
    try:
        parts = partition(
            p.method,
            PartitionInputs(
                labels=dataset.labels[train],
                groups=None if dataset.groups is None else dataset.groups[train],
                num_clients=p.num_clients,
                alpha=p.alpha,
                shards_per_client=p.shards_per_client,
                min_examples=p.min_examples_per_client,
            ),
            generator(seed, "partition"),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"partition: {exc}") from None
    return train, held, [train[part] for part in parts]
