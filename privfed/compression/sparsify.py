"""Sparsification: upload a subset of the coordinates.

* Shared-seed random sparsification: every client of a round keeps the *same* random
  subset (drawn from a public per-round seed), so encodings of different clients line
  up coordinate by coordinate and can be summed under secure aggregation. The server
  scatters the summed subset back and multiplies by ``1 / (1 - sparsity)``: for a
  uniformly random subset of size ``m = n (1 - s)`` every coordinate is kept with
  probability ``m / n``, so ``E[scatter(x_S) * n / m] = x`` (unbiased). The scaling is
  done by the server on the sum (post-processing), so it never enlarges what a client
  sends or the clip range its fixed-point code needs.
* Top-k: each client keeps its own largest-magnitude coordinates and sends their
  indices. Different clients pick different coordinates, so this cannot be summed
  under secure aggregation; it is for plain uploads only (biased, as usual for top-k).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["kept_count", "shared_subset", "top_k_indices"]


def kept_count(dim: int, *, sparsity: float) -> int:
    """Coordinates kept out of ``dim`` at ``sparsity`` in [0, 1): ``round(dim * (1 - s))``, at least 1."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    return max(1, min(dim, round(dim * (1.0 - sparsity))))


def shared_subset(dim: int, *, kept: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """A uniformly random subset of ``kept`` of ``dim`` coordinates, sorted (int64[kept])."""
    if not 1 <= kept <= dim:
        raise ValueError(f"cannot keep {kept} of {dim} coordinates")
    return np.sort(rng.permutation(dim)[:kept]).astype(np.int64)


def top_k_indices(values: npt.ArrayLike, *, kept: int) -> npt.NDArray[np.int64]:
    """Indices of the ``kept`` largest |values|, sorted (ties broken by position)."""
    v = np.abs(np.asarray(values, dtype=np.float64).reshape(-1))
    if not 1 <= kept <= v.size:
        raise ValueError(f"cannot keep {kept} of {v.size} coordinates")
    if kept == v.size:
        return np.arange(v.size, dtype=np.int64)
    # A stable order (largest first, then lowest index) so that ties are deterministic.
    order = np.argsort(-v, kind="stable")[:kept]
    return np.sort(order).astype(np.int64)
