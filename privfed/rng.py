"""Seeded random generators, derived from the experiment seed by purpose.

Every draw in privfed comes from a generator that is passed in. Generators are
derived from ``(seed, purpose, round, client, ...)`` with numpy's
``SeedSequence`` spawn keys, so a round's randomness does not depend on how
many draws earlier rounds made: a resumed run draws exactly what an
uninterrupted one would.

Masks for secure aggregation never come from here (they need a keyed
cryptographic PRG, see ``privfed.secagg``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import numpy as np

__all__ = ["derive_seed", "generator", "torch_rng"]

_Key = int | str


def _key_int(part: _Key) -> int:
    if isinstance(part, bool):
        raise TypeError("seed path parts must be int or str, not bool")
    if isinstance(part, int):
        if part < 0:
            raise ValueError(f"seed path integers must be >= 0; got {part}")
        return part
    # A stable hash (Python's hash() is salted per process).
    return int.from_bytes(hashlib.sha256(part.encode("utf-8")).digest()[:8], "little")


def _sequence(seed: int, path: tuple[_Key, ...]) -> np.random.SeedSequence:
    if seed < 0:
        raise ValueError(f"seed must be >= 0; got {seed}")
    return np.random.SeedSequence(entropy=seed, spawn_key=tuple(_key_int(p) for p in path))


def generator(seed: int, *path: _Key) -> np.random.Generator:
    """A numpy generator for one purpose, e.g. ``generator(seed, "cohort", round)``.

    Different paths give independent streams; the same path gives the same stream.
    """
    return np.random.Generator(np.random.PCG64(_sequence(seed, path)))


def derive_seed(seed: int, *path: _Key) -> int:
    """A 63-bit integer seed for libraries that only take integers (torch)."""
    state = _sequence(seed, path).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


@contextlib.contextmanager
def torch_rng(seed: int) -> Iterator[None]:
    """Run a block with torch's generators seeded to ``seed``, restoring them afterwards.

    Dropout inside Hugging Face models draws from torch's global generator (on
    a GPU, the device's) and offers no way to pass one in; forking and
    restoring them keeps library code from leaking state into (or depending
    on) the caller's global RNG. The GPUs' generators are forked only once
    CUDA is in use, so a CPU run never initialises it.
    """
    import torch  # here, not at the top: the numpy stages import this module and must not load torch

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []  # type: ignore[no-untyped-call]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
