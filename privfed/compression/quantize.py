"""Fixed-point encoding of float vectors into residues modulo 2**bits.

Stochastic rounding is unbiased (``E[decode(encode(x))] = x`` inside the clip
range). Each client's code lies in ``[-k, k]`` with ``k = floor((2**(bits-1) - 1) /
num_summands)``, so ``num_summands`` encodings add up modulo ``2**bits`` without
wrapping, and the decoded modular sum is the true sum up to rounding (at most
``num_summands / scale`` per coordinate). A sum outside ``[-m k, m k]`` for ``m``
contributors cannot come from honest encodings: :meth:`FixedPointCodec.decode_sum`
reports it instead of decoding a wrapped value (the "modular clipping" failure that
Kairouz, Liu, Steinke 2021 accept with small probability cannot happen here, because
clients clip each coordinate before rounding; what remains detectable is a forged
or corrupted sum).

Conditional randomized rounding (Kairouz, Liu, Steinke 2021, Sec. 4.1 and Theorem 1
of arXiv:2102.06387; TFF's ``rounded_l2_norm_bound``): re-draw the rounding until the
rounded integer vector's L2 norm is within :func:`rounded_l2_norm_bound`, which is
much tighter than the worst case ``c + sqrt(d)`` and is what the DP sensitivity after
rounding may use.

Pure numpy; the generator for rounding is injected.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from privfed.errors import PrivfedError, ProtocolError
from privfed.secagg.crypto import mask_dtype

__all__ = [
    "COORDINATE_RANGE_STDDEVS",
    "ConditionalRoundingError",
    "FixedPointCodec",
    "coordinate_range",
    "max_norm_before_rounding",
    "rounded_l2_norm_bound",
]

# Per-coordinate range of rotated, L2-clipped coordinates, in standard deviations
# (Kairouz, Liu, Steinke 2021, Sec. 5 choose k = 3..4; TFF's distributed DP uses 4).
COORDINATE_RANGE_STDDEVS = 4.0


class ConditionalRoundingError(PrivfedError, RuntimeError):
    """Conditional randomized rounding found no rounding within its norm bound in the allowed tries."""


def rounded_l2_norm_bound(norm: float, *, dim: int, beta: float) -> float:
    """L2 bound, in integer units, of a vector of norm ``norm`` (already scaled) after conditional rounding.

    ``min(c + sqrt(d), sqrt(c^2 + d/4 + sqrt(2 log(1/beta)) (c + sqrt(d)/2)))``
    (Kairouz, Liu, Steinke 2021, Theorem 1 of arXiv:2102.06387). Each unconditional
    draw is within the second bound with probability at least ``1 - beta``; ``beta = 0``
    gives the worst case ``c + sqrt(d)`` (which any rounding satisfies).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta}")
    if dim < 1 or norm < 0:
        raise ValueError(f"need dim >= 1 and norm >= 0; got dim={dim}, norm={norm}")
    worst = norm + math.sqrt(dim)
    if beta == 0.0:
        return worst
    squared = norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    return min(worst, math.sqrt(squared))


def max_norm_before_rounding(target: float, *, dim: int, beta: float) -> float:
    """The largest scaled norm ``c >= 0`` with ``rounded_l2_norm_bound(c) <= target`` (0 if none).

    Inverts both branches of :func:`rounded_l2_norm_bound` in closed form: ``c + sqrt(d) <= T``
    and the quadratic ``c^2 + a c + (d/4 + a sqrt(d)/2 - T^2) <= 0`` with ``a = sqrt(2 log 1/beta)``.
    """
    best = max(target - math.sqrt(dim), 0.0)
    if 0.0 < beta < 1.0:
        a = math.sqrt(2 * math.log(1 / beta))
        disc = a * a - 4 * (dim / 4 + a * math.sqrt(dim) / 2 - target * target)
        if disc >= 0:
            best = max(best, (-a + math.sqrt(disc)) / 2)
    # One part in 1e9 below the exact root absorbs float rounding in the check.
    return max(best * (1 - 1e-9), 0.0)


