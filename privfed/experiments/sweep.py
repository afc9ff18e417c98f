"""Privacy-utility sweeps: the same experiment at several target epsilons.

``privfed sweep CONFIG.toml --epsilons 1,3,8,inf`` runs the config once per
epsilon (``inf`` = no DP) in ``OUT/eps-<value>/``, reusing finished runs and
resuming interrupted ones, then writes ``sweep.csv``, ``sweep.md`` and the
plot ``privacy_utility.png``. Scoring and plotting are separate: the table is
built from the runs' ``summary.json`` files.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from privfed.config import ExperimentConfig, replace_path, replace_paths
from privfed.errors import ConfigError, PrivacyBudgetExceeded
from privfed.experiments.run_dir import RunDirectory, atomic_write_text
from privfed.experiments.runner import resume_experiment, run_experiment

__all__ = [
    "parse_epsilons",
    "plot_privacy_utility",
    "point_dir",
    "run_or_resume",
    "run_sweep",
    "run_sweep_point",
    "sweep_config",
]

COLUMNS = (
    "target_epsilon",
    "privacy_mode",
    "epsilon_user",
    "epsilon_sample_max",
    "user_noise_multiplier",
    "sample_noise_multiplier",
    "final_eval_accuracy",
    "final_eval_loss",
    "majority_class_rate",
    "rounds",
    "completed",
)


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
    """The run directory of ``epsilon``'s point in a sweep written to ``out``."""
    return out / f"eps-{_label(epsilon)}"


def run_or_resume(config: ExperimentConfig, path: Path, *, quiet: bool) -> dict[str, Any]:
    """The summary of a finished run in ``path``; else resume the interrupted one there,
    or run ``config`` into it afresh."""
    run = RunDirectory(path)
    if run.is_completed():
        return run.read_summary()
    if (path / RunDirectory.CONFIG).exists():
        return resume_experiment(path, quiet=quiet)
    return run_experiment(config, path, quiet=quiet)


def run_sweep_point(config: ExperimentConfig, out: Path, epsilon: float, *, quiet: bool) -> dict[str, Any]:
    """Run (or reuse a finished, or resume an interrupted) sweep point; its summary."""
    path = point_dir(out, epsilon)
    cfg = sweep_config(config, epsilon)
    try:
        return run_or_resume(cfg, path, quiet=quiet)
    except PrivacyBudgetExceeded:
        return RunDirectory(path).read_summary()


def run_sweep(config: ExperimentConfig, out: Path, epsilons: Sequence[float], *, quiet: bool) -> list[dict[str, Any]]:
    """Run (or reuse, or resume) one experiment per epsilon; write the table and the plot."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, epsilon in enumerate(epsilons, start=1):
        print(f"point {k}/{len(epsilons)}: ε={_label(epsilon)}, seed={config.seed}", flush=True)
        summary = run_sweep_point(config, out, epsilon, quiet=quiet)
        row = {key: summary.get(key) for key in COLUMNS if key != "target_epsilon"}
        row["target_epsilon"] = epsilon
        rows.append(row)
    _write_tables(rows, out)
    plot_privacy_utility(rows, out / "privacy_utility.png", title=config.name)
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    atomic_write_text(out / "sweep.csv", buffer.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(row.get(k)) for k in COLUMNS) + " |" for row in rows]
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")


def plot_privacy_utility(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> None:
    """Accuracy against target epsilon (log scale); the non-private run is a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r for r in rows if not math.isinf(r["target_epsilon"]) and r.get("final_eval_accuracy") is not None]
    private = sorted(finite, key=lambda r: r["target_epsilon"])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if private:
        ax.plot(
            [r["target_epsilon"] for r in private],
            [r["final_eval_accuracy"] for r in private],
            marker="o",
            label="DP (target epsilon)",
        )
    for r in rows:
        if math.isinf(r["target_epsilon"]) and r.get("final_eval_accuracy") is not None:
            ax.axhline(r["final_eval_accuracy"], linestyle="--", color="gray", label="no DP")
    majority = next((r["majority_class_rate"] for r in rows if r.get("majority_class_rate") is not None), None)
    if majority is not None:
        ax.axhline(majority, linestyle=":", color="black", label="majority class")
    ax.set_xscale("log")
    if private:
        from matplotlib.ticker import FixedLocator, NullLocator

        ax.xaxis.set_major_locator(FixedLocator([r["target_epsilon"] for r in private]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{r['target_epsilon']:g}" for r in private])
    ax.set_xlabel("epsilon (log scale)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(f"privacy-utility {title}".strip())
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
