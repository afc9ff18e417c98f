"""``privfed reproduce DIR`` for attack and audit directories: re-run the same command, compare field by field.

An attack/audit directory holds its result file and the config it was run from
(:mod:`attacks.provenance`): ``audit_results.json`` + ``audit.toml``,
``membership_results.json`` + ``membership.toml``, ``exposure_results.json`` +
``exposure.toml``, ``inversion_results.json`` + ``inversion.toml``. The re-run is
``privfed <command> <kind>.toml --out NEW``; the two result files are compared
record by record (audit records by ``run``, membership by ``variant``, inversion
by their configuration) and field by field: a number identical or its absolute
difference, anything else equal or not. Provenance differences are listed as for
runs (:func:`privfed.experiments.diff_provenance`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attacks.provenance import CONFIG_FILES, RESULT_FILES, read_attack_provenance
from privfed.errors import CheckpointError
from privfed.experiments import diff_provenance, verdict_lines
from privfed.experiments import short_value as _short

__all__ = [
    "AttackReproduceReport",
    "FieldDrift",
    "attack_kind",
    "compare_attacks",
    "format_attack_report",
    "reproduce_attack",
]

#: The ``privfed`` command line of each kind of directory (the config file and ``--out`` follow).
_COMMANDS = {
    "audit": ["audit"],
    "membership": ["attack", "membership"],
    "exposure": ["attack", "exposure"],
    "inversion": ["attack", "inversion"],
}
# How records of a list are matched between the two files.
_RECORD_KEYS = {
    "audit": ("run",),
    "membership": ("variant",),
    "inversion": ("modality", "target", "rank", "batch_size", "noise_multiplier", "secagg_clients", "quant_bits"),
}
#: Wall-clock fields: they differ between any two runs and say nothing about the result.
_TIMING = ("seconds",)


@dataclasses.dataclass(frozen=True)
class FieldDrift:
    """One result field that is not identical in the re-run.

    Attributes:
        field: the record and field, e.g. ``run=1.auc`` or ``secrets[2].exposure_after``.
        original / rerun: the two values (``None`` where a side lacks the field).
        abs_diff: ``|original - rerun|`` for numbers, ``inf`` otherwise.
    """

    field: str
    original: Any
    rerun: Any
    abs_diff: float


@dataclasses.dataclass(frozen=True)
class AttackReproduceReport:
    """The comparison of an attack/audit directory with its re-run.

    Attributes:
        kind: ``audit``, ``membership``, ``exposure`` or ``inversion``.
        original / rerun: the two directories.
        fields_compared: result fields present in either file (provenance and timings excluded).
        provenance_diffs: ``(field, original, rerun)`` for every provenance field that differs.
        drifts: result fields that are not identical.
    """

    kind: str
    original: Path
    rerun: Path
    fields_compared: int
    provenance_diffs: tuple[tuple[str, Any, Any], ...]
    drifts: tuple[FieldDrift, ...]

    @property
    def identical(self) -> bool:
        """Every result field is identical (and there was something to compare)."""
        return not self.drifts and self.fields_compared > 0

    @property
    def same_provenance(self) -> bool:
        return not self.provenance_diffs


def attack_kind(path: Path) -> str | None:
    """The kind of attack/audit directory ``path`` is (its result file is there), or ``None``."""
    for kind, name in RESULT_FILES.items():
        if (path / name).exists():
            return kind
    return None


def _record_label(kind: str, index: int, record: Any) -> str:
    keys = _RECORD_KEYS.get(kind, ())
    if isinstance(record, Mapping) and keys and all(k in record for k in keys):
        values = [f"{k}={record[k]}" for k in keys]
        trial = record.get("trial")
        return ",".join(values + ([f"trial={trial}"] if trial is not None else []))
    return f"[{index}]"


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "provenance" or str(key).startswith(_TIMING):
                continue
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def _fields(kind: str, content: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(content, list):
        for i, record in enumerate(content):
            _flatten(record, _record_label(kind, i, record), out)
    else:
        _flatten(content, "", out)
    return out


def _distance(a: Any, b: Any) -> float:
    numeric = (int, float)
    if isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(float(a) - float(b))
    return math.inf


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return (type(a) is type(b) and bool(a == b)) or _distance(a, b) == 0.0


def compare_attacks(original: str | Path, rerun: str | Path) -> AttackReproduceReport:
    """Compare two attack/audit directories of the same kind field by field (results) and provenance.

    Raises:
        CheckpointError: ``original`` is not an attack/audit directory, or ``rerun`` lacks its result file.
    """
    a, b = Path(original), Path(rerun)
    kind = attack_kind(a)
    if kind is None:
        raise CheckpointError(f"{str(a)!r} holds no attack/audit result file ({', '.join(RESULT_FILES.values())})")
    name = RESULT_FILES[kind]
    if not (b / name).exists():
        raise CheckpointError(f"{str(b)!r} holds no {name} to compare with {str(a)!r}")
    fa = _fields(kind, json.loads((a / name).read_text()))
    fb = _fields(kind, json.loads((b / name).read_text()))
    drifts = [
        FieldDrift(field=k, original=fa.get(k), rerun=fb.get(k), abs_diff=_distance(fa.get(k), fb.get(k)))
        for k in sorted(set(fa) | set(fb))
        if k not in fa or k not in fb or not _same(fa[k], fb[k])
    ]
    return AttackReproduceReport(
        kind=kind,
        original=a,
        rerun=b,
        fields_compared=len(set(fa) | set(fb)),
        provenance_diffs=tuple(diff_provenance(read_attack_provenance(a), read_attack_provenance(b))),
        drifts=tuple(drifts),
    )


def format_attack_report(report: AttackReproduceReport) -> str:
    """A plain-text report: verdict, provenance differences, result fields that moved and by how much."""
    lines = [f"original: {report.original} ({report.kind})", f"re-run:   {report.rerun}"]
    lines += verdict_lines(
        identical=report.identical,
        provenance_diffs=report.provenance_diffs,
        all_equal=f"{report.fields_compared} result fields equal",
        equal_but=f"IDENTICAL RESULTS: {report.fields_compared} fields equal",
    )
    if report.identical and report.same_provenance:
        return "\n".join(lines)
    if report.drifts:
        lines.append(f"  {len(report.drifts)} of {report.fields_compared} result fields differ:")
        lines.append("  {:<48} {:>12} {:>16} {:>16}".format("field", "|diff|", "original", "re-run"))
        lines.extend(
            f"  {d.field:<48} {d.abs_diff:>12.4g} {_short(d.original):>16} {_short(d.rerun):>16}" for d in report.drifts
        )
    return "\n".join(lines)


def reproduce_attack(original: str | Path, *, out: str | Path, quiet: bool = False) -> AttackReproduceReport:
    """Re-run the attack/audit in ``original`` from its saved config into ``out`` and compare.

    Raises:
        CheckpointError: ``original`` is not an attack/audit directory, was written before the
            drivers saved their config, or the re-run failed.
    """
    from privfed.cli import main

    source = Path(original)
    kind = attack_kind(source)
    if kind is None:
        raise CheckpointError(f"{str(source)!r} holds no attack/audit result file")
    config = source / CONFIG_FILES[kind]
    if not config.exists():
        raise CheckpointError(
            f"{str(source)!r} has {RESULT_FILES[kind]} but no {CONFIG_FILES[kind]} (written before the attack "
            f"saved its config); re-run `privfed {' '.join(_COMMANDS[kind])} CONFIG --out NEW` and compare"
        )
    if Path(out).exists():
        raise CheckpointError(f"--out {str(out)!r} already exists; the re-run needs a new directory")
    argv = [*_COMMANDS[kind], str(config), "--out", str(out)] + (["--quiet"] if quiet else [])
    status = main(argv)
    # The audit exits 3 when a bound is violated: its results are written and are compared all the same.
    if status not in (0, 3) or not (Path(out) / RESULT_FILES[kind]).exists():
        raise CheckpointError(f"the re-run `privfed {' '.join(argv)}` failed (exit status {status})")
    return compare_attacks(source, out)
