"""Offline datasets, tokenization with caching, and seeded partitioners."""

from privfed.data.files import dataset_spec_for, load_data, load_hf_dir, load_table_file
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
    "dataset_spec_for",
    "dirichlet_partition",
    "get_dataset_spec",
    "iid_partition",
    "load_data",
    "load_dataset",
    "load_hf_dir",
    "load_table_file",
    "natural_partition",
    "partition",
    "partitioner_names",
    "register_dataset",
    "shards_partition",
    "stratified_split",
]
