"""Run many privfed experiments side by side on one (GPU) machine, within a deadline.

    python scripts/device_grid.py --out DIR [--procs 8] [--stop-starting SECONDS] [--hard-stop SECONDS]
    python scripts/device_grid.py --list
    python scripts/device_grid.py --out /tmp/grid --dry-run --procs 2   # tiny model on the CPU

Developer tooling for a lent GPU session (README, "On a GPU"): each job is
one run directory -- a point of a privacy sweep (``DIR/<variant>/eps-<e>``,
the layout ``privfed sweep`` reuses) or of the cohort curve
(``DIR/cohorts/E<n>-...``, the layout ``examples/cohort_curve.py`` reuses) --
trained in its own process, ``--procs`` at a time, in the priority order of
``JOBS``. No job starts after ``--stop-starting`` seconds; jobs still running
at ``--hard-stop`` are killed (their metrics so far stay in their run
directory). Afterwards, every complete sweep and the cohort curve are
assembled into their tables and plots by the same code the CLI uses, and
``recipes.png`` puts every complete sweep on one privacy-utility plot.
``--second`` runs the second batch (``SECOND``), chosen after the first;
``--only 2,3`` a subset. Exits 1 if a job failed, was killed or never started.
The README's GPU figures: ``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` (TF32 matmuls).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

# (variant name, base config, overrides applied together) -> swept over EPSILONS.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "local-adamw": ("configs/dp_tweets_gpu.toml", {}),
    "fedadam": ("configs/dp_tweets_gpu_fedadam.toml", {}),
    "local-adamw-lr5e-3": ("configs/dp_tweets_gpu.toml", {"client.learning_rate": 0.005}),
    "local-adamw-q0.2": ("configs/dp_tweets_gpu.toml", {"client.sampling_rate": 0.2}),
    "fedadam-lr5e-3": ("configs/dp_tweets_gpu_fedadam.toml", {"server.learning_rate": 0.005}),
    "local-adamw-40rounds": ("configs/dp_tweets_gpu.toml", {"server.rounds": 40, "eval.every": 10}),
    # Second batch (after the first showed FedAdam ahead): larger Poisson rate at about the same
    # compute (sigma/q falls from 10.0 to 5.4 at eps = 8), and a lower server learning rate.
    "fedadam-q0.3": (
        "configs/dp_tweets_gpu_fedadam.toml",
        {"client.sampling_rate": 0.3, "server.rounds": 50, "eval.every": 10},
    ),
    "fedadam-lr1e-3": ("configs/dp_tweets_gpu_fedadam.toml", {"server.learning_rate": 0.001}),
}
COHORT_CONFIG = "configs/cohort_tweets_gpu.toml"
COHORTS = (10, 50, 200, 1000)

# Priority order: the long cohort runs first (many small steps, they take longest), then
# the two main sweeps, the smaller cohorts, and the variants at eps = 8 before their twins.
JOBS: list[tuple[str, Any, Any]] = [
    ("cohort", 1000, True),
    ("cohort", 1000, False),
    ("sweep", "local-adamw", 8.0),
    ("sweep", "local-adamw", math.inf),
    ("sweep", "local-adamw", 1.0),
    ("sweep", "fedadam", 8.0),
    ("sweep", "fedadam", math.inf),
    ("sweep", "fedadam", 1.0),
    ("cohort", 200, True),
    ("cohort", 200, False),
    ("cohort", 50, True),
    ("cohort", 50, False),
    ("cohort", 10, True),
    ("cohort", 10, False),
    ("sweep", "local-adamw-lr5e-3", 8.0),
    ("sweep", "local-adamw-q0.2", 8.0),
    ("sweep", "fedadam-lr5e-3", 8.0),
    ("sweep", "local-adamw-40rounds", 8.0),
    ("sweep", "local-adamw-lr5e-3", math.inf),
    ("sweep", "local-adamw-q0.2", math.inf),
    ("sweep", "fedadam-lr5e-3", math.inf),
    ("sweep", "local-adamw-40rounds", math.inf),
]
SECOND: list[tuple[str, Any, Any]] = [
    ("sweep", "fedadam-q0.3", 8.0),
    ("sweep", "fedadam-q0.3", math.inf),
    ("sweep", "fedadam-q0.3", 1.0),
    ("sweep", "fedadam-lr1e-3", 8.0),
    ("sweep", "fedadam-lr1e-3", math.inf),
]
if os.environ.get("PRIVFED_GRID_SECOND"):
    JOBS = SECOND


# --dry-run: the same jobs on the tiny model, on the CPU, in seconds (to check this script).
DRY_RUN = {
    "model.name": "tiny-bert",
    "model.device": "cpu",
    "data.max_train_examples": 4000,
    "data.max_eval_examples": 100,
    "partition.min_examples_per_client": 2,
    "server.rounds": 2,
    "eval.every": 1,
}


def _load(path: str, overrides: dict[str, Any]) -> Any:
    from privfed import load_config
    from privfed.config import replace_paths

    config = load_config(ROOT / path)
    if os.environ.get("PRIVFED_GRID_DRY_RUN"):
        overrides = {**overrides, **DRY_RUN}
    return replace_paths(config, overrides) if overrides else config


def _variant_config(name: str) -> Any:
    path, overrides = VARIANTS[name]
    return _load(path, overrides)


def _cohort_config() -> Any:
    return _load(COHORT_CONFIG, {})


def run_job(index: int, out: Path) -> None:
    """Train job ``index`` (in this process)."""
    from cohort_curve import cohort_run_config, cohort_run_dir

    from privfed.experiments.sweep import run_or_resume, run_sweep_point

    kind, a, b = JOBS[index]
    if kind == "sweep":
        run_sweep_point(_variant_config(a), out / a, b, quiet=True)
    else:
        base = _cohort_config()
        run_or_resume(
            cohort_run_config(base, a, private=b), cohort_run_dir(out / "cohorts", base, a, private=b), quiet=True
        )


def assemble(out: Path) -> dict[str, Any]:
    """Tables and plots for every complete sweep and the finished cohort points."""
    from cohort_curve import cohort_curve, cohort_run_dir

    from privfed import RunDirectory
    from privfed.experiments.sweep import point_dir, run_sweep

    def done(path: Path) -> bool:
        return RunDirectory(path).is_completed()

    report: dict[str, Any] = {}
    for name in VARIANTS:
        eps = [e for kind, v, e in JOBS if kind == "sweep" and v == name]
        finished = [e for e in eps if done(point_dir(out / name, e))]
        if finished:
            rows = run_sweep(_variant_config(name), out / name, sorted(finished), quiet=True)
            report[name] = rows
    if report:
        plot_recipes(report, out / "recipes.png")
    base = _cohort_config()
    cohorts = [
        c for c in COHORTS if all(done(cohort_run_dir(out / "cohorts", base, c, private=p)) for p in (True, False))
    ]
    if cohorts:
        report["cohorts"] = cohort_curve(base, cohorts, out / "cohorts")
    return report


def plot_recipes(report: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Every complete sweep on one privacy-utility plot: DP points, the recipe's no-DP level dashed.

    Written with :mod:`privfed.plotting` (PNG, PDF and SVG beside it).
    """
    from privfed.plotting import epsilon_label, figure, place_legend, save

    fig, ax = figure(width=6.4, height=4.2)
    for i, (name, rows) in enumerate(sorted(report.items())):
        color = f"C{i}"
        dp = sorted(
            (r["target_epsilon"], 100 * r["final_eval_accuracy"]) for r in rows if math.isfinite(r["target_epsilon"])
        )
        plain = [100 * r["final_eval_accuracy"] for r in rows if not math.isfinite(r["target_epsilon"])]
        if dp:
            ax.plot(*zip(*dp, strict=True), "o-", color=color, label=name)
        if plain:
            ax.axhline(plain[0], color=color, linestyle="--", linewidth=1)
    majority = next(iter(report.values()))[0].get("majority_class_rate")
    if majority:
        ax.axhline(100 * majority, color="black", linestyle=":", linewidth=1, label="majority class")
    ax.set_xscale("log")
    ticks = sorted(
        {r["target_epsilon"] for rows in report.values() for r in rows if math.isfinite(r["target_epsilon"])}
    )
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(epsilon_label(unit="record", delta=1e-5, target=True) + ", per client")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title("DP-SGD recipes (dashed: the same recipe without DP)")
    place_legend(ax)
    save(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--stop-starting", type=float, default=300.0)
    parser.add_argument("--hard-stop", type=float, default=420.0)
    parser.add_argument("--job", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="print the jobs and exit")
    parser.add_argument("--assemble-only", action="store_true", help="only write tables and plots")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU, to check the script")
    parser.add_argument("--second", action="store_true", help="the second batch of jobs (SECOND)")
    parser.add_argument("--only", default="", help="comma-separated job numbers (see --list); default all")
    args = parser.parse_args()
    if args.second and not os.environ.get("PRIVFED_GRID_SECOND"):
        os.environ["PRIVFED_GRID_SECOND"] = "1"  # inherited by the job processes
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.dry_run:
        os.environ["PRIVFED_GRID_DRY_RUN"] = "1"  # inherited by the job processes
    if args.list:
        for i, job in enumerate(JOBS):
            print(i, *job)
        return
    if args.out is None:
        parser.error("--out is required")
    if args.job is not None:
        run_job(args.job, args.out)
        return
    if args.procs < 1 or args.hard_stop < args.stop_starting:
        parser.error("--procs must be >= 1 and --hard-stop >= --stop-starting")
    try:
        chosen = [int(j) for j in args.only.split(",") if j.strip()] or list(range(len(JOBS)))
    except ValueError:
        parser.error(f"--only: job numbers separated by commas, got {args.only!r}")
    if not all(0 <= j < len(JOBS) for j in chosen):
        parser.error(f"--only: job numbers are 0..{len(JOBS) - 1} (see --list)")
    pending = list(dict.fromkeys(chosen))  # each job once, in the order given
    args.out.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    if not args.assemble_only:
        log = run_jobs(pending, args.out, procs=args.procs, stop_starting=args.stop_starting, hard_stop=args.hard_stop)
    report = assemble(args.out)
    grid = args.out / "grid.json"
    if args.assemble_only and grid.exists():  # keep the job log of the run that trained them
        log = json.loads(grid.read_text()).get("jobs", [])
    grid.write_text(json.dumps({"jobs": log, "results": report}, indent=1, default=str))
    print(json.dumps(report, default=str)[:4000])
    if any(entry["rc"] != 0 for entry in log):
        sys.exit(1)


def run_jobs(
    pending: list[int], out: Path, *, procs: int, stop_starting: float, hard_stop: float
) -> list[dict[str, Any]]:
    """Run the jobs ``procs`` at a time; a log entry per job (``rc``: exit code, "killed", "not started")."""
    start = time.monotonic()
    pending = list(pending)
    running: dict[int, tuple[subprocess.Popen[bytes], float]] = {}
    log: list[dict[str, Any]] = []

    def finish(index: int, rc: Any, began: float) -> None:
        log.append({"job": JOBS[index], "rc": rc, "seconds": round(time.monotonic() - start - began, 1)})
        print(json.dumps(log[-1], default=str), flush=True)
        del running[index]

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` stops us: clean up below
    try:
        while pending or running:
            now = time.monotonic() - start
            for index, (proc, began) in list(running.items()):
                if proc.poll() is not None:
                    finish(index, proc.returncode, began)
                elif now > hard_stop:
                    proc.kill()
                    proc.wait()
                    finish(index, "killed", began)
            if now > stop_starting:
                log.extend({"job": JOBS[index], "rc": "not started"} for index in pending)
                pending = []
            while pending and len(running) < procs:
                index = pending.pop(0)
                with (out / f"job{index:02d}.log").open("wb") as handle:
                    proc = subprocess.Popen(
                        [sys.executable, __file__, "--out", str(out), "--job", str(index)],
                        stdout=handle,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "OMP_NUM_THREADS": "2"},
                    )
                running[index] = (proc, now)
            time.sleep(1.0)
    finally:  # an exception or Ctrl-C here must not leave jobs holding the GPU
        for proc, _ in running.values():
            proc.kill()
            proc.wait()
    return log


if __name__ == "__main__":
    main()
