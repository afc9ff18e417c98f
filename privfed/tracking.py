"""Experiment tracking: a copy of each run's metrics for TensorBoard, MLflow or a user's own tracker.

The run directory stays the source of truth: a tracker gets, once per round, the
numbers just appended to ``metrics.jsonl`` (exactly those values, as the file holds
them) and, once per finished run, ``summary.json`` and the resolved config. The
backend is chosen by ``[tracking] backend``; ``"none"`` (the default) does nothing.

Backends are optional extras (``pip install privfed[tracking]``); a missing package
is a one-line :class:`~privfed.errors.ConfigError` raised before the run builds
anything (:func:`require_tracker`). Register another backend with
:func:`register_tracker`.

Resume (``privfed run --resume``) never duplicates a step: rounds logged after the
last checkpoint (and dropped from ``metrics.jsonl``) are dropped from the tracker
too (TensorBoard ``purge_step``; MLflow: the run id kept in ``<run dir>/tracking.json``
is reused and its file store's metric history cut after the checkpoint's round).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from privfed.errors import ConfigError
from privfed.registry import Registry

if TYPE_CHECKING:
    from privfed.config import ExperimentConfig

__all__ = [
    "STATE_FILE",
    "Tracker",
    "TrackerContext",
    "flatten_config",
    "open_tracker",
    "register_tracker",
    "require_tracker",
    "round_scalars",
    "summary_scalars",
    "tracker_names",
    "unregister_tracker",
]

# Where a run directory records its tracker: backend, absolute directory, MLflow run id.
STATE_FILE = "tracking.json"
_EXTRA = "pip install privfed[tracking]"


@runtime_checkable
class Tracker(Protocol):
    """What a tracking backend implements. Called by the runner; never raises on purpose."""

    def log_round(self, round: int, metrics: Mapping[str, float]) -> None:
        """One round's numeric metrics (``metrics.jsonl`` keys, float values; ``round`` is the step)."""

    def log_run(self, summary: Mapping[str, Any], config: ExperimentConfig) -> None:
        """Once, when the run has finished: ``summary.json`` and the resolved config."""

    def close(self) -> None:
        """Flush and release files; called once, also after an error or an interruption."""


@dataclasses.dataclass(frozen=True)
class TrackerContext:
    """What a backend factory gets.

    Attributes:
        config: the run's resolved config.
        run_dir: the run directory (absolute).
        dir: where the backend writes (absolute): ``tracking.dir`` (for TensorBoard
            ``tracking.dir/<run dir name>``), or a folder inside the run directory.
        start_round: rounds already done (0 for a new run; the checkpoint's round on resume).
            Steps above it that a tracker holds were released by an interrupted session
            and must be dropped.
    """

    config: ExperimentConfig
    run_dir: Path
    dir: Path
    start_round: int

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    def read_state(self) -> dict[str, Any]:
        """``tracking.json`` of the run directory ({} when absent or unreadable)."""
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def write_state(self, **fields: Any) -> None:
        """Merge ``fields`` into ``tracking.json`` (atomically)."""
        from privfed.experiments.run_dir import atomic_write_text

        state = self.read_state()
        state.update(fields)
        atomic_write_text(self.state_path, json.dumps(state, indent=2, sort_keys=True) + "\n")


TrackerFactory = Callable[[TrackerContext], Tracker]


@dataclasses.dataclass(frozen=True)
class _Backend:
    factory: TrackerFactory
    requires: Callable[[], None] | None
    default_subdir: str
    per_run_subdir: bool


_TRACKERS: Registry[_Backend] = Registry("tracker", error=ConfigError, field="tracking.backend")


