"""The run directory: resolved config, per-round metrics, checkpoint, summary, adapter.

Layout::

    RUN_DIR/
      config.resolved.toml   the full config (defaults filled in)
      metrics.jsonl          one JSON object per round
      checkpoint.safetensors global adapter + server state; JSON state in its metadata
      summary.json           final numbers
      adapter/               PEFT ``save_pretrained`` output (safetensors)

Writes are atomic (temporary file + ``os.replace``), so an interrupted run
never leaves a half-written checkpoint; on resume, metric lines after the
checkpoint's round are dropped and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed.config import ExperimentConfig, dump_config, load_config
from privfed.errors import CheckpointError

__all__ = ["Checkpoint", "RunDirectory", "atomic_write_bytes", "atomic_write_text", "json_safe"]


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers see the old file or the new one, never half of it.

    For result files: the mode follows the umask, as with ``open``.
    """
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (e.g. an ``np.savez`` buffer)."""
    mask = os.umask(0)
    os.umask(mask)
    _atomic_write(path, data, mode=0o666 & ~mask)


def _atomic_write(path: Path, data: bytes, *, mode: int | None = None) -> None:
    # Run files (checkpoint, config, metrics) keep mkstemp's owner-only mode.
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Checkpoint:
    """State needed to continue a run after round :attr:`round`."""

    def __init__(self, *, round: int, arrays: dict[str, npt.NDArray[np.float32]], state: dict[str, Any]) -> None:
        self.round = round
        self.arrays = arrays
        self.state = state


class RunDirectory:
    """Reads and writes one run directory."""

    CONFIG = "config.resolved.toml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.safetensors"
    SUMMARY = "summary.json"
    ADAPTER = "adapter"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # --- creation --------------------------------------------------------------------
    def check_new(self) -> None:
        """Raise ``CheckpointError`` if this directory already holds a run (runs are never overwritten)."""
        if (self.path / self.CONFIG).exists():
            raise CheckpointError(
                f"{str(self.path)!r} already holds a run; resume it with `privfed run --resume {self.path}` "
                "or choose another --out"
            )

    def create(self, config: ExperimentConfig) -> None:
        """Start a new run here; refuses a directory that already holds a run."""
        self.check_new()
        self.path.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.path / self.CONFIG, dump_config(config).encode())
        (self.path / self.METRICS).write_text("")

    def load_config(self) -> ExperimentConfig:
        path = self.path / self.CONFIG
        if not path.exists():
            raise CheckpointError(f"{str(self.path)!r} is not a privfed run directory (no {self.CONFIG})")
        return load_config(path)

    def config_digest(self) -> str:
        return hashlib.sha256((self.path / self.CONFIG).read_bytes()).hexdigest()

    # --- metrics ---------------------------------------------------------------------
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        with open(self.path / self.METRICS, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / self.METRICS
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if number == len(lines):  # a line cut by a crash mid-write; all before it stands
                    break
                raise CheckpointError(f"{path} line {number} is not JSON") from None
        return records

    def truncate_metrics(self, last_round: int) -> list[dict[str, Any]]:
        """Keep only records of rounds ``<= last_round``; returns them."""
        kept = [r for r in self.read_metrics() if int(r["round"]) <= last_round]
        _atomic_write(self.path / self.METRICS, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode())
        return kept

    # --- checkpoint ------------------------------------------------------------------
    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        from safetensors.numpy import save

        metadata = {"round": str(checkpoint.round), "state": json.dumps(json_safe(checkpoint.state))}
        _atomic_write(self.path / self.CHECKPOINT, save(checkpoint.arrays, metadata=metadata))

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, or ``None`` if the run never finished a checkpointed round."""
        from safetensors import safe_open

        path = self.path / self.CHECKPOINT
        if not path.exists():
            return None
        try:
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is not a dict)
            return Checkpoint(round=int(metadata["round"]), arrays=arrays, state=json.loads(metadata["state"]))
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} is unreadable: {exc}") from None

    # --- summary ---------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _atomic_write(
            self.path / self.SUMMARY, (json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n").encode()
        )

    def read_summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / self.SUMMARY).read_text(encoding="utf-8"))
        return data

    def is_completed(self) -> bool:
        """Whether a run finished here (its summary says ``completed``)."""
        return (self.path / self.SUMMARY).exists() and bool(self.read_summary().get("completed"))

    @property
    def adapter_dir(self) -> Path:
        return self.path / self.ADAPTER
