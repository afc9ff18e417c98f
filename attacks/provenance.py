"""Where an attack's or audit's result came from: its config file in the output directory and a provenance record.

Every attack/audit driver saves, in its output directory,

- the config it was run from as ``<kind>.toml`` (``audit.toml``, ``membership.toml``,
  ``exposure.toml``, ``inversion.toml``): the resolved experiment config (where the
  attack trains federations) plus the attack's own ``[<kind>]`` table, every value
  resolved. ``privfed <command> <kind>.toml`` re-runs the same attack, which is
  what ``privfed reproduce DIR`` does. It is not called ``config.resolved.toml``:
  that name marks a run directory;
- a provenance record (:func:`privfed.experiments.collect_provenance`)
  whose fingerprints are the SHA-256 of the attack's settings table, of the
  experiment config, and every fingerprint of every federation the attack trained
  (``<run dir relative to DIR>/<name>``, read from that run's ``summary.json``).
  Result files that hold one record (``exposure_results.json``) carry it as their
  top-level ``provenance`` key; result files that are lists of records
  (``audit_results.json``, ``membership_results.json``, ``inversion_results.json``)
  keep their form for their readers, and the record goes to ``provenance.json``
  beside them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from privfed import ExperimentConfig, dump_config
from privfed.experiments import Provenance, atomic_write_text, collect_provenance

__all__ = [
    "CONFIG_FILES",
    "PROVENANCE_FILE",
    "RESULT_FILES",
    "attack_provenance",
    "config_digest",
    "read_attack_provenance",
    "save_attack_config",
    "settings_digest",
    "settings_table",
    "write_provenance",
]

#: The result file of each kind of attack/audit directory.
RESULT_FILES = {
    "audit": "audit_results.json",
    "membership": "membership_results.json",
    "exposure": "exposure_results.json",
    "inversion": "inversion_results.json",
}
#: The config file each driver saves in its output directory.
CONFIG_FILES = {kind: f"{kind}.toml" for kind in RESULT_FILES}
#: The provenance sidecar of result files that are lists of records.
PROVENANCE_FILE = "provenance.json"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def settings_table(settings: Any) -> dict[str, Any]:
    """A settings dataclass as the TOML table its command reads back (tuples as lists, nested tables kept).

    Membership variants are written as ``[[membership.variants]]`` with ``name`` and a ``set`` table,
    as :meth:`attacks.membership.MembershipSettings.from_mapping` reads them.
    """
    table = _plain(settings)
    assert isinstance(table, dict)
    if "variants" in table:
        table["variants"] = [{"name": v["name"], "set": v["overrides"]} for v in table["variants"]]
    return table


def settings_digest(table: Mapping[str, Any]) -> str:
    """SHA-256 of a settings table in canonical JSON (sorted keys; ``inf`` as ``Infinity``)."""
    text = json.dumps(_plain(table), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def config_digest(config: ExperimentConfig) -> str:
    """SHA-256 of ``config`` as its resolved TOML (the ``experiment_config`` fingerprint)."""
    return hashlib.sha256(dump_config(config).encode()).hexdigest()


def save_attack_config(out: Path, *, kind: str, table: Mapping[str, Any], config: ExperimentConfig | None) -> Path:
    """Write ``out/<kind>.toml``: ``config`` resolved (when the attack has one) plus its ``[kind]`` table."""
    import tomllib

    import tomli_w

    raw: dict[str, Any] = tomllib.loads(dump_config(config)) if config is not None else {}
    raw[kind] = dict(table)
    path = out / CONFIG_FILES[kind]
    atomic_write_text(path, tomli_w.dumps(raw))
    return path


def attack_provenance(
    out: Path,
    *,
    device: str,
    table: Mapping[str, Any],
    config: ExperimentConfig | None,
    run_dirs: Iterable[Path] = (),
) -> Provenance:
    """The provenance record of an attack in ``out`` (see the module docstring for its fingerprints)."""
    fingerprints = {"attack_settings": settings_digest(table)}
    if config is not None:
        fingerprints["experiment_config"] = config_digest(config)
    for run_dir in sorted(run_dirs):
        summary_path = run_dir / "summary.json"
        if not summary_path.exists():
            continue
        provenance = json.loads(summary_path.read_text()).get("provenance") or {}
        where = run_dir.relative_to(out).as_posix()
        for name, digest in (provenance.get("fingerprints") or {}).items():
            fingerprints[f"{where}/{name}"] = digest
    return collect_provenance(device=device, fingerprints=fingerprints)


def write_provenance(out: Path, provenance: Mapping[str, Any]) -> Path:
    """Write ``out/provenance.json`` atomically (for result files that are lists of records)."""
    path = out / PROVENANCE_FILE
    atomic_write_text(path, json.dumps(provenance, indent=1) + "\n")
    return path


def read_attack_provenance(out: Path) -> dict[str, Any]:
    """The provenance of the attack in ``out``: ``provenance.json``, or the result file's ``provenance`` key.

    Empty when neither exists (directories written before provenance was recorded).
    """
    sidecar = out / PROVENANCE_FILE
    if sidecar.exists():
        data: dict[str, Any] = json.loads(sidecar.read_text())
        return data
    for name in RESULT_FILES.values():
        path = out / name
        if path.exists():
            content = json.loads(path.read_text())
            if isinstance(content, dict) and isinstance(content.get("provenance"), dict):
                found: dict[str, Any] = content["provenance"]
                return found
    return {}