def register_tracker(
    name: str,
    factory: TrackerFactory,
    *,
    requires: Callable[[], None] | None = None,
    default_subdir: str = "tracking",
    per_run_subdir: bool = True,
    overwrite: bool = False,
) -> None:
    """Register ``factory(context) -> Tracker`` under ``name`` (``tracking.backend``).

    Args:
        requires: called before a run builds anything; raises :class:`ConfigError` when
            the backend cannot work here (a missing optional package).
        default_subdir: the folder inside the run directory used when ``tracking.dir`` is empty.
        per_run_subdir: with ``tracking.dir`` set, write to ``tracking.dir/<run dir name>``
            (one folder per run, as TensorBoard wants) rather than to ``tracking.dir`` itself
            (a store shared by runs, as MLflow's).
        overwrite: replace an existing registration (re-running a notebook cell).
    """
    _TRACKERS.register(name, _Backend(factory, requires, default_subdir, per_run_subdir), overwrite=overwrite)


def unregister_tracker(name: str) -> None:
    """Remove a registered tracker (a notebook or a test cleaning up after itself)."""
    _TRACKERS.unregister(name)


def tracker_names() -> tuple[str, ...]:
    """Registered backend names, sorted."""
    return _TRACKERS.names()


def require_tracker(config: ExperimentConfig) -> None:
    """``ConfigError`` (one line, naming the extra to install) if ``tracking.backend`` cannot run here."""
    backend = _TRACKERS.get(config.tracking.backend)
    if backend.requires is not None:
        backend.requires()


def _tracker_dir(config: ExperimentConfig, run_dir: Path, backend: _Backend) -> Path:
    if not config.tracking.dir:
        return run_dir / backend.default_subdir
    base = Path(config.tracking.dir).expanduser().resolve()
    return base / run_dir.name if backend.per_run_subdir else base


