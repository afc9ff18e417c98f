"""User-level DP-FedAvg: privacy-utility against clients per round.

    python examples/cohort_curve.py configs/cohort_tweets.toml --cohorts 10,50,200 --out runs/cohorts
    python examples/cohort_curve.py configs/cohort_tweets.toml --dry-run     # tiny model, seconds

For each cohort size E the config runs twice: without DP and with user-level
DP-FedAvg calibrated to the config's ``privacy.user.target_epsilon`` (the
population and rounds fixed, so the sampling rate is E/N). The noise on the
averaged update is sigma*C/E, so utility approaches the non-private run as E
grows; the script reports the smallest E within 3 accuracy points. Writes
``cohorts.csv``, ``cohorts.md`` and ``cohorts.png``; finished runs are reused.
"""

from __future__ import annotations

import argparse
import csv
import math
import tempfile
from pathlib import Path
from typing import Any

from privfed import load_config
from privfed.config import ExperimentConfig, replace_path
from privfed.experiments import run_or_resume, sweep_config


def cohort_run_config(config: ExperimentConfig, cohort: int, *, private: bool) -> ExperimentConfig:
    """``config`` with ``cohort`` clients per round, DP at its target epsilon or off."""
    base = replace_path(config, "server.clients_per_round", cohort)
    return sweep_config(base, config.privacy.user.target_epsilon if private else math.inf)


def cohort_run_dir(out: Path, config: ExperimentConfig, cohort: int, *, private: bool) -> Path:
    """Where the cohort curve keeps that run."""
    return out / (f"E{cohort}-eps{config.privacy.user.target_epsilon:g}" if private else f"E{cohort}-nodp")


def cohort_curve(config: ExperimentConfig, cohorts: list[int], out: Path) -> list[dict[str, Any]]:
    """One non-private and one DP run per cohort size; returns the table rows."""
    target = config.privacy.user.target_epsilon
    rows = []
    for cohort in cohorts:
        plain, private = (
            run_or_resume(
                cohort_run_config(config, cohort, private=p), cohort_run_dir(out, config, cohort, private=p), quiet=True
            )
            for p in (False, True)
        )
        rows.append(
            {
                "clients_per_round": cohort,
                "sample_rate": cohort / config.partition.num_clients,
                "accuracy_nodp": plain.get("final_eval_accuracy"),
                "accuracy_dp": private.get("final_eval_accuracy"),
                "epsilon": private.get("epsilon_user"),
                "noise_multiplier": private.get("user_noise_multiplier"),
                "gap_points": 100 * (plain["final_eval_accuracy"] - private["final_eval_accuracy"]),
            }
        )
        print(rows[-1], flush=True)
    with (out / "cohorts.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    within = [r["clients_per_round"] for r in rows if r["gap_points"] <= 3.0]
    lines.append("")
    lines.append(f"smallest cohort within 3 points at epsilon={target:g}: {min(within) if within else 'none tried'}")
    (out / "cohorts.md").write_text("\n".join(lines) + "\n")
    from privfed.plotting import figure, place_legend, save

    fig, ax = figure(width=5.0)
    xs = [r["clients_per_round"] for r in rows]
    delta = config.privacy.delta
    ax.plot(xs, [100 * r["accuracy_nodp"] for r in rows], "o-", label="no DP")
    ax.plot(xs, [100 * r["accuracy_dp"] for r in rows], "s-", label=f"user-level DP, ε = {target:g} (δ = {delta:.3g})")
    ax.plot(xs, [100 * r["accuracy_nodp"] - 3 for r in rows], ":", color="gray", label="no DP − 3 points")
    ax.set_xscale("log")
    ax.set_xlabel(f"clients per round (expected cohort, of {config.partition.num_clients})")
    ax.set_ylabel("held-out accuracy (%)")
    place_legend(ax)
    save(fig, out / "cohorts.png")  # also cohorts.pdf and cohorts.svg
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--cohorts", default="10,50,200", help="comma-separated clients per round")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny model and data, seconds")
    args = parser.parse_args()
    config = load_config(args.config)
    cohorts = [int(c) for c in args.cohorts.split(",")]
    if config.privacy.mode != "user" or not config.privacy.user.target_epsilon:
        raise SystemExit("cohort_curve needs privacy.mode = 'user' and privacy.user.target_epsilon")
    if args.dry_run:
        for dotted, value in (
            ("model.name", "tiny-bert"),
            ("model.device", "cpu"),
            ("data.max_train_examples", 300),
            ("data.max_eval_examples", 60),
            ("server.clients_per_round", 3),
            ("partition.num_clients", 30),
            ("server.rounds", 2),
        ):
            config = replace_path(config, dotted, value)
        cohorts = [3, 10]
    out = args.out or (Path(tempfile.mkdtemp()) if args.dry_run else Path("runs") / f"{args.config.stem}-cohorts")
    out.mkdir(parents=True, exist_ok=True)
    cohort_curve(config, cohorts, out)
    print((out / "cohorts.md").read_text(), end="")


if __name__ == "__main__":
    main()
