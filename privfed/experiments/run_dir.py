"""The run directory: resolved config, per-round metrics, checkpoint, summary, adapter.

Layout::

    RUN_DIR/
      config.resolved.toml   the full config (defaults filled in)
      metrics.jsonl          one JSON object per round
      checkpoint.safetensors global adapter + server state; JSON state (privacy ledger included)
                             in its metadata, with a SHA-256 digest over all of it
      summary.json           final numbers
      adapter/               PEFT ``save_pretrained`` output (safetensors)

Writes are atomic (temporary file + ``os.replace``), so an interrupted run
never leaves a half-written checkpoint; on resume, metric lines after the
checkpoint's round are dropped and recomputed. A checkpoint is verified before
it is used (digest, schema, config and metrics.jsonl): anything that does not
check out is a one-line ``CheckpointError``, never a silent reset.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed.config import ExperimentConfig, dump_config, load_config
from privfed.errors import CheckpointError
from privfed.experiments.records import RunSummary

__all__ = [
    "CHECKPOINT_FORMAT",
    "STATE_FIELDS",
    "Checkpoint",
    "RunDirectory",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_checkpoint_schema",
    "checkpoint_digest",
    "json_safe",
    "metrics_digest",
]


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
    """State needed to continue a run after round :attr:`round`.

    Attributes:
        round: the last round whose results it holds (0: none ran).
        arrays: ``"global"`` (float32[d], the global adapter) and ``"strategy.<name>"``
            (the server optimizer's state, e.g. FedAdam's moments).
        state: JSON state (see :data:`STATE_FIELDS`), the privacy ledger included.
    """

    def __init__(self, *, round: int, arrays: dict[str, npt.NDArray[np.float32]], state: dict[str, Any]) -> None:
        self.round = round
        self.arrays = arrays
        self.state = state


CHECKPOINT_FORMAT = "privfed-checkpoint/2"
# Every field a checkpoint's JSON state must hold: no field is optional, none is defaulted
# (a checkpoint without its ledger would silently reset privacy accounting).
STATE_FIELDS = ("config_sha256", "initial_eval", "layout_fingerprint", "ledger", "user_clip_norm")
_METADATA_FIELDS = {"format", "round", "state", "metrics_sha256", "sha256"}
_EVENT_FIELDS = {"noise_multiplier", "sample_rate", "steps", "scope", "subject", "round"}
# A distributed-DP event (privfed.privacy.events.DistributedNoiseEvent) carries its noise shape too.
_DISTRIBUTED_FIELDS = _EVENT_FIELDS | {"mechanism", "shares", "l2_sensitivity", "dim"}
_HEX64 = re.compile(r"[0-9a-f]{64}")


def checkpoint_digest(
    *, round_text: str, state_text: str, metrics_sha256: str, arrays: Mapping[str, npt.NDArray[Any]]
) -> str:
    """SHA-256 over a checkpoint's metadata and every tensor's name, dtype, shape and bytes.

    Detects damage (a flipped byte anywhere in what is read back), not a
    deliberate forger, who can recompute it; the schema checks catch what a
    re-signed but inconsistent checkpoint holds.
    """
    h = hashlib.sha256()
    for text in (CHECKPOINT_FORMAT, round_text, state_text, metrics_sha256):
        h.update(len(text.encode()).to_bytes(8, "little") + text.encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, array.dtype.str, list(array.shape)]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        h.update(array.tobytes())
    return h.hexdigest()


def metrics_digest(records: list[dict[str, Any]]) -> str:
    """SHA-256 of metric records (canonical JSON), binding a checkpoint to the rounds it follows."""
    text = "\n".join(json.dumps(r, sort_keys=True, allow_nan=False) for r in records)
    return hashlib.sha256(text.encode()).hexdigest()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_event(index: int, raw: Any, *, last_round: int) -> None:
    where = f"checkpoint ledger event {index}"
    if isinstance(raw, dict) and set(raw) == _DISTRIBUTED_FIELDS:
        try:  # the event's own checks (mechanism, shares, sensitivity, dim, scope)
            from privfed.privacy.events import DistributedNoiseEvent

            DistributedNoiseEvent.from_json(raw)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: {exc}") from None
        raw = {k: raw[k] for k in _EVENT_FIELDS}
    if not isinstance(raw, dict) or set(raw) != _EVENT_FIELDS:
        found = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{where} must be an object with fields {sorted(_EVENT_FIELDS)}; got {found}")
    sigma, rate, steps = raw["noise_multiplier"], raw["sample_rate"], raw["steps"]
    if not (_is_number(sigma) and math.isfinite(sigma) and sigma > 0):
        raise CheckpointError(f"{where}: noise_multiplier must be a finite number > 0; got {sigma!r}")
    if not (_is_number(rate) and 0 < rate <= 1):
        raise CheckpointError(f"{where}: sample_rate must be a number in (0, 1]; got {rate!r}")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise CheckpointError(f"{where}: steps must be an integer >= 0; got {steps!r}")
    if raw["scope"] not in ("user", "sample"):
        raise CheckpointError(f"{where}: scope must be 'user' or 'sample'; got {raw['scope']!r}")
    subject = raw["subject"]
    if raw["scope"] == "user" and subject is not None:
        raise CheckpointError(f"{where}: a user-level event has no subject; got {subject!r}")
    if raw["scope"] == "sample" and not (isinstance(subject, int) and not isinstance(subject, bool) and subject >= 0):
        raise CheckpointError(f"{where}: subject must be a client index >= 0; got {subject!r}")
    r = raw["round"]
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= last_round):
        raise CheckpointError(f"{where}: round must be an integer in [1, {last_round}]; got {r!r}")


def check_checkpoint_schema(checkpoint: Checkpoint, *, total_rounds: int) -> None:
    """Raise ``CheckpointError`` unless every field has its type and range.

    Checks what the checkpoint alone and the run's config tell: the round is in
    ``[0, total_rounds]``, the state holds exactly :data:`STATE_FIELDS`, ledger
    events are well formed and no later than the round, arrays are finite
    float32 (``"global"`` 1-D). Consistency with the built experiment (layout,
    the ledger's exact events, optimizer state shapes) is the runner's check.
    """
    round = checkpoint.round
    if not (isinstance(round, int) and not isinstance(round, bool) and 0 <= round <= total_rounds):
        raise CheckpointError(
            f"checkpoint round must be an integer in [0, {total_rounds}] (server.rounds); got {round!r}"
        )
    state = checkpoint.state
    if not isinstance(state, dict) or set(state) != set(STATE_FIELDS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint state must hold exactly the fields {list(STATE_FIELDS)}; got {found}")
    for key in ("config_sha256",):
        if not (isinstance(state[key], str) and _HEX64.fullmatch(state[key])):
            raise CheckpointError(f"checkpoint {key} must be 64 hex digits; got {state[key]!r}")
    if not isinstance(state["layout_fingerprint"], str):
        raise CheckpointError(f"checkpoint layout_fingerprint must be a string; got {state['layout_fingerprint']!r}")
    initial = state["initial_eval"]
    if not (
        isinstance(initial, dict)
        and all(isinstance(k, str) and (v is None or (_is_number(v) and math.isfinite(v))) for k, v in initial.items())
    ):
        raise CheckpointError(f"checkpoint initial_eval must map metric names to numbers; got {initial!r:.120}")
    clip = state["user_clip_norm"]
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        raise CheckpointError(f"checkpoint user_clip_norm must be null or a finite number > 0; got {clip!r}")
    ledger = state["ledger"]
    if not isinstance(ledger, list):
        raise CheckpointError(f"checkpoint ledger must be a list of privacy events; got {type(ledger).__name__}")
    for index, raw in enumerate(ledger):
        _check_event(index, raw, last_round=round)
    if "global" not in checkpoint.arrays:
        raise CheckpointError("checkpoint has no 'global' array (the global adapter)")
    for name, array in checkpoint.arrays.items():
        if name != "global" and not name.startswith("strategy."):
            raise CheckpointError(f"checkpoint array {name!r} is unknown (allowed: 'global', 'strategy.<name>')")
        if array.dtype != np.float32:
            raise CheckpointError(f"checkpoint array {name!r} has dtype {array.dtype}; expected float32")
        if name == "global" and array.ndim != 1:
            raise CheckpointError(f"checkpoint array 'global' has shape {array.shape}; expected 1-D")
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.isfinite(array).sum())
            raise CheckpointError(f"checkpoint array {name!r} holds {bad} non-finite (NaN/inf) values")


def _round_of(record: dict[str, Any]) -> int:
    value = record.get("round")
    if not isinstance(value, int) or isinstance(value, bool):
        raise CheckpointError(f"{RunDirectory.METRICS} holds a record whose round is {value!r}, not an integer")
    return value


def _read_safetensors(path: Path, where: str) -> tuple[dict[str, str], dict[str, npt.NDArray[Any]]]:
    """Metadata and tensors of a safetensors file; ``CheckpointError`` for anything unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = dict(handle.metadata() or {})
            arrays = {key: np.array(handle.get_tensor(key)) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, OverflowError, MemoryError) as exc:
        # A truncated or corrupt file: the library's message, on one line.
        message = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where} is unreadable ({type(exc).__name__}: {message})") from None
    return metadata, arrays


