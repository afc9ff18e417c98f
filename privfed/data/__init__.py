"""Offline datasets, tokenization with caching, and seeded partitioners."""

from privfed.data.partition import (
    dirichlet_partition,
    iid_partition,
    natural_partition,
    partition,
    partitioner_names,
    shards_partition,
    stratified_split,
)
from privfed.data.records import Dataset
from privfed.data.registry import DatasetSpec, dataset_names, get_dataset_spec, load_dataset, register_dataset

__all__ = [
    "Dataset",
    "DatasetSpec",
    "dataset_names",
    "dirichlet_partition",
    "get_dataset_spec",
    "iid_partition",
    "load_dataset",
    "natural_partition",
    "partition",
    "partitioner_names",
    "register_dataset",
    "shards_partition",
    "stratified_split",
]
