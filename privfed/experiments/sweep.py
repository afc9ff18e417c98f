"""Sweeps: the same experiment over a grid of config values, each point at one or several seeds.

``privfed sweep CONFIG.toml --grid privacy.user.target_epsilon=1,3,8,inf adapter.rank=4,8
--seeds 0,1,2 --out DIR`` runs the cartesian product of the grid's values (dotted
keys typed by the schema, exactly like ``--set``), each point once per seed, in
``DIR/<point>/seed-<s>/`` (``DIR/<point>/`` without ``--seeds``). A target ε of
``inf`` turns privacy off for that point; a finite one turns its level on and
calibrates the noise to it. ``--epsilons 1,3,8,inf`` is a shorthand for a grid over
the target ε of every level the config enables (points ``eps-<value>``).

Finished runs are reused and interrupted ones resumed (a directory holding a run
of another config is refused). From the runs' ``summary.json`` files alone the
sweep writes ``sweep.json`` (every point: its runs and, per metric, the mean and a
95% t-interval across seeds), ``results/<point>.json``, ``sweep.csv``, ``sweep.md``
and the plot ``privacy_utility.{png,pdf,svg}`` (``utility.*`` when the grid has no
ε axis), whose error bars are those intervals.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from privfed.config import (
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    parse_override,
    replace_path,
    replace_paths,
)
from privfed.errors import ConfigError, PrivacyBudgetExceeded, PrivfedError
from privfed.experiments.run_dir import RunDirectory, atomic_write_text, json_safe
from privfed.experiments.runner import resume_experiment, run_experiment

if TYPE_CHECKING:
    from privfed.experiments.runner import Experiment
    from privfed.transport import Transport

__all__ = [
    "EPSILONS_AXIS",
    "GridAxis",
    "SeedInterval",
    "SweepPoint",
    "parse_epsilons",
    "parse_grid",
    "parse_seeds",
    "plan_sweep",
    "plot_privacy_utility",
    "point_dir",
    "run_grid",
    "run_or_resume",
    "run_sweep",
    "run_sweep_point",
    "seed_interval",
    "sweep_config",
]

EPSILONS_AXIS = "epsilon"
"""The axis ``--epsilons`` makes: the target ε of every privacy level the config enables."""

EPSILON_KEYS = {"privacy.user.target_epsilon": "user", "privacy.sample.target_epsilon": "record"}
"""Grid keys that are a target ε, and the privacy unit each protects."""

METRICS = (
    "final_eval_accuracy",
    "final_eval_loss",
    "final_eval_perplexity",
    "epsilon_user",
    "epsilon_sample_max",
    "user_noise_multiplier",
    "sample_noise_multiplier",
    "bytes_up_total",
    "majority_class_rate",
)
"""Summary values aggregated across seeds (mean and 95% interval) per point."""

SWEEP_FILE = "sweep.json"


def parse_epsilons(text: str) -> list[float]:
    """``"1,3,8,inf"`` -> ``[1.0, 3.0, 8.0, inf]``; each must be > 0."""
    values = []
    for part in text.split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise ConfigError(f"--epsilons must be numbers or inf separated by commas; got {part.strip()!r}") from None
        if not value > 0:
            raise ConfigError(f"--epsilons must all be > 0; got {value}")
        values.append(value)
    return values


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct integers >= 0.

    Raises:
        ConfigError: a part that is not a non-negative integer, or a repeated seed.
    """
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ConfigError(f"--seeds must be integers >= 0 separated by commas (e.g. 0,1,2); got {part!r}")
        if int(part) in seeds:
            raise ConfigError(f"--seeds lists seed {int(part)} twice")
        seeds.append(int(part))
    return seeds


@dataclass(frozen=True)
class GridAxis:
    """One swept config key and its values, as given (``"inf"``, ``"4"``, ``"fedadam"``)."""

    key: str
    values: tuple[str, ...]


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets and quotes (``[1,2],[3]`` is two TOML arrays)."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


