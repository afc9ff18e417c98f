"""Experiments: run directories, the round loop, resume.

Importing ``privfed.experiments`` (or a light module inside it, such as
``privfed.experiments.plan``, which ``privfed validate`` uses) is cheap: the round
loop in ``privfed.experiments.runner`` loads torch, transformers and opacus, so each
public name is imported from its module the first time it is used (PEP 562 module
``__getattr__``, as in ``privfed/__init__.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privfed._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
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

_SOURCES: dict[str, tuple[str, ...]] = {
    "privfed.experiments.provenance": ("Provenance", "collect_provenance", "diff_provenance"),
    "privfed.experiments.records": ("RoundMetrics", "RunSummary"),
    "privfed.experiments.reproduce": ("short_value", "verdict_lines"),
    "privfed.experiments.run_dir": ("Checkpoint", "RunDirectory", "atomic_write_bytes", "atomic_write_text"),
    "privfed.experiments.runner": ("Experiment", "build_experiment", "resume_experiment", "run_experiment"),
    "privfed.experiments.sweep": ("run_or_resume", "sweep_config"),
}
_EXPORTS: dict[str, str] = {name: module for module, names in _SOURCES.items() for name in names}

if not TYPE_CHECKING:  # type checkers see the imports above; at run time names load on first use
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
