"""The defences an inversion sweep turns on, applied to named updates.

These reproduce what privfed's clients and server do to an upload, at the
granularity an attack experiment needs (one local step, a handful of
examples): DP-SGD's per-example clipping and Gaussian noise, fixed-point
quantization through privfed's own :class:`~privfed.FixedPointCodec`, and
secure aggregation, whose output to the server is exactly the sum of the
cohort's (quantized) uploads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from privfed import FixedPointCodec

__all__ = ["NamedArrays", "dp_sgd_mean", "global_norm", "quantize_roundtrip", "sum_updates"]

NamedArrays = Mapping[str, npt.NDArray[np.float32]]


def global_norm(arrays: NamedArrays) -> float:
    """L2 norm of all arrays taken together."""
    return float(np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values())))


def dp_sgd_mean(
    per_example: Sequence[NamedArrays],
    *,
    clip_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict[str, npt.NDArray[np.float32]]:
    """DP-SGD's batch gradient (Abadi et al. 2016): clip each example's gradient
    to L2 norm ``clip_norm`` (jointly over all parameters), sum, add
    N(0, (noise_multiplier * clip_norm)^2) per coordinate, divide by the batch size.

    ``noise_multiplier = 0`` with a huge ``clip_norm`` is the plain mean.
    """
    if not per_example:
        raise ValueError("need at least one example")
    if clip_norm <= 0 or noise_multiplier < 0:
        raise ValueError("clip_norm must be > 0 and noise_multiplier >= 0")
    names = list(per_example[0])
    total = {n: np.zeros(np.shape(per_example[0][n]), dtype=np.float64) for n in names}
    for grads in per_example:
        if list(grads) != names:
            raise ValueError("every example needs the same parameter names")
        factor = min(1.0, clip_norm / max(global_norm(grads), 1e-12))
        for n in names:
            total[n] += factor * np.asarray(grads[n], dtype=np.float64)
    std = noise_multiplier * clip_norm
    out: dict[str, npt.NDArray[np.float32]] = {}
    for n in names:
        noisy = total[n] + (rng.normal(0.0, std, size=total[n].shape) if std > 0 else 0.0)
        out[n] = (noisy / len(per_example)).astype(np.float32)
    return out


def quantize_roundtrip(
    update: NamedArrays, *, bits: int, clip: float, rng: np.random.Generator, num_summands: int = 1
) -> dict[str, npt.NDArray[np.float32]]:
    """What survives privfed's fixed-point encoding (clip to ``[-clip, clip]``,
    unbiased stochastic rounding at ``bits`` bits with room for ``num_summands``)."""
    codec = FixedPointCodec(bits=bits, clip=clip, num_summands=num_summands)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for name, value in update.items():
        residues = codec.encode(np.asarray(value, dtype=np.float64).reshape(-1), rng=rng)
        out[name] = codec.decode_sum(residues).reshape(np.shape(value)).astype(np.float32)
    return out


def sum_updates(updates: Sequence[NamedArrays]) -> dict[str, npt.NDArray[np.float32]]:
    """The secure-aggregation view: the coordinate-wise sum of the cohort's uploads."""
    if not updates:
        raise ValueError("need at least one update")
    names = list(updates[0])
    return {n: np.sum([np.asarray(u[n], dtype=np.float64) for u in updates], axis=0).astype(np.float32) for n in names}
