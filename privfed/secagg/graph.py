"""SecAgg+ communication graph (Bell et al. 2020): each client talks to k neighbours.

A Harary graph H(k, n) over a random ordering of the clients: every client is
joined to the k/2 clients on each side of it on a random cycle. With k = n - 1
it is the complete graph of classic SecAgg. The ordering is public (the server
chooses it), so it comes from an ordinary seeded generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["neighbour_graph", "recommended_degree"]


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
    order = [ids[i] for i in rng.permutation(n)]
    half = degree // 2
    graph: dict[int, set[int]] = {c: set() for c in ids}
    for position, client in enumerate(order):
        for step in range(1, half + 1):
            other = order[(position + step) % n]
            graph[client].add(other)
            graph[other].add(client)
    return {c: tuple(sorted(peers)) for c, peers in graph.items()}
