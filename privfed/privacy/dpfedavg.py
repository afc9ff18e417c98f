"""User-level DP-FedAvg with optional adaptive clipping (pure numpy).

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models", ICLR): each client's delta is clipped to L2 norm C, the server adds
N(0, (z C)^2) to the sum and divides by the *expected* number of clients, so
the sensitivity of the mean to one client is C / expected.

Andrew et al. 2021 ("Differentially Private Learning with Adaptive
Clipping", NeurIPS): C follows a geometric update towards the
``target_quantile`` of client update norms, estimated from a noised count of
unclipped clients (std ``count_stddev``). Each client contributes its
indicator *centred*, ``b_i = 1[norm_i <= C] - 1/2`` (their Algorithm 1 and
tensorflow_privacy's ``QuantileEstimatorQuery``), so that one client moves the
count by at most 1/2 and the count query has noise multiplier
``2 count_stddev``. The two Gaussian queries together then have noise
multiplier z when the delta query uses
``z_delta = (z^-2 - (2 count_stddev)^-2)^-1/2`` (their Theorem 1); the
accountant is charged for z. (A raw 0/1 bit has sensitivity 1, and the same
split would spend ``(z_delta^-2 + count_stddev^-2)^-1/2 < z``.)
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from privfed.privacy.noise import NoiseSource

__all__ = [
    "COUNT_SENSITIVITY",
    "AdaptiveClipping",
    "DPFedAvgResult",
    "DPFedAvgServer",
    "centred_unclipped_bit",
    "clip_to_norm",
    "delta_noise_multiplier",
]

#: How far one client moves the (centred) unclipped count: |b_i| = 1/2.
COUNT_SENSITIVITY = 0.5


def centred_unclipped_bit(*, norm: float, clip_norm: float) -> float:
    """A client's contribution to the unclipped count: ``+1/2`` if ``norm <= clip_norm``, else ``-1/2``."""
    return COUNT_SENSITIVITY if norm <= clip_norm else -COUNT_SENSITIVITY


def clip_to_norm(delta: npt.NDArray[np.floating], *, max_norm: float) -> tuple[npt.NDArray[np.float32], float]:
    """``delta`` scaled down to L2 norm ``max_norm`` if longer. Returns (clipped float32, original norm).

    The float32 result's norm never exceeds ``max_norm`` (the sensitivity DP accounts for):
    rounding the scaled vector to float32 can push it a few ulps past the bound (about 1 in
    100 clipped vectors), and such a vector is shrunk by one float32 ulp per coordinate until
    it fits. A float32 vector already within the bound is returned unchanged.

    Raises:
        ValueError: ``max_norm`` negative or NaN (the shrinking loop would never reach a negative bound,
            and a NaN bound would clip nothing).
    """
    if not max_norm >= 0:
        raise ValueError(f"max_norm must be >= 0; got {max_norm!r}")
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    clipped = (delta.astype(np.float64) * factor).astype(np.float32)
    while float(np.linalg.norm(clipped.astype(np.float64))) > max_norm:
        clipped = np.nextafter(clipped, np.float32(0), dtype=np.float32)
    return clipped, norm


def delta_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """Noise multiplier left for the delta sum when ``count_stddev`` goes to the clipped count."""
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    if rest <= 0:
        raise ValueError(
            f"count_stddev {count_stddev} is too small for noise multiplier {noise_multiplier}: "
            "it would take all the privacy budget"
        )
    return float(rest**-0.5)


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Geometric clip-norm update of Andrew et al. 2021."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_stddev: float = 1.0


@dataclasses.dataclass(frozen=True)
class DPFedAvgResult:
    """One noised aggregate.

    Attributes:
        mean_delta: float32[d], noised sum divided by the expected cohort.
        noised_sum: float64[d], the sum of clipped deltas plus the Gaussian noise (what a
            wrapped strategy's ``aggregate_sum`` receives, with the expected cohort as weight).
        clip_norm: the C used this round.
        next_clip_norm: C for the next round (equal unless adaptive).
        unclipped_fraction: noised estimate of the fraction of unclipped clients (adaptive), else None.
    """

    mean_delta: npt.NDArray[np.float32]
    noised_sum: npt.NDArray[np.float64]
    clip_norm: float
    next_clip_norm: float
    unclipped_fraction: float | None


class DPFedAvgServer:
    """Noises clipped client deltas.

    Args:
        noise_multiplier: z, the total noise multiplier charged to the accountant.
        clip_norm: initial C.
        expected_clients: expected cohort size (the divisor).
        adaptive: adaptive clipping settings, or ``None`` for a fixed C.
    """

    def __init__(
        self, *, noise_multiplier: float, clip_norm: float, expected_clients: float, adaptive: AdaptiveClipping | None
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.expected_clients = expected_clients
        self.adaptive = adaptive
        self.delta_multiplier = (
            delta_noise_multiplier(noise_multiplier=noise_multiplier, count_stddev=adaptive.count_stddev)
            if adaptive is not None
            else noise_multiplier
        )

    def from_sums(
        self,
        *,
        clipped_sum: npt.NDArray[np.floating],
        centred_count: float,
        noise: NoiseSource,
        count_scale: float = 1.0,
    ) -> DPFedAvgResult:
        """Noise the sum of clipped deltas (and the centred unclipped count) and update C.

        Args:
            clipped_sum: float[d], sum of the clients' deltas, each of L2 norm <= C.
            centred_count: sum of the clients' :func:`centred_unclipped_bit` (each +-1/2);
                ignored without adaptive clipping. Its sensitivity must be at most 1/2.
            noise: the round's noise source.
            count_scale: post-processing factor applied to the *noised* count, for clients
                that sent their bit as ``+-h`` with ``h < 1/2`` (``0.5 / h``; see
                :meth:`privfed.server.FederatedServer.upload_clip_norm`).
        """
        c = self.clip_norm
        total = clipped_sum.astype(np.float64) + noise.normal(std=self.delta_multiplier * c, shape=clipped_sum.shape)
        mean = (total / self.expected_clients).astype(np.float32)
        fraction = None
        if self.adaptive is not None:
            noised = (centred_count + float(noise.normal(std=self.adaptive.count_stddev, shape=(1,))[0])) * count_scale
            # Undo the centring: sum(b_i) / m + 1/2 estimates the unclipped fraction (Andrew et al., Alg. 1).
            # Clamped to [0, 1] as tensorflow_privacy's QuantileEstimatorQuery does (post-processing):
            # with a small cohort one noisy round could otherwise move C by exp(lr * |noise| / m).
            fraction = min(1.0, max(0.0, noised / self.expected_clients + COUNT_SENSITIVITY))
            self.clip_norm = c * math.exp(-self.adaptive.learning_rate * (fraction - self.adaptive.target_quantile))
        return DPFedAvgResult(
            mean_delta=mean,
            noised_sum=total,
            clip_norm=c,
            next_clip_norm=self.clip_norm,
            unclipped_fraction=fraction,
        )

    def aggregate(self, deltas: npt.NDArray[np.floating], *, noise: NoiseSource) -> DPFedAvgResult:
        """Clip each row of ``deltas`` (float[n, d]) to C, then :meth:`from_sums`."""
        clipped_sum = np.zeros(deltas.shape[1], dtype=np.float64)
        centred = 0.0
        for row in deltas:
            clipped, norm = clip_to_norm(row, max_norm=self.clip_norm)
            clipped_sum += clipped
            centred += centred_unclipped_bit(norm=norm, clip_norm=self.clip_norm)
        return self.from_sums(clipped_sum=clipped_sum, centred_count=centred, noise=noise)