class RunDirectory:
    """Reads and writes one run directory."""

    CONFIG = "config.resolved.toml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.safetensors"
    SUMMARY = "summary.json"
    ADAPTER = "adapter"

    def __init__(self, path: str | Path) -> None:
        self._given = path
        self.path = Path(path)

    # --- creation --------------------------------------------------------------------
    def check_new(self) -> None:
        """Raise ``CheckpointError`` unless a new run can be created here; writes nothing.

        Refused: a directory that already holds a run (runs are never
        overwritten), a path that is a file or a symlink to nothing, lies under a
        file, or whose nearest existing directory cannot be written to.
        """
        if self._given == "":  # Path("") is the current directory: an empty --out is a mistake, not a wish
            raise CheckpointError("the run directory is an empty path; give a directory name")
        where = repr(str(self.path))
        if self.path.is_symlink() and not self.path.exists():
            raise CheckpointError(f"run directory {where} is a symlink to nothing ({os.readlink(self.path)!r})")
        if self.path.exists() and not self.path.is_dir():
            raise CheckpointError(f"run directory {where} exists and is not a directory")
        if (self.path / self.CONFIG).exists():
            raise CheckpointError(
                f"{where} already holds a run; resume it with `privfed run --resume {self.path}` "
                "or choose another --out"
            )
        existing = self.path
        while not existing.exists() and not existing.is_symlink():
            existing = existing.parent
        if not existing.is_dir():
            raise CheckpointError(f"run directory {where} cannot be created: {str(existing)!r} is not a directory")
        try:
            # The only reliable test of writability (root ignores permission bits, a read-only mount
            # does not): make and remove an empty directory there.
            os.rmdir(tempfile.mkdtemp(prefix=".privfed-probe-", dir=existing))
        except OSError as exc:
            raise CheckpointError(
                f"run directory {where} cannot be created: {str(existing)!r} is not writable ({exc.strerror})"
            ) from None

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
                record = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                if number == len(lines):  # a line cut by a crash mid-write; all before it stands
                    break
                raise CheckpointError(f"{path} line {number} is not JSON") from None
            if not isinstance(record, dict):
                raise CheckpointError(f"{path} line {number} is not a JSON object")
            records.append(record)
        return records

    def truncate_metrics(self, last_round: int) -> list[dict[str, Any]]:
        """Keep only records of rounds ``<= last_round``; returns them."""
        kept = [r for r in self.read_metrics() if _round_of(r) <= last_round]
        _atomic_write(self.path / self.METRICS, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept).encode())
        return kept

    # --- checkpoint ------------------------------------------------------------------
    def _metrics_through(self, round: int) -> list[dict[str, Any]]:
        """Metric records of rounds ``1..round``; ``CheckpointError`` unless each is there once, in order."""
        records = [r for r in self.read_metrics() if isinstance(r, dict) and _round_of(r) <= round]
        found = [r.get("round") for r in records]
        if found != list(range(1, round + 1)):
            shown = found if len(found) <= 8 else [*found[:4], "...", *found[-3:]]
            raise CheckpointError(
                f"{self.METRICS} must hold rounds 1..{round} once each, in order, for a checkpoint after round "
                f"{round}; found rounds {shown}"
            )
        return records

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint`` atomically, with its integrity digest and the digest of metrics 1..round."""
        from safetensors.numpy import save

        round_text = str(checkpoint.round)
        state_text = json.dumps(json_safe(checkpoint.state), allow_nan=False)
        metrics_sha256 = metrics_digest(self._metrics_through(checkpoint.round))
        arrays = {k: np.ascontiguousarray(v) for k, v in checkpoint.arrays.items()}
        metadata = {
            "format": CHECKPOINT_FORMAT,
            "round": round_text,
            "state": state_text,
            "metrics_sha256": metrics_sha256,
            "sha256": checkpoint_digest(
                round_text=round_text, state_text=state_text, metrics_sha256=metrics_sha256, arrays=arrays
            ),
        }
        _atomic_write(self.path / self.CHECKPOINT, save(arrays, metadata=metadata))

    def load_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint, verified; ``None`` if the run never finished a checkpointed round.

        Raises:
            CheckpointError: (one line) if the file is unreadable, truncated, fails its
                SHA-256 digest, breaks the schema (:func:`check_checkpoint_schema`
                against this directory's config), or does not match ``metrics.jsonl``.
        """
        path = self.path / self.CHECKPOINT
        if not path.exists():
            return None
        where = f"checkpoint {str(path)!r}"
        metadata, arrays = _read_safetensors(path, where)
        if set(metadata) != _METADATA_FIELDS:
            if "sha256" not in metadata:
                raise CheckpointError(
                    f"{where} has no integrity digest (written by an older privfed or not by privfed); "
                    "it cannot be verified, so it is not resumed: start the run again in a new directory"
                )
            raise CheckpointError(f"{where} metadata must hold {sorted(_METADATA_FIELDS)}; got {sorted(metadata)}")
        if metadata["format"] != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"{where} has format {metadata['format']!r:.80}; this privfed reads {CHECKPOINT_FORMAT!r}"
            )
        expected = checkpoint_digest(
            round_text=metadata["round"],
            state_text=metadata["state"],
            metrics_sha256=metadata["metrics_sha256"],
            arrays=arrays,
        )
        if not hmac.compare_digest(expected, metadata["sha256"]):
            raise CheckpointError(f"{where} is damaged: its SHA-256 digest does not match its contents")
        if not re.fullmatch(r"0|[1-9][0-9]{0,8}", metadata["round"]):
            raise CheckpointError(f"{where}: round must be a decimal integer >= 0; got {metadata['round']!r:.40}")
        try:
            state = json.loads(metadata["state"])
        except (json.JSONDecodeError, RecursionError) as exc:
            raise CheckpointError(f"{where}: state is not JSON: {exc}") from None
        checkpoint = Checkpoint(round=int(metadata["round"]), arrays=arrays, state=state)
        config = self.load_config()
        check_checkpoint_schema(checkpoint, total_rounds=config.server.rounds)
        if state["config_sha256"] != self.config_digest():
            raise CheckpointError(f"{self.CONFIG} changed since the checkpoint was written")
        if metrics_digest(self._metrics_through(checkpoint.round)) != metadata["metrics_sha256"]:
            raise CheckpointError(
                f"{self.METRICS} rounds 1..{checkpoint.round} differ from those the checkpoint was written after"
            )
        return checkpoint

    # --- summary ---------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        _atomic_write(
            self.path / self.SUMMARY, (json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n").encode()
        )

    def read_summary(self) -> RunSummary:
        """``summary.json`` as the run wrote it (a run of an older version may lack newer keys)."""
        data: RunSummary = json.loads((self.path / self.SUMMARY).read_text(encoding="utf-8"))
        return data

    def is_completed(self) -> bool:
        """Whether a run finished here (its summary says ``completed``)."""
        return (self.path / self.SUMMARY).exists() and bool(self.read_summary().get("completed"))

    @property
    def adapter_dir(self) -> Path:
        return self.path / self.ADAPTER