def coordinate_range(
    *,
    coordinate_clip: float,
    clip_norm: float | None,
    rotated: bool,
    rotated_dim: int,
    kept: int,
    stddevs: float = COORDINATE_RANGE_STDDEVS,
) -> float:
    """The per-coordinate range the fixed-point stage clips to, derived from a known L2 clip when it can be.

    After a randomized Hadamard rotation a delta of L2 norm at most ``c`` has nearly
    Gaussian coordinates of standard deviation at most ``c / sqrt(rotated_dim)``, so a
    range of ``stddevs`` of them clips almost nothing (about 6e-5 of the coordinates at
    4) while its quantization steps are far finer than a fixed ``coordinate_clip``.
    ``c = clip_norm * kept / rotated_dim`` is the most a client uploads under user-level
    DP (:meth:`privfed.server.FederatedServer.upload_clip_norm` clips below it).

    Clipping to the range keeps every DP bound: ``|clip(x)_i| <= |x_i|`` per coordinate,
    so the L2 norm only shrinks, and the rounding slack is computed from the range.

    Args:
        coordinate_clip: the configured range (``secagg.clip``); never exceeded.
        clip_norm: the user-level L2 clip ``C``, or ``None`` when none is known (no
            user-level DP, or adaptive clipping, whose ``C`` moves every round).
        rotated: whether the rotation stage runs (without it, coordinates are not flat).
        rotated_dim: ``d'``, coordinates after rotation (padded to a power of two).
        kept: coordinates kept by shared-seed sparsification (``rotated_dim`` if none).
        stddevs: ``k``, the range in standard deviations.

    Returns:
        ``min(coordinate_clip, k C (kept / d') / sqrt(d'))`` when rotated with a known ``C``,
        else ``coordinate_clip``.
    """
    if not rotated or clip_norm is None or clip_norm <= 0:
        return coordinate_clip
    if rotated_dim < 1 or not 1 <= kept <= rotated_dim or not stddevs > 0:
        raise ValueError(f"need 1 <= kept <= rotated_dim and stddevs > 0; got {kept}, {rotated_dim}, {stddevs}")
    derived = stddevs * clip_norm * kept / rotated_dim / math.sqrt(rotated_dim)
    return min(coordinate_clip, derived)


