"""Partitioners: every example exactly once, sizes and skew as configured."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privfed.data.partition import (
    PartitionInputs,
    dirichlet_partition,
    iid_partition,
    natural_partition,
    partition,
    shards_partition,
    stratified_split,
)
from privfed.errors import DataError
from privfed.rng import generator

labels_st = st.lists(st.integers(0, 5), min_size=1, max_size=300).map(lambda xs: np.array(xs, dtype=np.int64))


def labels_at_least(n: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(st.integers(0, 5), min_size=n, max_size=n + 300).map(lambda xs: np.array(xs, dtype=np.int64))


def assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    assert joined.dtype == np.int64
    assert len(joined) == n, "some example is missing or assigned twice"
    assert np.array_equal(np.sort(joined), np.arange(n))
    for p in parts:
        assert np.all(np.diff(p) > 0), "indices within a client are sorted and unique"


@given(clients=st.integers(1, 40), extra=st.integers(0, 500), seed=st.integers(0, 2**32))
def test_iid_exact_cover_and_balanced(clients: int, extra: int, seed: int) -> None:
    n = clients + extra
    parts = iid_partition(n, num_clients=clients, rng=generator(seed))
    assert len(parts) == clients
    assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(clients=st.integers(1, 12), alpha=st.floats(0.05, 100.0), seed=st.integers(0, 2**32), data=st.data())
def test_dirichlet_exact_cover_and_min_size(clients: int, alpha: float, seed: int, data: st.DataObject) -> None:
    labels = data.draw(labels_at_least(3 * clients))
    try:
        parts = dirichlet_partition(
            labels, num_clients=clients, alpha=alpha, rng=generator(seed), min_examples=1, max_attempts=50
        )
    except DataError:
        return  # allowed: the message says how to relax the constraint
    assert len(parts) == clients
    assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 1


def _mean_tv_to_global(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    k = labels.max() + 1
    global_dist = np.bincount(labels, minlength=k) / len(labels)
    tvs = [0.5 * np.abs(np.bincount(labels[p], minlength=k) / len(p) - global_dist).sum() for p in parts]
    return float(np.mean(tvs))


def test_dirichlet_skew_shrinks_as_alpha_grows() -> None:
    labels = np.repeat(np.arange(5), 400).astype(np.int64)
    skew = {}
    for alpha in (0.05, 0.5, 5.0, 500.0):
        tvs = [
            _mean_tv_to_global(labels, dirichlet_partition(labels, num_clients=10, alpha=alpha, rng=generator(s)))
            for s in range(5)
        ]
        skew[alpha] = float(np.mean(tvs))
    assert skew[0.05] > skew[0.5] > skew[5.0] > skew[500.0]
    assert skew[0.05] > 0.5  # nearly one class per client
    assert skew[500.0] < 0.05  # nearly IID


@given(clients=st.integers(1, 10), per=st.integers(1, 4), seed=st.integers(0, 2**32), data=st.data())
def test_shards_exact_cover_and_balanced(clients: int, per: int, seed: int, data: st.DataObject) -> None:
    labels = data.draw(labels_at_least(clients * per))
    parts = shards_partition(labels, num_clients=clients, shards_per_client=per, rng=generator(seed))
    assert_exact_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= per  # shards differ in size by at most one


def test_shards_give_pathological_non_iid() -> None:
    labels = np.repeat(np.arange(10), 100).astype(np.int64)
    parts = shards_partition(labels, num_clients=50, shards_per_client=2, rng=generator(0))
    assert max(len(np.unique(labels[p])) for p in parts) <= 2  # shards of 10 never straddle a class


@given(
    groups=st.lists(st.sampled_from(list("abcdefgh")), min_size=1, max_size=200),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_natural_keeps_groups_whole(groups: list[str], seed: int, data: st.DataObject) -> None:
    g = np.array(groups, dtype=np.str_)
    clients = data.draw(st.integers(1, len(set(groups))))
    parts = natural_partition(g, num_clients=clients, rng=generator(seed))
    assert_exact_cover(parts, len(g))
    owner = {}
    for c, p in enumerate(parts):
        for name in set(g[p]):
            assert owner.setdefault(name, c) == c, f"group {name} split across clients"
        assert len(p) > 0
    if clients == len(set(groups)):
        assert all(len(set(g[p])) == 1 for p in parts)


def test_natural_rejects_more_clients_than_groups() -> None:
    with pytest.raises(DataError, match="2 groups"):
        natural_partition(np.array(["a", "b", "a"]), num_clients=3, rng=generator(0))


def test_partition_registry_enforces_min_examples_and_needs_groups() -> None:
    labels = np.zeros(10, dtype=np.int64)
    inputs = PartitionInputs(labels=labels, groups=None, num_clients=5, alpha=1, shards_per_client=1, min_examples=3)
    with pytest.raises(DataError, match="gave a client 2 example"):
        partition("iid", inputs, generator(0))
    with pytest.raises(DataError, match="natural groups"):
        partition("natural", inputs, generator(0))


@given(labels=labels_st, fraction=st.floats(0.05, 0.95), seed=st.integers(0, 2**32))
def test_stratified_split_is_disjoint_cover_and_per_class(labels: np.ndarray, fraction: float, seed: int) -> None:
    train, held = stratified_split(labels, eval_fraction=fraction, rng=generator(seed))
    assert_exact_cover([train, held], len(labels))
    for cls in np.unique(labels):
        total = int((labels == cls).sum())
        k = int((labels[held] == cls).sum())
        if total >= 2:
            assert 1 <= k <= total - 1
            assert abs(k - fraction * total) <= 1.0
        else:
            assert k == 0


def test_partitions_are_reproducible_from_the_seed() -> None:
    labels = np.repeat(np.arange(4), 50).astype(np.int64)
    a = dirichlet_partition(labels, num_clients=7, alpha=0.3, rng=generator(11))
    b = dirichlet_partition(labels, num_clients=7, alpha=0.3, rng=generator(11))
    c = dirichlet_partition(labels, num_clients=7, alpha=0.3, rng=generator(12))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
