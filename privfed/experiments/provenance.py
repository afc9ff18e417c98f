"""Where a result came from: code, environment, hardware, determinism settings and data fingerprints.

Every run directory's ``summary.json`` carries a ``provenance`` object built
here, so that a published figure names what produced it and
``privfed reproduce`` can say *why* a re-run differs (a package version, the
hardware, the data) rather than only that it does.

Fingerprints are SHA-256 digests over canonical byte encodings (numpy arrays
as little-endian bytes with their shape and dtype; texts as UTF-8 with length
prefixes), so they are equal exactly when the content is.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

__all__ = [
    "SCIENTIFIC_STACK",
    "DeterminismSettings",
    "GitInfo",
    "GpuInfo",
    "HardwareInfo",
    "OSInfo",
    "Provenance",
    "PythonInfo",
    "apply_determinism",
    "collect_provenance",
    "diff_provenance",
    "fingerprint_arrays",
    "fingerprint_rows",
    "fingerprint_tensors",
]

#: Distributions whose versions can change a number privfed publishes.
SCIENTIFIC_STACK = (
    "privfed",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "opacus",
    "numpy",
    "scipy",
    "scikit-learn",
    "cryptography",
    "safetensors",
    "gguf",
    "dp-accounting",
)


def _update_array(h: Any, array: npt.NDArray[Any]) -> None:
    a = np.ascontiguousarray(array)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def fingerprint_arrays(arrays: Iterable[npt.ArrayLike]) -> str:
    """SHA-256 over a sequence of arrays (dtype, shape and bytes of each, in order)."""
    h = hashlib.sha256()
    for array in arrays:
        _update_array(h, np.asarray(array))
    return h.hexdigest()


def fingerprint_rows(*, texts: Sequence[str] | None, labels: npt.ArrayLike, rows: npt.ArrayLike) -> str:
    """SHA-256 of the dataset rows ``rows`` (their texts, when any, and labels), in order."""
    h = hashlib.sha256()
    index = np.asarray(rows, dtype=np.int64)
    _update_array(h, np.asarray(labels)[index])
    if texts is not None:
        for i in index.tolist():
            data = texts[i].encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def fingerprint_tensors(named: Iterable[tuple[str, Any]]) -> str:
    """SHA-256 over named torch tensors, sorted by name (the base model's weights)."""
    h = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        # float32 on the CPU: the same weights give the same digest wherever they live.
        _update_array(h, tensor.detach().to("cpu").float().contiguous().numpy())
    return h.hexdigest()


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


class DeterminismSettings(TypedDict):
    """The torch settings that decide whether two runs can be bit-identical (``provenance.torch``)."""

    deterministic_algorithms: bool
    deterministic_warn_only: bool
    cudnn_deterministic: bool
    cudnn_benchmark: bool
    cuda_matmul_allow_tf32: bool
    float32_matmul_precision: str
    cublas_workspace_config: str | None
    num_threads: int
    num_interop_threads: int


class GitInfo(TypedDict):
    """The checkout a run came from; ``None`` outside a git checkout."""

    commit: str | None
    #: Tracked files modified; ``None`` when git could not say.
    dirty: bool | None


class PythonInfo(TypedDict):
    version: str
    implementation: str


class OSInfo(TypedDict):
    system: str
    release: str
    platform: str


class GpuInfo(TypedDict):
    name: str
    count: int
    #: The CUDA version torch was built with.
    cuda: str | None


class HardwareInfo(TypedDict):
    cpu: str
    cpu_count: int | None
    machine: str
    device: str
    #: Only when the model runs on CUDA and a GPU is there.
    gpu: GpuInfo | None


class Provenance(TypedDict):
    """A run's provenance record (``summary.json``'s ``provenance``), JSON-serialisable."""

    git: GitInfo
    #: Installed version of each of :data:`SCIENTIFIC_STACK`; ``None`` when not installed.
    packages: dict[str, str | None]
    python: PythonInfo
    os: OSInfo
    hardware: HardwareInfo
    torch: DeterminismSettings
    #: SHA-256 content digests of what the run used, by name, sorted.
    fingerprints: dict[str, str]
    argv: list[str]


def apply_determinism(*, device: str) -> DeterminismSettings:
    """Ask torch for deterministic kernels, and return the settings in force.

    ``torch.use_deterministic_algorithms(True, warn_only=True)``: kernels with a
    deterministic variant use it, and the few without one warn instead of failing.
    On CUDA, cuBLAS also needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first
    use (set here when absent), cuDNN's autotuner is switched off, and TF32 is left
    as the caller set it (it changes results, and the settings record says which).
    """
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    if device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return determinism_settings()


def determinism_settings() -> DeterminismSettings:
    """The torch settings that decide whether two runs can be bit-identical."""
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "num_threads": torch.get_num_threads(),
        "num_interop_threads": torch.get_num_interop_threads(),
    }


def collect_provenance(*, device: str, fingerprints: Mapping[str, str]) -> Provenance:
    """The provenance record of a run (JSON-serialisable).

    Args:
        device: the model's device (``"cpu"`` or ``"cuda"``).
        fingerprints: content digests of what the run used (``dataset_rows``,
            ``partition``, ``base_model``, ...).
    """
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    gpu: GpuInfo | None = None
    if device == "cuda" and torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(), "cuda": torch.version.cuda}
    return {
        "git": {"commit": commit, "dirty": None if status is None else bool(status)},
        "packages": _versions(SCIENTIFIC_STACK),
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation()},
        "os": {"system": platform.system(), "release": platform.release(), "platform": platform.platform()},
        "hardware": {
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "device": device,
            "gpu": gpu,
        },
        "torch": determinism_settings(),
        "fingerprints": dict(sorted(fingerprints.items())),
        "argv": list(sys.argv),
    }


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


#: Fields that differ between any two runs without saying anything about their results.
_IGNORED = ("argv", "git.dirty")


def diff_provenance(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, a's value, b's value)`` for every provenance field that differs, sorted by field."""
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [(k, fa.get(k), fb.get(k)) for k in keys if not k.startswith(_IGNORED) and fa.get(k) != fb.get(k)]
