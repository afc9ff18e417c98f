"""Experiments: run directories, the round loop, resume."""

from privfed.experiments.provenance import Provenance, collect_provenance, diff_provenance
from privfed.experiments.records import RoundMetrics, RunSummary
from privfed.experiments.reproduce import short_value, verdict_lines
from privfed.experiments.run_dir import Checkpoint, RunDirectory, atomic_write_bytes, atomic_write_text
from privfed.experiments.runner import Experiment, build_experiment, resume_experiment, run_experiment
from privfed.experiments.sweep import run_or_resume, sweep_config

__all__ = [
    "Checkpoint",
    "Experiment",
    "Provenance",
    "RoundMetrics",
    "RunDirectory",
    "RunSummary",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_experiment",
    "collect_provenance",
    "diff_provenance",
    "resume_experiment",
    "run_experiment",
    "run_or_resume",
    "short_value",
    "sweep_config",
    "verdict_lines",
]