@dataclasses.dataclass(frozen=True)
class FixedPointCodec:
    """Signed fixed point in two's complement modulo ``2**bits``.

    Attributes:
        bits: word size of the residues (the SecAgg modulus is ``2**bits``), 2..52: above 52
            bits float64 cannot represent ``x * scale`` to within one quantization step, so the
            rounding bound (and with it the DP sensitivity after rounding) would not hold.
        clip: per-coordinate bound: inputs are clipped to ``[-clip, clip]``;
            a scalar or float64[d].
        num_summands: how many encoded vectors may be added before decoding; at most
            ``2**(bits-1) - 1`` (each needs at least one code step).
    """

    bits: int
    clip: float | npt.NDArray[np.float64]
    num_summands: int

    _CHUNK: ClassVar[int] = 1 << 15
    _MAX_SEGMENTS: ClassVar[int] = 64

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 52:
            raise ValueError(f"bits must be between 2 and 52; got {self.bits}")
        if self.num_summands < 1:
            raise ValueError("num_summands must be >= 1")
        if self.max_code < 1:
            raise ValueError(
                f"a modulus of 2**{self.bits} cannot hold a sum of {self.num_summands} codes: the signed range "
                f"+-{2 ** (self.bits - 1) - 1} needs at least {(self.num_summands).bit_length() + 1} bits"
            )
        clip = np.asarray(self.clip, dtype=np.float64)
        if not np.all(np.isfinite(clip)) or np.any(clip <= 0):
            raise ValueError("clip must be finite and > 0")
        scale = self.scale
        # A sum of num_summands values at the clip must itself be a finite float (1e308 * 10 is not).
        span = clip * float(self.num_summands)
        if not np.all(np.isfinite(span)) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            # e.g. clip = 1e308: the scale underflows to 0 and every decoded sum would be NaN.
            raise ValueError(
                f"clip {float(np.max(clip)):g} with {self.num_summands} summands leaves no fixed-point resolution "
                f"at {self.bits} bits (scale {float(np.min(scale)):g})"
            )

    @property
    def max_code(self) -> int:
        """``k``: each client's code lies in ``[-k, k]``, so ``num_summands`` of them never wrap."""
        return int((2 ** (self.bits - 1) - 1) // self.num_summands)

    @property
    def scale(self) -> npt.NDArray[np.float64]:
        """Integer units per unit of input, per coordinate (float64[] or [d]): ``k / clip``."""
        return np.asarray(float(self.max_code) / np.asarray(self.clip, dtype=np.float64), dtype=np.float64)

    @functools.cached_property
    def _segments(self) -> tuple[tuple[int, int, float, float], ...]:
        """Runs of equal range, ``(start, stop, clip, scale)``; ``stop = -1`` means to the end.

        A stage's ranges are one value for the delta and another for a few metric coordinates,
        so rounding works with scalar clips and scales over each run (no per-coordinate arrays).
        """
        clip = np.asarray(self.clip, dtype=np.float64)
        scale = np.asarray(self.scale, dtype=np.float64)
        if clip.size == 1:  # a scalar, or one range broadcast to every coordinate
            return ((0, -1, float(clip.reshape(-1)[0]), float(scale.reshape(-1)[0])),)
        flat, scales = clip.reshape(-1), np.broadcast_to(scale, clip.shape).reshape(-1)
        if flat.size == 0:
            return ()
        edges = [0, *(np.flatnonzero(flat[1:] != flat[:-1]) + 1).tolist(), flat.size]
        return tuple((a, b, float(flat[a]), float(scales[a])) for a, b in itertools.pairwise(edges))

    def _rounded(self, x: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.int64]:
        segments = self._segments
        ranges = np.asarray(self.clip)
        if ranges.size != 1 and ranges.size != x.size:
            raise ValueError(f"the codec has ranges for {ranges.size} coordinates; got {x.size}")
        out = np.empty(x.shape, dtype=np.int64)
        # One pass per chunk in two reused cache-sized buffers (no temporaries): the float64
        # traffic of whole-vector temporaries would cost more than the arithmetic itself.
        chunk = min(self._CHUNK, max(x.size, 1))
        y = np.empty(chunk, dtype=np.float64)
        u = np.empty(chunk, dtype=np.float32)
        top = float(self.max_code)
        for start in range(0, x.size, self._CHUNK):
            stop = min(start + self._CHUNK, x.size)
            m = stop - start
            if len(segments) > self._MAX_SEGMENTS:  # ranges that vary everywhere: per-coordinate arrays
                clips = np.asarray(self.clip, dtype=np.float64)[start:stop]
                np.clip(x[start:stop], -clips, clips, out=y[:m])
                y[:m] *= np.asarray(self.scale)[start:stop]
            else:
                for a, b, clip, scale in segments:
                    lo, hi = max(a, start), (stop if b == -1 else min(b, stop))
                    if lo < hi:
                        np.clip(x[lo:hi], -clip, clip, out=y[lo - start : hi - start])
                        y[lo - start : hi - start] *= scale
            # floor(y + u), u ~ U[0, 1), is floor(y) + 1 with probability frac(y): unbiased.
            # float32 uniforms (24-bit resolution) halve the cost of the draw; the bias
            # they allow is below 2**-24 of one quantization step.
            rng.random(m, dtype=np.float32, out=u[:m])
            y[:m] += u[:m]
            np.floor(y[:m], out=y[:m])
            # |y| <= k before rounding and k is an integer, so the code stays in [-k, k]; the
            # clamp guards the last float ulp (a sum of clients at the edge must never wrap).
            np.clip(y[:m], -top, top, out=y[:m])
            np.copyto(out[start:stop], y[:m], casting="unsafe")
        return out

    def encode(
        self,
        values: npt.ArrayLike,
        *,
        rng: np.random.Generator,
        norm_bound: float | None = None,
        norm_dim: int | None = None,
        max_tries: int = 64,
    ) -> npt.NDArray[np.unsignedinteger]:
        """Clip, scale, stochastically round, and wrap into ``[0, 2**bits)``.

        Args:
            values: float[d].
            rng: the rounding generator.
            norm_bound: conditional rounding: re-draw until the L2 norm of the first
                ``norm_dim`` integer codes is at most this (integer units), see
                :func:`rounded_l2_norm_bound`. ``None``: one unconditional draw.
            norm_dim: how many leading coordinates the bound covers (default all).
            max_tries: draws before giving up (>= 1): the re-draw loop is bounded by it.

        Raises:
            ConditionalRoundingError: no draw within ``norm_bound`` in ``max_tries``.
            ValueError: ``values`` hold a NaN (it has no code: the int64 cast would be arbitrary),
                ``norm_bound`` is NaN (every draw would pass unchecked) or ``max_tries < 1``.
        """
        if isinstance(max_tries, bool) or not isinstance(max_tries, int) or max_tries < 1:
            raise ValueError(f"max_tries must be an integer >= 1; got {max_tries!r}")
        if norm_bound is not None and math.isnan(norm_bound):
            raise ValueError("norm_bound must be a number (or None); got nan")
        x = np.asarray(values, dtype=np.float64).reshape(-1)
        if x.size and math.isnan(float(np.min(x))):  # min propagates NaN: one pass, no temporary
            raise ValueError(f"values must not be NaN ({int(np.count_nonzero(np.isnan(x)))} of {x.size} are)")
        signed = self._rounded(x, rng)
        if norm_bound is not None:
            head = x.size if norm_dim is None else norm_dim
            for _ in range(max_tries - 1):
                codes = signed[:head].astype(np.float64)
                if math.sqrt(float(codes @ codes)) <= norm_bound:
                    break
                signed = self._rounded(x, rng)
            else:
                codes = signed[:head].astype(np.float64)
                if math.sqrt(float(codes @ codes)) > norm_bound:
                    raise ConditionalRoundingError(
                        f"conditional rounding: no rounding of {head} coordinates within L2 norm {norm_bound:.6g} "
                        f"(integer units) in {max_tries} tries"
                    )
        signed &= (1 << self.bits) - 1
        return signed.astype(mask_dtype(self.bits)).reshape(np.shape(values))

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

    def decode_sum(self, residues: npt.ArrayLike, *, contributors: int | None = None) -> npt.NDArray[np.float64]:
        """Read a (sum of) encoded vector(s) back as signed values in input units.

        Args:
            residues: the modular sum, integers in ``[0, 2**bits)``.
            contributors: how many encodings were summed (default ``num_summands``). A
                coordinate outside ``[-contributors k, contributors k]`` cannot be a sum of
                honest codes (it wrapped, or a code was forged).

        Raises:
            ProtocolError: some coordinates are out of that range (their count is named);
                the sum is not decoded, so it is never averaged in.
        """
        r = np.asarray(residues).astype(np.int64) & ((1 << self.bits) - 1)
        half = 1 << (self.bits - 1)
        signed = np.where(r >= half, r - (1 << self.bits), r)
        m = self.num_summands if contributors is None else contributors
        if not 0 <= m <= self.num_summands:
            raise ProtocolError(f"a sum of {m} encodings; the codec has room for at most {self.num_summands}")
        limit = m * self.max_code
        beyond = int(np.count_nonzero(np.abs(signed) > limit))
        if beyond:
            raise ProtocolError(
                f"decoded sum has {beyond} of {signed.size} coordinates beyond +-{limit}, the most {m} clients can "
                f"add up to at {self.bits} bits: a wrapped or forged sum, not decoded"
            )
        decoded: npt.NDArray[np.float64] = signed.astype(np.float64) / self.scale
        return decoded
