"""``privfed reproduce``: re-run a finished run from its resolved config and compare, round by round.

Where the provenance of the two runs matches (code, package versions,
hardware, data and model fingerprints), privfed's runs are deterministic and
the metrics must be identical; anything else is reported. Where it does not
match, the report lists what differs and how far each metric moved, so a
reader can tell a dependency's change from a code change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from privfed.experiments.provenance import diff_provenance
from privfed.experiments.run_dir import RunDirectory

__all__ = [
    "MetricDrift",
    "ReproduceReport",
    "compare_runs",
    "format_report",
    "reproduce",
    "short_value",
    "verdict_lines",
]

#: Wall-clock fields: they differ between any two runs and say nothing about the result.
_TIMING_PREFIX = "seconds"


@dataclasses.dataclass(frozen=True)
class MetricDrift:
    """How far one metric moved between the original run and the re-run.

    Attributes:
        metric: the ``metrics.jsonl`` field.
        rounds_differing: rounds on which the two values are not identical.
        first_round: the first such round.
        max_abs_diff: the largest absolute difference over rounds (``inf`` when one
            side is missing or non-numeric values differ).
        original_final / rerun_final: the metric on the last compared round.
    """

    metric: str
    rounds_differing: int
    first_round: int
    max_abs_diff: float
    original_final: Any
    rerun_final: Any


@dataclasses.dataclass(frozen=True)
class ReproduceReport:
    """The comparison of a run with its re-run.

    Attributes:
        original / rerun: the two run directories.
        rounds_compared: rounds present in both ``metrics.jsonl``.
        rounds_missing: rounds present in only one of them.
        provenance_diffs: ``(field, original, rerun)`` for every provenance field that differs.
        drifts: metrics that are not identical on every round.
    """

    original: Path
    rerun: Path
    rounds_compared: int
    rounds_missing: int
    provenance_diffs: tuple[tuple[str, Any, Any], ...]
    drifts: tuple[MetricDrift, ...]

    @property
    def identical(self) -> bool:
        """Every compared metric is identical on every round, and no round is missing."""
        return not self.drifts and not self.rounds_missing and self.rounds_compared > 0

    @property
    def same_provenance(self) -> bool:
        return not self.provenance_diffs


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _distance(a: Any, b: Any) -> float:
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b))
    return math.inf


def _drifts(original: Sequence[Mapping[str, Any]], rerun: Sequence[Mapping[str, Any]]) -> list[MetricDrift]:
    by_round_a = {int(r["round"]): r for r in original}
    by_round_b = {int(r["round"]): r for r in rerun}
    rounds = sorted(set(by_round_a) & set(by_round_b))
    metrics = sorted({k for r in original for k in r} | {k for r in rerun for k in r}, key=lambda k: (k != "round", k))
    out = []
    for metric in metrics:
        if metric.startswith(_TIMING_PREFIX):
            continue
        differing = [rnd for rnd in rounds if not _same(by_round_a[rnd].get(metric), by_round_b[rnd].get(metric))]
        if not differing:
            continue
        last = rounds[-1]
        out.append(
            MetricDrift(
                metric=metric,
                rounds_differing=len(differing),
                first_round=differing[0],
                max_abs_diff=max(_distance(by_round_a[r].get(metric), by_round_b[r].get(metric)) for r in differing),
                original_final=by_round_a[last].get(metric),
                rerun_final=by_round_b[last].get(metric),
            )
        )
    return out


def compare_runs(original: str | Path, rerun: str | Path) -> ReproduceReport:
    """Compare two finished run directories round by round (metrics) and field by field (provenance)."""
    a, b = RunDirectory(original), RunDirectory(rerun)
    records_a, records_b = a.read_metrics(), b.read_metrics()
    rounds_a = {int(r["round"]) for r in records_a}
    rounds_b = {int(r["round"]) for r in records_b}
    prov_a = a.read_summary().get("provenance") or {}
    prov_b = b.read_summary().get("provenance") or {}
    return ReproduceReport(
        original=a.path,
        rerun=b.path,
        rounds_compared=len(rounds_a & rounds_b),
        rounds_missing=len(rounds_a ^ rounds_b),
        provenance_diffs=tuple(diff_provenance(prov_a, prov_b)),
        drifts=tuple(_drifts(records_a, records_b)),
    )


def short_value(value: Any) -> str:
    """A value as a report cell: floats to 6 significant digits, at most 40 characters."""
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


_short = short_value


def verdict_lines(
    *,
    identical: bool,
    provenance_diffs: tuple[tuple[str, Any, Any], ...],
    all_equal: str,
    equal_but: str,
) -> list[str]:
    """The verdict and provenance table every reproduce report starts with.

    Args:
        identical: every compared value is equal.
        provenance_diffs: ``(field, original, re-run)`` for each provenance field that differs.
        all_equal: what matched, for the all-equal verdict ("3 rounds, every metric equal").
        equal_but: the verdict when the values match but the provenance does not
            ("IDENTICAL METRICS: 3 rounds equal").
    """
    if identical and not provenance_diffs:
        return [f"IDENTICAL: {all_equal}, same provenance"]
    if identical:
        lines = [f"{equal_but}, although the provenance differs:"]
    elif not provenance_diffs:
        lines = ["DIFFERENT although the provenance matches (non-determinism, or a change it does not record):"]
    else:
        lines = ["DIFFERENT; the provenance differs in:"]
    if provenance_diffs:
        lines.append(f"  {'field':<40} {'original':<42} re-run")
        lines.extend(f"  {f:<40} {_short(x):<42} {_short(y)}" for f, x, y in provenance_diffs)
    return lines


def format_report(report: ReproduceReport) -> str:
    """A plain-text report: verdict, provenance differences, metric drifts."""
    lines = [f"original: {report.original}", f"re-run:   {report.rerun}"]
    lines += verdict_lines(
        identical=report.identical,
        provenance_diffs=report.provenance_diffs,
        all_equal=f"{report.rounds_compared} rounds, every metric equal",
        equal_but=f"IDENTICAL METRICS: {report.rounds_compared} rounds equal",
    )
    if report.identical and report.same_provenance:
        return "\n".join(lines)
    if report.rounds_missing:
        lines.append(f"  {report.rounds_missing} round(s) present in only one of the runs")
    if report.drifts:
        header = ("metric", "rounds", "first", "max |diff|", "original (last)", "re-run (last)")
        lines.append("  {:<24} {:>6} {:>5} {:>12} {:>16} {:>16}".format(*header))
        lines.extend(
            f"  {d.metric:<24} {d.rounds_differing:>6} {d.first_round:>5} {d.max_abs_diff:>12.4g} "
            f"{_short(d.original_final):>16} {_short(d.rerun_final):>16}"
            for d in report.drifts
        )
    return "\n".join(lines)


def reproduce(original: str | Path, *, out: str | Path, quiet: bool = False) -> ReproduceReport:
    """Re-run the finished run ``original`` from its ``config.resolved.toml`` into ``out`` and compare.

    Raises:
        CheckpointError: ``original`` is not a finished run directory.
    """
    from privfed.errors import CheckpointError
    from privfed.experiments.runner import run_experiment

    source = RunDirectory(original)
    if not source.is_completed():
        raise CheckpointError(f"{source.path} is not a finished run (no completed summary.json)")
    config = source.load_config()
    run_experiment(config, out, quiet=quiet)
    return compare_runs(source.path, out)
