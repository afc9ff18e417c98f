"""Helpers shared by the benchmarks: timing and machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def best_of(fn: Callable[[], Any], *, repeats: int) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run alternately so drifts in machine load hit all alike."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def machine() -> dict[str, Any]:
    import numpy as np

    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:  # pragma: no cover
        gpu = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpu": platform.machine(),
        "cores": os.cpu_count(),
        "gpu": gpu,
    }
