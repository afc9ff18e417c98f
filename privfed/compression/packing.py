"""Bit packing: ``bits``-bit codes (2..32) into a dense little-endian bit stream.

A vector of ``n`` codes of ``bits`` bits takes ``ceil(n * bits / 8)`` bytes on the
wire instead of 4 or 8 per value. Pure numpy, vectorised (one bit matrix of
``n * bits`` bytes as the working set, processed in chunks).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["pack_bits", "packed_size", "unpack_bits"]

_CHUNK = 1 << 16  # codes per pass; a multiple of 8 so every chunk ends on a byte boundary


def packed_size(count: int, *, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32]; got {bits}")


def pack_bits(codes: npt.ArrayLike, *, bits: int) -> bytes:
    """Pack non-negative integer codes below ``2**bits`` (any integer dtype) into bytes."""
    _check_bits(bits)
    c = np.asarray(codes).reshape(-1).astype(np.uint64)
    if c.size and int(c.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    shifts = np.arange(bits, dtype=np.uint64)
    parts = []
    for start in range(0, c.size, _CHUNK):
        chunk = c[start : start + _CHUNK]
        bit_matrix = ((chunk[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bit_matrix.reshape(-1), bitorder="little"))
    # _CHUNK * bits is a multiple of 8: concatenating chunks equals packing the whole stream.
    return b"".join(p.tobytes() for p in parts)


def unpack_bits(data: bytes, *, count: int, bits: int) -> npt.NDArray[np.uint32]:
    """Inverse of :func:`pack_bits`: uint32[count]. ``data`` must be exactly ``packed_size`` bytes."""
    _check_bits(bits)
    if len(data) != packed_size(count, bits=bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} codes of {bits} bits")
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little", count=count * bits)
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    out = np.empty(count, dtype=np.uint32)
    for start in range(0, count, _CHUNK):
        stop = min(start + _CHUNK, count)
        block = stream[start * bits : stop * bits].reshape(stop - start, bits).astype(np.uint64)
        out[start:stop] = (block * weights).sum(axis=1).astype(np.uint32)
    return out
