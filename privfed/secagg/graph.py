"""SecAgg+ communication graph (Bell et al. 2020): each client talks to k neighbours.

A Harary graph H(k, n) over a random ordering of the clients: every client is
joined to the k/2 clients on each side of it on a random cycle. With k = n - 1
it is the complete graph of classic SecAgg. The ordering is public (the server
chooses it).

:func:`harary_graph` derives the ordering from a public 16-byte seed with
SHA-256 (no numpy stream involved), so every client of a round can rebuild the
whole graph from the round's global setup (cohort, degree, seed) and check
that its neighbourhood and everyone else's are the ones the server uses: a
server cannot show different clients different graphs without their signed
setup digests disagreeing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["harary_graph", "neighbour_graph", "recommended_degree"]

_ORDER_LABEL = b"privfed-secagg/v1/graph-order/"


def recommended_degree(num_clients: int) -> int:
    """About ``2 log2(n)`` neighbours, rounded up to even and capped at ``n - 1``."""
    if num_clients <= 2:
        return max(0, num_clients - 1)
    k = 2 * math.ceil(math.log2(num_clients))
    k += k % 2
    return min(k, num_clients - 1)


def neighbour_graph(client_ids: Sequence[int], *, degree: int, rng: np.random.Generator) -> dict[int, tuple[int, ...]]:
    """A symmetric, loop-free graph in which every client has ``degree`` neighbours.

    Args:
        client_ids: distinct ids.
        degree: k; either ``len(client_ids) - 1`` (complete graph) or an even number
            ``2 <= k < n - 1``.
        rng: orders the clients on the cycle.
    """
    ids = [int(c) for c in client_ids]
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("client ids must be distinct")
    if degree >= n - 1:
        return {c: tuple(sorted(set(ids) - {c})) for c in ids}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and >= 2, or n - 1 = {n - 1}; got {degree}")
    return _harary(ids, [ids[i] for i in rng.permutation(n)], degree)


def harary_graph(cohort: Sequence[int], *, degree: int, graph_seed: bytes) -> dict[int, tuple[int, ...]]:
    """The SecAgg+ graph of a round, rebuilt identically by the server and every client.

    The cycle order sorts the clients by ``SHA-256(label || graph_seed || id)``.

    Args:
        cohort: distinct client ids (uint32).
        degree: k; ``len(cohort) - 1`` (complete graph) or an even ``2 <= k < n - 1``.
        graph_seed: 16 public bytes chosen by the server.

    Raises:
        ValueError: repeated ids, a bad degree or a seed that is not 16 bytes.
    """
    ids = [int(c) for c in cohort]
    n = len(ids)
    if len(graph_seed) != 16:
        raise ValueError(f"graph_seed must be 16 bytes; got {len(graph_seed)}")
    if len(set(ids)) != n:
        raise ValueError("client ids must be distinct")
    if degree >= n - 1:
        if degree != n - 1:
            raise ValueError(f"degree {degree} exceeds the cohort size less one ({n - 1})")
        return {c: tuple(sorted(set(ids) - {c})) for c in ids}
    if degree < 2 or degree % 2:
        raise ValueError(f"degree must be even and >= 2, or n - 1 = {n - 1}; got {degree}")
    prefix = _ORDER_LABEL + bytes(graph_seed)
    order = sorted(ids, key=lambda c: hashlib.sha256(prefix + c.to_bytes(4, "little")).digest())
    return _harary(ids, order, degree)


def _harary(ids: list[int], order: list[int], degree: int) -> dict[int, tuple[int, ...]]:
    n = len(order)
    half = degree // 2
    graph: dict[int, set[int]] = {c: set() for c in ids}
    for position, client in enumerate(order):
        for step in range(1, half + 1):
            other = order[(position + step) % n]
            graph[client].add(other)
            graph[other].add(client)
    return {c: tuple(sorted(graph[c])) for c in ids}
