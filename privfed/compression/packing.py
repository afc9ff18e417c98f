"""Bit packing: ``bits``-bit codes (1..64) into a dense little-endian bit stream.

Code ``i`` occupies stream bits ``[i * bits, (i + 1) * bits)``, least significant bit
first, and stream bit ``p`` is bit ``p % 8`` of byte ``p // 8``. A vector of ``n``
codes takes ``ceil(n * bits / 8)`` bytes on the wire instead of 4 or 8 per value; the
unused high bits of the last byte are zero.

Pure numpy, vectorised: 64 codes of ``bits`` bits fill exactly ``bits`` 64-bit words,
so the codes are viewed as a ``(groups, 64)`` matrix and each of the 64 code columns
is shifted into (at most two of) the ``bits`` word columns: ``O(64)`` numpy calls
over ``n / 64`` elements each, whatever ``n``. Widths of 8, 16, 32 and 64 bits are
plain little-endian integer arrays.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["pack_bits", "packed_size", "unpack_bits"]

_GROUP = 64  # codes per group: 64 codes of b bits are exactly b uint64 words
_BYTE_ALIGNED = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}


def packed_size(count: int, *, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take."""
    return (count * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64]; got {bits}")


def _layout(bits: int) -> list[tuple[int, int, int]]:
    """For each code position ``j`` of a group: (word, shift, spill) with spill = bits in word + 1."""
    out = []
    for j in range(_GROUP):
        offset = j * bits
        word, shift = offset >> 6, offset & 63
        out.append((word, shift, max(0, shift + bits - 64)))
    return out


def pack_bits(codes: npt.ArrayLike, *, bits: int) -> bytes:
    """Pack non-negative integer codes below ``2**bits`` (any integer dtype) into bytes.

    Raises:
        ValueError: ``bits`` outside [1, 64], or a code negative or ``>= 2**bits``.
    """
    _check_bits(bits)
    c = np.asarray(codes).reshape(-1)
    if c.size and (np.issubdtype(c.dtype, np.signedinteger) and int(c.min()) < 0):
        raise ValueError(f"a code does not fit in {bits} bits (negative)")
    if c.size and bits < 64 and int(c.max()) >> bits:
        raise ValueError(f"a code does not fit in {bits} bits")
    if bits in _BYTE_ALIGNED:
        return c.astype(_BYTE_ALIGNED[bits]).tobytes()
    n = c.size
    groups = -(-n // _GROUP)
    padded = np.zeros(groups * _GROUP, dtype=np.uint64)
    padded[:n] = c
    # Transposed so that every code column and word column is contiguous.
    columns = np.ascontiguousarray(padded.reshape(groups, _GROUP).T)
    words = np.zeros((bits, groups), dtype=np.uint64)
    scratch = np.empty(groups, dtype=np.uint64)
    for j, (word, shift, spill) in enumerate(_layout(bits)):
        np.left_shift(columns[j], np.uint64(shift), out=scratch)
        words[word] |= scratch
        if spill:
            np.right_shift(columns[j], np.uint64(bits - spill), out=scratch)
            words[word + 1] |= scratch
    stream = np.ascontiguousarray(words.T).astype("<u8", copy=False).tobytes()
    return stream[: packed_size(n, bits=bits)]


def unpack_bits(data: bytes, *, count: int, bits: int) -> npt.NDArray[np.unsignedinteger]:
    """Inverse of :func:`pack_bits`: uint32[count] for ``bits <= 32``, else uint64[count].

    ``data`` must be exactly ``packed_size(count, bits=bits)`` bytes (``ValueError``
    otherwise); unused bits of the last byte are ignored here (a wire format that needs
    canonical encodings checks them itself).
    """
    _check_bits(bits)
    if count < 0 or len(data) != packed_size(count, bits=bits):
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} codes of {bits} bits")
    dtype = np.uint32 if bits <= 32 else np.uint64
    if bits in _BYTE_ALIGNED:
        return np.frombuffer(data, dtype=_BYTE_ALIGNED[bits], count=count).astype(dtype)
    groups = -(-count // _GROUP)
    buffer = np.zeros(groups * bits, dtype="<u8")
    buffer.view(np.uint8)[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    words = np.ascontiguousarray(buffer.astype(np.uint64, copy=False).reshape(groups, bits).T)
    columns = np.empty((_GROUP, groups), dtype=np.uint64)
    scratch = np.empty(groups, dtype=np.uint64)
    mask = np.uint64((1 << bits) - 1)
    for j, (word, shift, spill) in enumerate(_layout(bits)):
        column = columns[j]
        np.right_shift(words[word], np.uint64(shift), out=column)
        if spill:
            np.left_shift(words[word + 1], np.uint64(bits - spill), out=scratch)
            column |= scratch
        column &= mask
    out: npt.NDArray[np.unsignedinteger] = columns.T.reshape(-1)[:count].astype(dtype)
    return out
