"""Seeded partitioners: split example indices among clients.

All functions are pure numpy: they take labels (and groups) and a generator,
and return one sorted ``int64`` index array per client. Every example is
assigned to exactly one client.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from privfed.errors import DataError
from privfed.registry import Registry

__all__ = [
    "PartitionInputs",
    "dirichlet_partition",
    "iid_partition",
    "natural_partition",
    "partition",
    "partitioner_names",
    "register_partitioner",
    "shards_partition",
    "stratified_split",
]

IndexArray = npt.NDArray[np.int64]

# From about this concentration on, Dirichlet proportions are within a few percent of even.
_NEAR_IID_ALPHA = 100.0


def _check_clients(num_examples: int, num_clients: int, min_examples: int = 1) -> None:
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1; got {num_clients}")
    if num_examples < num_clients * min_examples:
        raise DataError(
            f"cannot give {num_clients} clients at least {min_examples} example(s) each from {num_examples} "
            "training examples; lower partition.num_clients or partition.min_examples_per_client, or use more data"
        )


def iid_partition(num_examples: int, *, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    """Shuffle and deal examples round-robin: client sizes differ by at most one."""
    _check_clients(num_examples, num_clients)
    order = rng.permutation(num_examples)
    return [np.sort(order[c::num_clients]).astype(np.int64) for c in range(num_clients)]


def dirichlet_partition(
    labels: npt.NDArray[np.int64],
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_examples: int = 1,
    max_attempts: int = 1000,
) -> list[IndexArray]:
    """Label skew: each class is split among clients in Dirichlet(alpha) proportions.

    The scheme of Hsu, Qi & Brown 2019 ("Measuring the effects of non-identical
    data distribution", arXiv:1909.06335) as used in Yurochkin et al. 2019:
    small alpha gives clients few classes, large alpha approaches IID. Draws are
    repeated until every client holds at least ``min_examples``.
    """
    if alpha <= 0:
        raise DataError(f"alpha must be > 0; got {alpha}")
    _check_clients(len(labels), num_clients, min_examples)
    classes = np.unique(labels)
    best = -1
    for _ in range(max_attempts):
        parts: list[list[IndexArray]] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for client, piece in enumerate(np.split(idx, cuts)):
                parts[client].append(piece)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        smallest = min(len(r) for r in result)
        if smallest >= min_examples:
            return result
        best = max(best, smallest)
    share = len(labels) / num_clients
    if alpha >= _NEAR_IID_ALPHA:
        # Raising alpha cannot help: the split is already about even, so the minimum is the problem.
        advice = (
            f"alpha = {alpha:g} is already close to IID (about {share:.1f} examples per client); lower "
            "partition.min_examples_per_client or partition.num_clients"
        )
    else:
        advice = (
            f"raise partition.alpha (now {alpha:g}), or lower partition.num_clients or "
            "partition.min_examples_per_client"
        )
    raise DataError(
        f"Dirichlet(alpha={alpha:g}) gave some client fewer than {min_examples} examples in all {max_attempts} "
        f"draws (at best {best}); {advice}"
    )


def shards_partition(
    labels: npt.NDArray[np.int64], *, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[IndexArray]:
    """Pathological non-IID split of McMahan et al. 2017: sort by label, cut into
    ``num_clients * shards_per_client`` shards, deal ``shards_per_client`` to each client."""
    if shards_per_client < 1:
        raise DataError(f"partition.shards_per_client must be >= 1; got {shards_per_client}")
    _check_clients(len(labels), num_clients)
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise DataError(
            f"{num_clients} clients x partition.shards_per_client {shards_per_client} = {num_shards} shards, but "
            f"there are only {len(labels)} training examples to cut; shards_per_client can be at most "
            f"{len(labels) // num_clients} here"
        )
    # Stable sort with a random tie order so equal labels are not in file order.
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    shards = np.array_split(order, num_shards)
    deal = rng.permutation(num_shards)
    return [
        np.sort(np.concatenate([shards[s] for s in deal[c * shards_per_client : (c + 1) * shards_per_client]])).astype(
            np.int64
        )
        for c in range(num_clients)
    ]


def natural_partition(groups: npt.NDArray[np.str_], *, num_clients: int, rng: np.random.Generator) -> list[IndexArray]:
    """One client per natural group (drug condition, fortune category).

    With fewer clients than groups, whole groups are packed onto clients
    (largest group first onto the currently smallest client), so no group is
    ever split across clients. Ties are broken by the generator.
    """
    names, inverse = np.unique(groups, return_inverse=True)
    if num_clients > len(names):
        raise DataError(f"natural partition has {len(names)} groups; cannot make {num_clients} clients")
    sizes = np.bincount(inverse, minlength=len(names))
    tie = rng.permutation(len(names))
    order = np.lexsort((tie, -sizes))
    members: list[list[int]] = [[] for _ in range(num_clients)]
    loads = np.zeros(num_clients, dtype=np.int64)
    for group in order:
        client = int(np.argmin(loads))
        members[client].append(int(group))
        loads[client] += sizes[group]
    return [np.sort(np.flatnonzero(np.isin(inverse, m))).astype(np.int64) for m in members]


@dataclasses.dataclass(frozen=True)
class PartitionInputs:
    """What a partitioner may look at."""

    labels: npt.NDArray[np.int64]
    groups: npt.NDArray[np.str_] | None
    num_clients: int
    alpha: float
    shards_per_client: int
    min_examples: int


_Partitioner = Callable[[PartitionInputs, np.random.Generator], list[IndexArray]]
_PARTITIONERS: Registry[_Partitioner] = Registry("partitioner", error=DataError, field="partition.method")


def register_partitioner(name: str, fn: _Partitioner, *, overwrite: bool = False) -> None:
    """Add a partitioner under ``name`` (used as ``partition.method``).

    ``overwrite=True`` replaces an existing entry (re-running a notebook cell).
    """
    _PARTITIONERS.register(name, fn, overwrite=overwrite)


def partitioner_names() -> tuple[str, ...]:
    """Registered partitioner names, sorted."""
    return _PARTITIONERS.names()


def _natural(inputs: PartitionInputs, rng: np.random.Generator) -> list[IndexArray]:
    if inputs.groups is None:
        raise DataError("partition.method = 'natural' needs a dataset with natural groups (drug_reviews, fortunes)")
    return natural_partition(inputs.groups, num_clients=inputs.num_clients, rng=rng)


register_partitioner("iid", lambda i, rng: iid_partition(len(i.labels), num_clients=i.num_clients, rng=rng))
register_partitioner(
    "dirichlet",
    lambda i, rng: dirichlet_partition(
        i.labels, num_clients=i.num_clients, alpha=i.alpha, rng=rng, min_examples=i.min_examples
    ),
)
register_partitioner(
    "shards",
    lambda i, rng: shards_partition(
        i.labels, num_clients=i.num_clients, shards_per_client=i.shards_per_client, rng=rng
    ),
)
register_partitioner("natural", _natural)


def partition(method: str, inputs: PartitionInputs, rng: np.random.Generator) -> list[IndexArray]:
    """Run the partitioner registered as ``method``; check every client got ``min_examples``."""
    parts = _PARTITIONERS.get(method)(inputs, rng)
    smallest = min(len(p) for p in parts)
    if smallest < inputs.min_examples:
        raise DataError(
            f"partition {method!r} gave a client {smallest} example(s); "
            f"partition.min_examples_per_client is {inputs.min_examples}"
        )
    return parts


def stratified_split(
    labels: npt.NDArray[np.int64], *, eval_fraction: float, rng: np.random.Generator
) -> tuple[IndexArray, IndexArray]:
    """Hold out ``eval_fraction`` of each class (rounded, at least one per class
    with two or more examples). Returns sorted (train, eval) index arrays."""
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in (0, 1); got {eval_fraction}")
    train: list[IndexArray] = []
    held: list[IndexArray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        k = round(eval_fraction * len(idx))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1) if len(idx) >= 2 else 0
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(held)).astype(np.int64)
