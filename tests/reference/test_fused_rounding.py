"""The fused in-place rounding of ``FixedPointCodec`` gives bit-identical codes to the implementation it
replaced (per-chunk temporaries, per-coordinate range arrays) and to the proposal measured in
``benchmarks/compression.py`` (``_round_fused``), for the same generator, and leaves the generator
in the same state (issue 16)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.compression import FixedPointCodec
from privfed.secagg.crypto import mask_dtype


def _previous_rounded(codec: FixedPointCodec, x: npt.NDArray[np.float64], rng: np.random.Generator) -> np.ndarray:
    """``FixedPointCodec._rounded`` before the fused pass (commit a636e90), verbatim but for names."""
    clip = np.broadcast_to(np.asarray(codec.clip, dtype=np.float64), x.shape)
    scale = np.broadcast_to(codec.scale, x.shape)
    out = np.empty(x.shape, dtype=np.int64)
    chunk = 1 << 15
    for start in range(0, x.size, chunk):
        stop = min(start + chunk, x.size)
        y = np.clip(x[start:stop], -clip[start:stop], clip[start:stop])
        y *= scale[start:stop]
        y += rng.random(stop - start, dtype=np.float32)
        np.floor(y, out=y)
        np.clip(y, -codec.max_code, codec.max_code, out=y)
        out[start:stop] = y.astype(np.int64)
    return out


def _previous_encode(codec: FixedPointCodec, x: npt.NDArray[np.float64], rng: np.random.Generator) -> np.ndarray:
    signed = _previous_rounded(codec, x, rng)
    signed &= (1 << codec.bits) - 1
    return signed.astype(mask_dtype(codec.bits))


def _benchmark_fused(
    x: np.ndarray, *, clip: float, bits: int, scale: float, max_code: int, rng: np.random.Generator
) -> np.ndarray:
    """benchmarks/compression.py ``_round_fused`` (its CLIP made a parameter)."""
    out = np.empty(x.size, dtype=mask_dtype(bits))
    chunk = 1 << 15
    y, u = np.empty(chunk), np.empty(chunk, dtype=np.float32)
    for start in range(0, x.size, chunk):
        m = min(chunk, x.size - start)
        np.clip(x[start : start + m], -clip, clip, out=y[:m])
        y[:m] *= scale
        rng.random(m, dtype=np.float32, out=u[:m])
        y[:m] += u[:m]
        np.floor(y[:m], out=y[:m])
        np.clip(y[:m], -max_code, max_code, out=y[:m])
        out[start : start + m] = y[:m].astype(np.int64) & ((1 << bits) - 1)
    return out


@settings(max_examples=30, deadline=None)
@given(
    dim=st.sampled_from([1, 7, 1000, (1 << 15) - 1, 1 << 15, (1 << 15) + 3, 70_001]),
    extra=st.integers(0, 3),
    bits=st.integers(2, 52),
    clip=st.floats(1e-4, 10.0),
    spread=st.floats(1e-3, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_rounding_is_bit_identical_to_the_previous_and_the_benchmarked_one(
    dim: int, extra: int, bits: int, clip: float, spread: float, seed: int
) -> None:
    summands = int(np.random.default_rng(seed).integers(1, 2 ** (bits - 1)))
    x = np.random.default_rng([seed, 1]).normal(0.0, spread * clip, dim + extra)
    ranges = np.full(dim + extra, clip)
    ranges[dim:] = 7.5  # a stage's metric coordinates have their own range
    for codec in (
        FixedPointCodec(bits=bits, clip=clip, num_summands=summands),
        FixedPointCodec(bits=bits, clip=ranges, num_summands=summands),
    ):
        new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        codes = codec.encode(x, rng=new_rng)
        np.testing.assert_array_equal(codes, _previous_encode(codec, x, old_rng))
        assert codes.dtype == mask_dtype(bits)
        assert new_rng.random() == old_rng.random()  # the same draws were consumed
    scalar = FixedPointCodec(bits=bits, clip=clip, num_summands=summands)
    fused = _benchmark_fused(
        x, clip=clip, bits=bits, scale=float(scalar.scale), max_code=scalar.max_code, rng=np.random.default_rng(seed)
    )
    np.testing.assert_array_equal(scalar.encode(x, rng=np.random.default_rng(seed)), fused)


def test_ranges_that_vary_everywhere_take_the_per_coordinate_path_with_the_same_codes() -> None:
    rng = np.random.default_rng(5)
    ranges = rng.uniform(0.1, 2.0, 100_000)
    codec = FixedPointCodec(bits=20, clip=ranges, num_summands=100)
    x = rng.normal(0.0, 1.0, ranges.size)
    np.testing.assert_array_equal(
        codec.encode(x, rng=np.random.default_rng(9)), _previous_encode(codec, x, np.random.default_rng(9))
    )
    with pytest.raises(ValueError, match="ranges for 100000 coordinates"):
        codec.encode(x[:-1], rng=rng)