def _epsilon_value(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--grid {key}: values must be numbers > 0 or inf; got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--grid {key}: values must be > 0 (inf = privacy off); got {text!r}")
    return value


def parse_grid(specs: Sequence[str]) -> list[GridAxis]:
    """``["privacy.user.target_epsilon=1,3,inf", "adapter.rank=4,8"]`` -> one axis per key.

    Values are split on commas (a list-valued key takes TOML arrays: ``key=["a","b"],["a"]``);
    they are typed and validated when each point's config is built (:func:`plan_sweep`).

    Raises:
        ConfigError: a spec without ``=``, an empty value, a key given twice, or a repeated value.
    """
    axes: list[GridAxis] = []
    for spec in specs:
        key, text = parse_override(spec)
        values = _split_values(text)
        if any(not v for v in values):
            raise ConfigError(f"--grid {key}: empty value in {text!r}; give values separated by commas")
        if key in EPSILON_KEYS:
            values = [_label(_epsilon_value(key, v)) for v in values]
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {key}: a value is repeated in {text!r}")
        if any(a.key == key for a in axes):
            raise ConfigError(f"--grid {key} is given twice; list all its values once, separated by commas")
        axes.append(GridAxis(key, tuple(values)))
    return axes


def sweep_config(config: ExperimentConfig, epsilon: float) -> ExperimentConfig:
    """``config`` with every active privacy level calibrated to ``epsilon`` (``inf``: privacy off)."""
    if config.privacy.mode == "none":
        raise ConfigError("privfed sweep needs privacy.mode = 'sample', 'user' or 'both' in the config")
    if math.isinf(epsilon):
        return replace_path(config, "privacy.mode", "none")
    for level in ("sample", "user"):
        if level == "sample" and not config.privacy.sample_level:
            continue
        if level == "user" and not config.privacy.user_level:
            continue
        config = replace_paths(
            config, {f"privacy.{level}.target_epsilon": float(epsilon), f"privacy.{level}.noise_multiplier": 0.0}
        )
    return config


def _label(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def point_dir(out: Path, epsilon: float) -> Path:
    """The run directory of ``epsilon``'s point in a one-seed ``--epsilons`` sweep written to ``out``."""
    return out / f"eps-{_label(epsilon)}"


def _point_config(base: ExperimentConfig, assignment: Sequence[tuple[str, str]]) -> ExperimentConfig:
    """``base`` with one grid point's values: plain keys as ``--set``, target ε keys turning their level on
    (noise calibrated to the target) or, at ``inf``, privacy off; the ``--epsilons`` axis as :func:`sweep_config`."""
    raw = config_to_dict(base)
    raw = apply_overrides(raw, [f"{k}={v}" for k, v in assignment if k != EPSILONS_AXIS and k not in EPSILON_KEYS])
    privacy = raw["privacy"]
    levels = {"sample": privacy["mode"] in ("sample", "both"), "user": privacy["mode"] in ("user", "both")}
    off = False
    for key, text in assignment:
        if key in EPSILON_KEYS:
            level = key.split(".")[1]
            epsilon = _epsilon_value(key, text)
            if math.isinf(epsilon):
                off = True
                continue
            levels[level] = True
            privacy[level]["target_epsilon"] = epsilon
            privacy[level]["noise_multiplier"] = 0.0
    if any(k in EPSILON_KEYS for k, _ in assignment):
        both = levels["sample"] and levels["user"]
        privacy["mode"] = "none" if off else "both" if both else "user" if levels["user"] else "sample"
    config = config_from_dict(raw)
    for key, text in assignment:
        if key == EPSILONS_AXIS:
            config = sweep_config(config, float(text))
    return config


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: a grid point at one seed."""

    name: str  # the point's directory name, e.g. "eps-1_rank-4"
    assignment: tuple[tuple[str, str], ...]  # (grid key, value as given)
    seed: int
    path: Path  # the run directory
    config: ExperimentConfig


def _short_names(axes: Sequence[GridAxis]) -> dict[str, str]:
    epsilon_axes = [a.key for a in axes if a.key == EPSILONS_AXIS or a.key in EPSILON_KEYS]
    names = {}
    for axis in axes:
        if axis.key in epsilon_axes:
            names[axis.key] = "eps" if len(epsilon_axes) == 1 else f"eps_{EPSILON_KEYS.get(axis.key, 'all')}"
        else:
            names[axis.key] = axis.key.rsplit(".", 1)[-1]
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    return {k: (v if counts[v] == 1 else k) for k, v in names.items()}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "_"


def plan_sweep(
    config: ExperimentConfig, out: Path, axes: Sequence[GridAxis], seeds: Sequence[int] | None = None
) -> list[SweepPoint]:
    """Every run of the sweep, in order (points in grid order, seeds within a point), configs validated.

    Without ``seeds`` each point runs once at ``config.seed`` in ``out/<point>/``;
    with them, once per seed in ``out/<point>/seed-<s>/``. Every config is built
    before anything runs, so a bad value fails in a second.
    """
    short = _short_names(axes)
    runs = []
    for values in itertools.product(*(axis.values for axis in axes)):
        assignment = tuple((axis.key, value) for axis, value in zip(axes, values, strict=True))
        name = "_".join(f"{short[k]}-{_safe(v)}" for k, v in assignment) or "point"
        point = _point_config(config, assignment)
        for seed in seeds if seeds is not None else [config.seed]:
            path = out / name / f"seed-{seed}" if seeds is not None else out / name
            runs.append(SweepPoint(name, assignment, seed, path, replace_path(point, "seed", seed)))
    return runs


def run_or_resume(
    config: ExperimentConfig,
    path: Path,
    *,
    quiet: bool,
    other_config: Literal["trust", "refuse", "replace"] = "trust",
    ignore_name: bool = False,
    reuse: bool | Callable[[dict[str, Any]], bool] = True,
    resume: bool = True,
    experiment_hook: Callable[[Experiment], Experiment] | None = None,
    transport_hook: Callable[[Transport], Transport] | None = None,
    on_rerun: Callable[[Path], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` in the run directory ``path``, or reuse the finished run there, or resume it.

    The one federation driver of sweeps and attacks:

    - A finished run of the same config is reused (its summary returned) when ``reuse`` is true, or
      is a callable that accepts its summary (e.g. the attack's saved statistics still load).
    - An interrupted run of the same config is resumed when ``resume`` is true; with ``resume=False``
      (a run whose hooks are not recorded in the run directory) it is run again from scratch.
    - ``other_config`` says what a directory holding a run of another config is: ``"trust"`` (not
      compared; the default), ``"refuse"`` (``ConfigError`` naming the first differing keys) or
      ``"replace"`` (removed and run again). ``ignore_name`` compares configs without ``name`` (a label).
    - Otherwise ``config`` runs afresh into ``path`` (with the hooks of :func:`run_experiment`);
      anything left there is removed first when it is not resumed, and ``on_rerun(path)`` is told.

    Returns:
        the run's summary (``summary.json``).
    """
    run = RunDirectory(path)
    has_config = (path / RunDirectory.CONFIG).exists()
    same = True
    if has_config and other_config != "trust":
        differ = _config_differences(config, path, ignore_name=ignore_name)
        if differ and other_config == "refuse":
            raise ConfigError(
                f"{str(path)!r} holds a run of another config (differs at {', '.join(differ[:4])}); "
                "use another --out, or remove that directory to run it again"
            )
        same = not differ
    if same and run.is_completed():
        summary = dict(run.read_summary())
        if reuse is True or (callable(reuse) and reuse(summary)):
            return summary
    elif same and has_config and resume:
        return dict(resume_experiment(path, quiet=quiet))
    if path.exists() and (not resume or not same or has_config):
        if on_rerun is not None:
            on_rerun(path)
        shutil.rmtree(path)
    return dict(
        run_experiment(config, path, quiet=quiet, experiment_hook=experiment_hook, transport_hook=transport_hook)
    )


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _differences(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _config_differences(config: ExperimentConfig, path: Path, *, ignore_name: bool = False) -> list[str]:
    """Dotted keys at which the run in ``path`` was configured otherwise than ``config`` (``["<unreadable>"]``
    when its config does not load; ``[]`` when there is none)."""
    if not (path / RunDirectory.CONFIG).exists():
        return []
    try:
        saved = RunDirectory(path).load_config()
    except (PrivfedError, OSError):
        return ["<unreadable config>"]
    if ignore_name:
        saved = replace_path(saved, "name", config.name)
    return _differences(config_to_dict(saved), config_to_dict(config))


def run_sweep_point(
    config: ExperimentConfig, out: Path, epsilon: float | None = None, *, quiet: bool
) -> dict[str, Any]:
    """Run (or reuse a finished, or resume an interrupted) sweep run; its summary.

    With ``epsilon``, ``config`` is calibrated to it (:func:`sweep_config`) and runs in
    ``point_dir(out, epsilon)``; without, ``config`` runs as given in the run directory ``out``.
    A run stopped by its privacy budget counts as finished; a directory holding a run of another
    config is refused.
    """
    path = out if epsilon is None else point_dir(out, epsilon)
    cfg = config if epsilon is None else sweep_config(config, epsilon)
    try:
        return run_or_resume(cfg, path, quiet=quiet, other_config="refuse")
    except PrivacyBudgetExceeded:
        return dict(RunDirectory(path).read_summary())


class SeedInterval(TypedDict):
    """One metric across seeds in ``sweep.json`` (:func:`seed_interval`; in this key order)."""

    #: How many seeds reported the metric, and their values.
    n: int
    values: list[float]
    #: ``None`` without values; ``std`` and the interval ``None`` with fewer than two.
    mean: float | None
    std: float | None
    ci95_low: float | None
    ci95_high: float | None
    ci95_half_width: float | None


def seed_interval(values: Sequence[float | None]) -> SeedInterval:
    """Mean and 95% t-interval of one metric across seeds: ``mean ± t_{0.975, n-1} · s / √n``.

    ``None`` (a metric a run did not report) is left out. Fewer than two values give no
    interval (``ci95_low``/``ci95_high``/``ci95_half_width`` and ``std`` are ``None``).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    stats: SeedInterval = {
        "n": n,
        "values": xs,
        "mean": None,
        "std": None,
        "ci95_low": None,
        "ci95_high": None,
        "ci95_half_width": None,
    }
    if n == 0:
        return stats
    mean = math.fsum(xs) / n
    stats["mean"] = mean
    if n >= 2:
        from scipy.stats import t

        std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
        if std <= 1e-12 * max(abs(mean), 1.0):
            std = 0.0  # equal values up to rounding (an accountant's ε at one σ): no spread, not 1e-16
        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        stats |= {"std": std, "ci95_low": mean - half, "ci95_high": mean + half, "ci95_half_width": half}
    return stats


def run_sweep(
    config: ExperimentConfig,
    out: Path,
    epsilons: Sequence[float],
    *,
    quiet: bool,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The ``--epsilons`` shorthand: :func:`run_grid` over the target ε of every enabled level."""
    axes = [GridAxis(EPSILONS_AXIS, tuple(_label(e) for e in epsilons))]
    return run_grid(config, out, axes, quiet=quiet, seeds=seeds)


def _epsilon_text(point: SweepPoint) -> str:
    for key, value in point.assignment:
        if key == EPSILONS_AXIS or key in EPSILON_KEYS:
            return value
    privacy = point.config.privacy
    if privacy.mode == "none":
        return "inf"
    target = privacy.user.target_epsilon if privacy.user_level else privacy.sample.target_epsilon
    return f"{target:g}" if target > 0 else "σ given"


def run_grid(
    config: ExperimentConfig,
    out: Path,
    axes: Sequence[GridAxis],
    *,
    quiet: bool,
    seeds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Run (or reuse, or resume) every point of the grid at every seed; write tables, JSON and the plot.

    Returns one row per point: the grid values, ``seeds`` (how many runs), and per
    metric the mean (``<metric>``) and the interval (``<metric>_ci95``: half-width).
    """
    runs = plan_sweep(config, out, axes, seeds)
    out.mkdir(parents=True, exist_ok=True)
    summaries: list[dict[str, Any]] = []
    for k, run in enumerate(runs, start=1):
        others = "".join(
            f", {key}={value}" for key, value in run.assignment if key != EPSILONS_AXIS and key not in EPSILON_KEYS
        )
        print(f"point {k}/{len(runs)}: ε={_epsilon_text(run)}{others}, seed={run.seed}", flush=True)
        summaries.append(run_sweep_point(run.config, run.path, quiet=quiet))
    points = _aggregate(config, out, axes, runs, summaries, seeded=seeds is not None)
    rows = [_row(p) for p in points]
    _write_tables(axes, rows, out, seeded=seeds is not None)
    plot_privacy_utility(points, _plot_path(out, axes), title=config.name, meta=_meta(config, axes, runs))
    return rows


def _meta(base: ExperimentConfig, axes: Sequence[GridAxis], runs: Sequence[SweepPoint]) -> dict[str, Any]:
    """What the plot and the report need to label the ε axis: which axis, the privacy unit, δ."""
    epsilon_axis = next((a.key for a in axes if a.key == EPSILONS_AXIS or a.key in EPSILON_KEYS), None)
    if epsilon_axis in EPSILON_KEYS:
        unit = EPSILON_KEYS[epsilon_axis]
    else:
        unit = {"user": "user", "sample": "record", "both": "user and record"}.get(base.privacy.mode, "user")
    deltas = {r.config.privacy.delta for r in runs}
    return {
        "name": base.name,
        "epsilon_axis": epsilon_axis,
        "privacy_unit": unit,
        "delta": deltas.pop() if len(deltas) == 1 else None,
        "axes": [{"key": a.key, "values": list(a.values)} for a in axes],
    }


def _plot_path(out: Path, axes: Sequence[GridAxis]) -> Path:
    has_epsilon = any(a.key == EPSILONS_AXIS or a.key in EPSILON_KEYS for a in axes)
    return out / ("privacy_utility.png" if has_epsilon else "utility.png")


def _aggregate(
    base: ExperimentConfig,
    out: Path,
    axes: Sequence[GridAxis],
    runs: Sequence[SweepPoint],
    summaries: Sequence[Mapping[str, Any]],
    *,
    seeded: bool,
) -> list[dict[str, Any]]:
    """Per point: its runs and each metric's mean and 95% interval; writes sweep.json and results/<point>.json."""
    grouped: dict[str, list[tuple[SweepPoint, Mapping[str, Any]]]] = {}
    for run, summary in zip(runs, summaries, strict=True):
        grouped.setdefault(run.name, []).append((run, summary))
    points = []
    (out / "results").mkdir(parents=True, exist_ok=True)
    for name, members in grouped.items():
        first_run, first = members[0]
        point: dict[str, Any] = {
            "name": name,
            "assignment": dict(first_run.assignment),
            "target_epsilon": _epsilon_text(first_run),
            "privacy_mode": first.get("privacy_mode", first_run.config.privacy.mode),
            "runs": [
                {
                    "seed": run.seed,
                    "path": str(run.path.relative_to(out)),
                    "completed": bool(s.get("completed", True)),
                    "stopped": s.get("stopped"),
                    "rounds": s.get("rounds"),
                    **{m: s.get(m) for m in METRICS},
                }
                for run, s in members
            ],
            "stats": {m: seed_interval([s.get(m) for _, s in members]) for m in METRICS},
        }
        points.append(point)
        atomic_write_text(out / "results" / f"{name}.json", json.dumps(json_safe(point), indent=1) + "\n")
    manifest = {
        **_meta(base, axes, runs),
        "seeds": sorted({r.seed for r in runs}),
        "seed_dirs": seeded,
        "interval": "95% t-interval across seeds: mean ± t_{0.975,n-1}·s/√n (none with one seed)",
        "points": points,
    }
    atomic_write_text(out / SWEEP_FILE, json.dumps(json_safe(manifest), indent=1) + "\n")
    return points


def _row(point: Mapping[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in point["assignment"].items():
        if key == EPSILONS_AXIS or key in EPSILON_KEYS:
            value = float(value)  # a number, as callers of run_sweep have always had (inf = no DP)
        row["target_epsilon" if key == EPSILONS_AXIS else key] = value
    row["seeds"] = len(point["runs"])
    row["privacy_mode"] = point["privacy_mode"]
    for metric, stats in point["stats"].items():
        row[metric] = stats["mean"]
        row[f"{metric}_ci95"] = stats["ci95_half_width"]
    row["rounds"] = point["runs"][0]["rounds"]
    row["completed"] = all(r["completed"] for r in point["runs"])
    return row


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _write_tables(axes: Sequence[GridAxis], rows: list[dict[str, Any]], out: Path, *, seeded: bool) -> None:
    keys = ["target_epsilon" if a.key == EPSILONS_AXIS else a.key for a in axes]
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    columns = [*keys, "seeds", "privacy_mode"]
    for metric in metrics:
        columns += [metric, f"{metric}_ci95"]
    columns += ["rounds", "completed"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    atomic_write_text(out / "sweep.csv", buffer.getvalue())

    def cell(row: Mapping[str, Any], metric: str) -> str:
        mean, half = row.get(metric), row.get(f"{metric}_ci95")
        return _fmt(mean) if half is None else f"{_fmt(mean)} ± {half:.2g}"

    shown = [*keys, "seeds", "privacy_mode", *metrics, "rounds", "completed"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    for row in rows:
        cells = [cell(row, k) if k in metrics else _fmt(row.get(k)) for k in shown]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = max((int(r["seeds"]) for r in rows), default=1)
    note = (
        f"\nMetrics: mean ± half-width of the 95% t-interval across {seeds} seeds (mean ± t·s/√n).\n"
        if seeds >= 2
        else "\nOne seed per point: no interval across seeds (run with --seeds 0,1,2 for one).\n"
    )
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n" + note)


def _utility_metric(points: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    for metric, label in (
        ("final_eval_accuracy", "held-out accuracy"),
        ("final_eval_perplexity", "held-out perplexity"),
        ("final_eval_loss", "held-out loss (nats)"),
    ):
        if any(p["stats"][metric]["mean"] is not None for p in points):
            return metric, label
    return "final_eval_accuracy", "held-out accuracy"


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def plot_privacy_utility(
    points: Sequence[Mapping[str, Any]], path: Path, *, title: str = "", meta: Mapping[str, Any]
) -> list[Path]:
    """Utility against the ε axis (log scale), one line per combination of the other axes.

    Error bars and a light band are the 95% t-interval across seeds (none with one
    seed); a point at ε = inf (no DP) is a dashed horizontal line with its band;
    the majority-class rate is a dotted line. Without an ε axis the x axis is the
    first grid key. Writes ``path`` as PNG, PDF and SVG; the paths written.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    from privfed.plotting import epsilon_label, figure, place_legend, save

    metric, ylabel = _utility_metric(points)
    axes_keys = [a["key"] for a in meta.get("axes", [])]
    x_key = meta.get("epsilon_axis") or (axes_keys[0] if axes_keys else None)
    fig, ax = figure(width=5.2, height=3.2)
    series: dict[str, list[Mapping[str, Any]]] = {}
    for p in points:
        rest = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in p["assignment"].items() if k != x_key)
        series.setdefault(rest, []).append(p)
    epsilon_x = meta.get("epsilon_axis") is not None
    x_values = [p["assignment"].get(x_key, "") for p in points] if x_key else [""]
    numeric = all(_as_number(v) is not None for v in x_values)
    categories = list(dict.fromkeys(x_values))
    colors = [f"C{i % 10}" for i in range(len(series))]
    ticks: set[float] = set()
    for (label, members), color in zip(series.items(), colors, strict=True):
        name = label or ("DP" if epsilon_x else meta.get("name", "runs"))
        xs, ys, lo, hi = [], [], [], []
        for p in members:
            stats = p["stats"][metric]
            if stats["mean"] is None:
                continue
            raw_x = p["assignment"].get(x_key, "") if x_key else ""
            if epsilon_x and raw_x == "inf":
                ax.axhline(stats["mean"], linestyle="--", color=color, linewidth=1.0, label=f"{name}: no DP")
                if stats["ci95_low"] is not None:
                    ax.axhspan(stats["ci95_low"], stats["ci95_high"], color=color, alpha=0.07, linewidth=0)
                continue
            x = float(raw_x) if numeric and raw_x != "" else float(categories.index(raw_x))
            xs.append(x)
            ys.append(stats["mean"])
            has_ci = stats["ci95_low"] is not None
            lo.append(stats["ci95_low"] if has_ci else stats["mean"])
            hi.append(stats["ci95_high"] if has_ci else stats["mean"])
        if not xs:
            continue
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        xs, ys, lo, hi = ([seq[i] for i in order] for seq in (xs, ys, lo, hi))
        ticks.update(xs)
        yerr = [[y - low for y, low in zip(ys, lo, strict=True)], [high - y for y, high in zip(ys, hi, strict=True)]]
        with_ci = any(e > 0 for e in yerr[0] + yerr[1])
        ax.errorbar(
            xs,
            ys,
            yerr=yerr if with_ci else None,
            marker="o",
            markersize=4,
            capsize=3,
            color=color,
            label=name + (" (mean, 95% CI)" if with_ci else ""),
        )
        if with_ci:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    majority = next(
        (p["stats"]["majority_class_rate"]["mean"] for p in points if p["stats"]["majority_class_rate"]["mean"]),
        None,
    )
    if majority is not None and metric == "final_eval_accuracy":
        ax.axhline(majority, linestyle=":", color="black", linewidth=1.0, label="majority class")
    if epsilon_x:
        ax.set_xscale("log")
        ax.set_xlabel(epsilon_label(unit=str(meta.get("privacy_unit", "user")), delta=meta.get("delta"), target=True))
    elif x_key:
        ax.set_xlabel(x_key if numeric else f"{x_key} (category)")
    if ticks and (epsilon_x or not numeric):
        ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
        ax.xaxis.set_minor_locator(NullLocator())
        labels = [f"{t:g}" for t in sorted(ticks)] if numeric else [categories[int(t)] for t in sorted(ticks)]
        ax.set_xticklabels(labels)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{'privacy-utility' if epsilon_x else 'utility'}: {title}".rstrip(": "))
    place_legend(ax)
    return save(fig, path)
