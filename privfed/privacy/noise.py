"""Gaussian noise sources for DP, injected wherever noise is drawn.

* :class:`SeededNoise`: numpy PCG64 from the experiment seed. Reproducible;
  anyone who learns the seed can subtract the noise, so it is for experiments.
* :class:`SecureNoise`: uniforms from the operating system's CSPRNG
  (``os.urandom``), Gaussians by Box-Muller in float64, each returned value the
  normalised sum of four draws (Holohan & Braghin 2021, Sec. 5.1, as Opacus'
  ``secure_mode``): the noise cannot be predicted from any seed, and the
  floating-point attacks on naive Gaussian sampling (Mironov 2012 for Laplace;
  Jin et al. 2022 for Gaussians) must brute-force 2**159 instead of 2**53
  candidate states. Opacus' own ``secure_mode`` needs ``torchcsprng``, which is
  not installable here; this is privfed's replacement.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import numpy.typing as npt

from privfed.rng import generator

__all__ = ["NoiseSource", "SecureNoise", "SeededNoise", "make_noise"]


class NoiseSource(Protocol):
    def normal(self, *, std: float, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        """Independent N(0, std^2) draws of the given shape."""
        ...


class SeededNoise:
    """Reproducible Gaussian noise from ``generator(seed, *path)``."""

    def __init__(self, seed: int, *path: int | str) -> None:
        self._rng = generator(seed, "dp-noise", *path)

    def normal(self, *, std: float, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        return self._rng.normal(0.0, std, size=shape) if std > 0 else np.zeros(shape)


class SecureNoise:
    """Gaussian noise from the OS CSPRNG, hardened against floating-point attacks."""

    def _uniform(self, n: int) -> npt.NDArray[np.float64]:
        # 53 random bits per double, in (0, 1]: never exactly 0, so log() is finite.
        words = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return (words.astype(np.float64) + 1.0) / float(1 << 53)

    def _standard(self, n: int) -> npt.NDArray[np.float64]:
        half = (n + 1) // 2
        u1, u2 = self._uniform(half), self._uniform(half)
        radius = np.sqrt(-2.0 * np.log(u1))
        out = np.concatenate([radius * np.cos(2 * np.pi * u2), radius * np.sin(2 * np.pi * u2)])
        return out[:n]

    def normal(self, *, std: float, shape: tuple[int, ...]) -> npt.NDArray[np.float64]:
        n = int(np.prod(shape))
        if std <= 0 or n == 0:
            return np.zeros(shape)
        total = sum((self._standard(n) for _ in range(4)), np.zeros(n))
        return (std * total / 2.0).reshape(shape)


def make_noise(*, secure: bool, seed: int, path: tuple[int | str, ...]) -> NoiseSource:
    """The configured noise source for one purpose (``path`` keys the seeded stream)."""
    return SecureNoise() if secure else SeededNoise(seed, *path)