def open_tracker(config: ExperimentConfig, run_dir: str | Path, *, start_round: int = 0) -> Tracker:
    """The tracker for a run in ``run_dir`` (which must exist), starting after ``start_round``.

    The returned tracker logs exactly the numbers ``metrics.jsonl`` holds, logs a run's
    summary once (not again when a finished run is resumed without new rounds), and
    closes once. The directory the backend writes to is kept in ``tracking.json``, so a
    resume from another working directory writes to the same place.
    """
    if config.tracking.backend == "none":
        return _NullTracker()
    backend = _TRACKERS.get(config.tracking.backend)
    if backend.requires is not None:
        backend.requires()
    run_path = Path(run_dir).resolve()
    context = TrackerContext(config=config, run_dir=run_path, dir=run_path, start_round=start_round)
    saved = context.read_state()
    if saved.get("backend") == config.tracking.backend and isinstance(saved.get("dir"), str):
        where = Path(saved["dir"])
    else:
        where = _tracker_dir(config, run_path, backend)
        context.write_state(backend=config.tracking.backend, dir=str(where))
    context = dataclasses.replace(context, dir=where)
    return _Guarded(backend.factory(context), start_round=start_round)


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one ``metrics.jsonl`` record as the file holds them, ``round`` left out.

    ``record`` goes through the same JSON encoding as the file (NaN/inf become null and
    are left out), so a tracker's value equals the file's value exactly (float64;
    integers are exact below 2**53). Booleans, strings, lists and nulls are left out.
    """
    from privfed.experiments.run_dir import json_safe

    plain = json.loads(json.dumps(json_safe(dict(record)), allow_nan=False))
    return {
        key: float(value)
        for key, value in plain.items()
        if key != "round" and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """Top-level numbers of ``summary.json`` as ``summary/<key>`` (apart from per-round tags)."""
    return {f"summary/{key}": value for key, value in round_scalars(summary).items()}


def flatten_config(config: ExperimentConfig) -> dict[str, str | int | float | bool]:
    """The resolved config as dotted keys (``"server.rounds"``); lists become their JSON text."""
    from privfed.config import config_to_dict

    flat: dict[str, str | int | float | bool] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (str, int, float, bool)):
                flat[f"{prefix}{key}"] = value
            else:
                flat[f"{prefix}{key}"] = json.dumps(value, default=str)

    walk(config_to_dict(config), "")
    return flat


class _NullTracker:
    """``tracking.backend = "none"``: logs nothing."""

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:
        pass

    def log_run(self, summary: Mapping[str, Any], config: ExperimentConfig) -> None:
        pass

    def close(self) -> None:
        pass


class _Guarded:
    """Wraps a backend: exact metric values, the summary logged once per run, close once."""

    def __init__(self, inner: Tracker, *, start_round: int) -> None:
        self.inner = inner
        self.start_round = start_round
        self.rounds_logged = 0
        self.closed = False

    def log_round(self, round: int, metrics: Mapping[str, Any]) -> None:
        self.inner.log_round(round, round_scalars(metrics))
        self.rounds_logged += 1

    def log_run(self, summary: Mapping[str, Any], config: ExperimentConfig) -> None:
        # A resumed session that ran no round (the run had finished or hit its budget) logged
        # its summary already, in the session that ran its last round.
        if self.start_round > 0 and self.rounds_logged == 0:
            return
        self.inner.log_run(summary, config)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.inner.close()


def _missing(backend: str, package: str) -> ConfigError:
    return ConfigError(
        f"tracking.backend = {backend!r} needs the {package!r} package, which is not installed; "
        f"install the extra: {_EXTRA}"
    )


# --- TensorBoard ------------------------------------------------------------------------


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise _missing("tensorboard", "tensorboard") from None


class TensorBoardTracker:
    """Event files in one folder per run: a float64 scalar per metric per round (step = round),
    and once per run the resolved config and summary as text, the flattened config as
    hyperparameters, and the summary's numbers as ``summary/<key>`` at step = rounds.

    Scalars are written new-style with double precision, so TensorBoard's reader
    (``plugin_event_accumulator.EventAccumulator.Tensors(tag)``) gives back the float64 of
    ``metrics.jsonl``. Every session starts with a ``SessionLog.START`` at its first step
    (``purge_step``): TensorBoard takes the first as the run's start and each later one as a
    restart, hiding the steps at or after it that an interrupted session wrote. (The legacy
    ``event_accumulator`` applies such purges to old-style float32 scalars only.)
    """

    def __init__(self, context: TrackerContext) -> None:
        from torch.utils.tensorboard import SummaryWriter

        started = bool(context.read_state().get("tensorboard_started"))
        if not started and context.dir.is_dir() and any(context.dir.glob("events.out.tfevents.*")):
            raise ConfigError(
                f"tracking.dir: {str(context.dir)!r} already holds TensorBoard events of another run; "
                "choose another tracking.dir or run directory name"
            )
        purge = context.start_round + 1 if started else 0
        self.writer = SummaryWriter(log_dir=str(context.dir), purge_step=purge)
        if not started:
            context.write_state(tensorboard_started=True)
        self.tags: set[str] = set()

    def log_round(self, round: int, metrics: Mapping[str, float]) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=round, new_style=True, double_precision=True)
            self.tags.add(tag)
        self.writer.flush()

    def log_run(self, summary: Mapping[str, Any], config: ExperimentConfig) -> None:
        from torch.utils.tensorboard.summary import hparams

        from privfed.config import dump_config

        step = int(summary.get("rounds", 0))
        for tag, value in summary_scalars(summary).items():
            self.writer.add_scalar(tag, value, global_step=step, new_style=True, double_precision=True)
        self.writer.add_text("run/config", _as_markdown_code(dump_config(config)), global_step=step)
        self.writer.add_text(
            "run/summary", _as_markdown_code(json.dumps(summary, indent=2, default=str)), global_step=step
        )
        # The HParams dashboard: the flattened config against the last value of each round metric.
        metric_tags = {tag: 0.0 for tag in sorted(self.tags)}
        file_writer = self.writer.file_writer
        assert file_writer is not None  # SummaryWriter makes it in __init__
        for event in hparams(flatten_config(config), metric_tags):
            file_writer.add_summary(event, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _as_markdown_code(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


# --- MLflow -----------------------------------------------------------------------------


def _mlflow_environment() -> None:
    """Before MLflow is imported: no usage telemetry (a privacy tool should not phone home;
    MLflow 3 sends it unless told not to), and its local file store allowed (MLflow >= 3.x
    keeps the ``file:`` store in maintenance mode behind this opt-in; privfed wants plain
    files under the run directory, readable without a database or a server)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def _require_mlflow() -> None:
    _mlflow_environment()
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401
    except ImportError:
        raise _missing("mlflow", "mlflow-skinny") from None


