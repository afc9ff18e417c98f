"""Dataset registry: adding an offline dataset is one :func:`register_dataset` call."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from privfed.data import loaders
from privfed.data.records import Dataset, Modality
from privfed.errors import DataError
from privfed.registry import Registry

__all__ = ["DatasetSpec", "dataset_names", "get_dataset_spec", "load_dataset", "register_dataset"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One registry entry.

    Attributes:
        name: key used in configs (``data.name``).
        modality: ``"text"`` or ``"image"``.
        task: what the labels are for: ``"classification"`` or
            ``"language_modeling"`` (labels are then categories, used only
            for partitioning).
        loader: zero-argument function returning the :class:`Dataset`.
        description: one line for ``privfed datasets``.
    """

    name: str
    modality: Modality
    task: str
    loader: Callable[[], Dataset]
    description: str


_DATASETS: Registry[DatasetSpec] = Registry("dataset", error=DataError, field="data.name")


def register_dataset(spec: DatasetSpec, *, overwrite: bool = False) -> DatasetSpec:
    """Add a dataset to the registry (names are unique).

    ``overwrite=True`` replaces an existing entry (re-running a notebook cell).
    """
    return _DATASETS.register(spec.name, spec, overwrite=overwrite)


def dataset_names() -> tuple[str, ...]:
    """Registered dataset names, sorted."""
    return _DATASETS.names()


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; raises :class:`DataError` if unknown."""
    return _DATASETS.get(name)


@functools.lru_cache(maxsize=8)
def load_dataset(name: str) -> Dataset:
    """Load a registered dataset (memoised per process; datasets are immutable)."""
    return get_dataset_spec(name).loader()


for _spec in (
    DatasetSpec("bbc_news", "text", "classification", loaders.load_bbc_news, "BBC News articles, 5 topics"),
    DatasetSpec("tweets", "text", "classification", loaders.load_tweets, "tweet sentiment, 3 classes"),
    DatasetSpec(
        "drug_reviews", "text", "classification", loaders.load_drug_reviews, "drug review sentiment; condition = client"
    ),
    DatasetSpec("fortunes", "text", "language_modeling", loaders.load_fortunes, "Debian fortunes; category = client"),
    DatasetSpec("digits", "image", "classification", loaders.load_digits, "sklearn 8x8 digits, 10 classes"),
    DatasetSpec("mnist", "image", "classification", loaders.load_mnist, "MNIST 5k subset 28x28, 10 classes"),
):
    register_dataset(_spec)
