"""Randomized Hadamard rotation: flatten a vector's coordinates before quantization.

``rotate(x) = H D pad(x) / sqrt(n)`` with ``pad`` zero-padding to the next power of
two ``n``, ``D`` a diagonal of random signs and ``H`` the (unnormalized) Walsh-Hadamard
matrix; ``H D / sqrt(n)`` is orthonormal, so rotation preserves L2 norms and its
inverse is ``D H y / sqrt(n)`` (``H`` is symmetric and ``H H = n I``). After rotation
every coordinate of a vector of norm ``c`` is about ``c / sqrt(n)`` in size with
sub-Gaussian tails, so a per-coordinate range of a few ``c / sqrt(n)`` rarely clips
(Kairouz, Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for
Federated Learning with Secure Aggregation", Sec. 4 and their ``randomized_hadamard``
reference code in TensorFlow Federated; Suresh et al. 2017 for the rotation itself).

The signs come from a *public* per-round seed: every client of a round rotates with the
same matrix, so the server can rotate the sum back (rotation is linear).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["fwht", "inverse_rotate", "padded_dim", "random_signs", "rotate"]


def padded_dim(dim: int) -> int:
    """The power of two that ``dim`` coordinates are zero-padded to (``dim >= 1``)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1; got {dim}")
    return 1 << (dim - 1).bit_length()


_BLOCK = 1 << 13  # float64 coordinates per cache block (64 KiB): the low levels run block by block
_FIRST = 16  # the first log2(16) = 4 levels as one small matrix product (stride-1 butterflies are slow in numpy)


def _hadamard(m: int) -> npt.NDArray[np.float64]:
    h = np.ones((1, 1))
    while h.shape[0] < m:
        h = np.block([[h, h], [h, -h]])
    return h


_H_FIRST = _hadamard(_FIRST)


def _butterflies(y: npt.NDArray[np.float64], *, start: int, scratch: npt.NDArray[np.float64]) -> None:
    """Levels ``h = start, 2 start, ... < len(y)`` in place: blocks of 2h, (a, b) -> (a + b, a - b)."""
    h = start
    while h < y.size:
        blocks = y.reshape(-1, 2, h)
        a, b = blocks[:, 0, :], blocks[:, 1, :]
        diff = scratch[: y.size // 2].reshape(-1, h)
        np.subtract(a, b, out=diff)
        a += b
        b[...] = diff
        h *= 2


def fwht(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Orthonormal fast Walsh-Hadamard transform ``H x / sqrt(n)`` of float64[n], n a power of two.

    O(n log n): log2(n) butterfly levels. The transform is memory-bound in numpy, so the
    levels below :data:`_BLOCK` run one cache-sized block at a time (the first four as a
    product with a 16 x 16 Hadamard matrix) and only the top levels pass over the whole
    vector: about twice as fast as level-by-level passes at n = 2**20. Its own inverse.
    """
    y = np.array(x, dtype=np.float64).reshape(-1)
    n = y.size
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Walsh-Hadamard transform needs a power-of-two length; got {n}")
    scratch = np.empty(max(1, n // 2), dtype=np.float64)
    if n < _BLOCK:
        _butterflies(y, start=1, scratch=scratch)
    else:
        product = np.empty(_BLOCK, dtype=np.float64)
        for start in range(0, n, _BLOCK):
            block = y[start : start + _BLOCK]
            np.matmul(block.reshape(-1, _FIRST), _H_FIRST, out=product.reshape(-1, _FIRST))
            block[...] = product
            _butterflies(block, start=_FIRST, scratch=scratch)
        _butterflies(y, start=_BLOCK, scratch=scratch)
    y *= 1.0 / math.sqrt(n)
    return y


def random_signs(n: int, *, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """float64[n] of independent uniform +-1 (the diagonal ``D``)."""
    return rng.integers(0, 2, size=n).astype(np.float64) * 2.0 - 1.0


def rotate(x: npt.ArrayLike, *, signs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``H D pad(x) / sqrt(n)``: float64[d] -> float64[n] with ``n = len(signs) >= d`` a power of two."""
    v = np.asarray(x, dtype=np.float64).reshape(-1)
    if v.size > signs.size:
        raise ValueError(f"cannot rotate {v.size} values with {signs.size} signs")
    padded = np.zeros(signs.size, dtype=np.float64)
    padded[: v.size] = v
    padded *= signs
    return fwht(padded)


def inverse_rotate(y: npt.ArrayLike, *, signs: npt.NDArray[np.float64], dim: int) -> npt.NDArray[np.float64]:
    """``(D H y / sqrt(n))[:dim]``: undo :func:`rotate` and cut the padding."""
    v = np.asarray(y, dtype=np.float64).reshape(-1)
    if v.size != signs.size:
        raise ValueError(f"cannot un-rotate {v.size} values with {signs.size} signs")
    out = fwht(v)
    out *= signs
    return out[:dim]