class MlflowTracker:
    """A run in a local MLflow file store (``file:`` URI, no server).

    The experiment is ``config.name``, the run is named after the run directory and
    tagged with its path; params are the flattened resolved config; each round's
    metrics are logged with ``step = round``; at the end the summary's numbers as
    ``summary/<key>`` (step = rounds) and ``summary.json`` and ``config.resolved.toml``
    as artifacts. The run id is kept in ``<run dir>/tracking.json`` and reused on resume.
    """

    # MLflow's batch limits (mlflow.utils.validation): 100 params, 1000 metrics per call.
    _PARAMS_PER_BATCH = 100
    _METRICS_PER_BATCH = 1000
    _PARAM_LENGTH = 6000

    def __init__(self, context: TrackerContext) -> None:
        _mlflow_environment()
        from mlflow.tracking import MlflowClient

        context.dir.mkdir(parents=True, exist_ok=True)
        self.store = context.dir
        self.uri = context.dir.as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        self.finished = False
        state = context.read_state()
        run_id = state.get("run_id")
        if isinstance(run_id, str) and state.get("uri") == self.uri and self._exists(run_id):
            self.run_id = run_id
            self._drop_steps_after(context.start_round)
            self.client.update_run(run_id, status="RUNNING")
            return
        name = context.config.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment is not None else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id, run_name=context.run_dir.name, tags={"privfed.run_dir": str(context.run_dir)}
        )
        self.run_id = run.info.run_id
        context.write_state(uri=self.uri, run_id=self.run_id, experiment_id=experiment_id)
        self._log_params(flatten_config(context.config))

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def _drop_steps_after(self, last_round: int) -> None:
        """Cut the file store's metric history after ``last_round`` (rounds an interrupted session
        released after its last checkpoint; they are re-run now). Lines are ``timestamp value step``."""
        info = self.client.get_run(self.run_id).info
        root = self.store / info.experiment_id / self.run_id / "metrics"
        if not root.is_dir():
            return
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if len(line.split()) == 3 and int(line.split()[2]) <= last_round]
            if len(kept) != len(lines):
                from privfed.experiments.run_dir import atomic_write_text

                atomic_write_text(path, "".join(line + "\n" for line in kept))

    def _log_params(self, flat: Mapping[str, str | int | float | bool]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[: self._PARAM_LENGTH]) for key, value in flat.items()]
        for start in range(0, len(params), self._PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + self._PARAMS_PER_BATCH])

    def _log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(key, value, now, step) for key, value in metrics.items()]
        for start in range(0, len(entries), self._METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[start : start + self._METRICS_PER_BATCH])

    def log_round(self, round: int, metrics: Mapping[str, float]) -> None:
        self._log_metrics(metrics, step=round)

    def log_run(self, summary: Mapping[str, Any], config: ExperimentConfig) -> None:
        from privfed.config import dump_config

        self._log_metrics(summary_scalars(summary), step=int(summary.get("rounds", 0)))
        self.client.log_text(self.run_id, json.dumps(summary, indent=2, default=str), "summary.json")
        self.client.log_text(self.run_id, dump_config(config), "config.resolved.toml")
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.finished = True

    def close(self) -> None:
        if not self.finished:  # interrupted or failed; a resume sets it running again
            self.client.set_terminated(self.run_id, status="KILLED")


register_tracker(
    "tensorboard",
    TensorBoardTracker,
    requires=_require_tensorboard,
    default_subdir="tensorboard",
    per_run_subdir=True,
)
register_tracker("mlflow", MlflowTracker, requires=_require_mlflow, default_subdir="mlruns", per_run_subdir=False)
register_tracker("none", lambda context: _NullTracker())
