"""Fixed-point encoding of float vectors into residues modulo 2**bits.

Stochastic rounding is unbiased (``E[decode(encode(x))] = x`` inside the clip
range), and the scale leaves room for ``num_summands`` clipped inputs to be
added modulo ``2**bits`` without wrapping, so the decoded modular sum is the
true sum up to rounding (at most ``num_summands / scale`` per coordinate).

Pure numpy; the generator for rounding is injected.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from privfed.secagg.crypto import mask_dtype

__all__ = ["FixedPointCodec"]


@dataclasses.dataclass(frozen=True)
class FixedPointCodec:
    """Signed fixed point in two's complement modulo ``2**bits``.

    Attributes:
        bits: word size of the residues (the SecAgg modulus is ``2**bits``).
        clip: per-coordinate bound: inputs are clipped to ``[-clip, clip]``;
            a scalar or float64[d].
        num_summands: how many encoded vectors may be added before decoding.
    """

    bits: int
    clip: float | npt.NDArray[np.float64]
    num_summands: int

    _CHUNK: ClassVar[int] = 1 << 15

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 62:
            raise ValueError(f"bits must be between 2 and 62; got {self.bits}")
        if self.num_summands < 1:
            raise ValueError("num_summands must be >= 1")
        clip = np.asarray(self.clip, dtype=np.float64)
        if not np.all(np.isfinite(clip)) or np.any(clip <= 0):
            raise ValueError("clip must be finite and > 0")
        scale = self.scale
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            # e.g. clip = 1e308: the scale underflows to 0 and every decoded sum would be NaN.
            raise ValueError(
                f"clip {float(np.max(clip)):g} with {self.num_summands} summands leaves no fixed-point resolution "
                f"at {self.bits} bits (scale {float(np.min(scale)):g})"
            )

    @property
    def scale(self) -> npt.NDArray[np.float64]:
        """Integer units per unit of input, per coordinate (float64[] or [d])."""
        top = float(2 ** (self.bits - 1) - 1)
        return np.asarray(top / (self.num_summands * np.asarray(self.clip, dtype=np.float64)), dtype=np.float64)

    def encode(self, values: npt.ArrayLike, *, rng: np.random.Generator) -> npt.NDArray[np.unsignedinteger]:
        """Clip, scale, stochastically round, and wrap into ``[0, 2**bits)``."""
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        clip = np.broadcast_to(np.asarray(self.clip, dtype=np.float64), x.shape)
        scale = np.broadcast_to(self.scale, x.shape)
        out = np.empty(x.shape, dtype=mask_dtype(self.bits))
        modulus_mask = (1 << self.bits) - 1
        # Work in cache-sized chunks: the float64 temporaries of a whole vector
        # would cost more in memory traffic than the arithmetic itself.
        for start in range(0, x.size, self._CHUNK):
            stop = min(start + self._CHUNK, x.size)
            y = np.clip(x[start:stop], -clip[start:stop], clip[start:stop])
            y *= scale[start:stop]
            # floor(y + u), u ~ U[0, 1), is floor(y) + 1 with probability frac(y): unbiased.
            # float32 uniforms (24-bit resolution) halve the cost of the draw; the bias
            # they allow is below 2**-24 of one quantization step.
            y += rng.random(stop - start, dtype=np.float32)
            np.floor(y, out=y)
            rounded = y.astype(np.int64)
            rounded &= modulus_mask
            out[start:stop] = rounded
        return out.reshape(np.shape(values))

    def rounding_error_bound(self) -> npt.NDArray[np.float64]:
        """Per-coordinate bound on ``|decode(encode(x)) - clip(x)|`` for one encoded vector (float64[] or [d]).

        ``floor(y + u) - y`` lies in ``(u - 1, u]``, strictly inside ``(-1, 1)`` for
        ``u`` in ``[0, 1)``, so one coordinate moves by less than one quantization step
        ``1 / scale``. The bound carries a 1e-9 relative margin for the float64 arithmetic.
        An L2 bound over coordinates ``S`` is ``norm(rounding_error_bound()[S])``: use it to
        clip to ``C - that`` when the *decoded* vector must stay within norm ``C``
        (the user-level DP sensitivity under secure aggregation).
        """
        bound: npt.NDArray[np.float64] = (1.0 + 1e-9) / self.scale
        return bound

    def decode_sum(self, residues: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Read a (sum of) encoded vector(s) back as signed values in input units."""
        r = np.asarray(residues).astype(np.int64) & ((1 << self.bits) - 1)
        half = 1 << (self.bits - 1)
        signed = np.where(r >= half, r - (1 << self.bits), r).astype(np.float64)
        decoded: npt.NDArray[np.float64] = signed / self.scale
        return decoded
