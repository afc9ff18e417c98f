"""The one layer every attack driver stands on: federations run or reused, results kept by key.

- :func:`run_federation` runs a federation with a config in a run directory, or reuses the
  finished one there when its resolved config is the same, or resumes an interrupted one
  (:func:`privfed.experiments.run_or_resume`, which ``privfed sweep`` uses too). A run whose
  hooks (canary clients, a half of the data) are not recorded in its directory passes
  ``resume=False``: an interrupted one is run again from scratch.
- :func:`final_adapter` is the global adapter a finished run left in its directory (a one-line
  ``ConfigError`` when the run did not finish), which every attack scores.
- :class:`ResultsFile` is a JSON list of records keyed by their settings (or, with ``one=True``,
  the one record of a driver that computes one, as ``exposure_results.json``): a re-run finds the
  records of finished keys (and skips their work), and every write is atomic (temporary file +
  rename), so an interrupted driver leaves the last complete file, never half of one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from privfed import ConfigError, RunDirectory
from privfed.experiments import atomic_write_text, run_or_resume

__all__ = ["ResultsFile", "final_adapter", "run_federation"]

run_federation = run_or_resume
"""Run, reuse or resume a federation in a run directory: :func:`privfed.experiments.run_or_resume`."""


def final_adapter(
    out: Path, summary: Mapping[str, Any], *, what: str, any_checkpoint: bool = False
) -> npt.NDArray[np.float32]:
    """The global adapter (``float32[dim]``) of the run in ``out`` that :func:`run_federation` finished.

    Args:
        out: the run directory; ``summary``: what :func:`run_federation` returned for it.
        what: names the run in the error (``"federation runs/x"``, ``"the audited run in runs/x"``).
        any_checkpoint: take the last checkpoint of a run that did not complete too (one its privacy
            budget stopped early).

    Raises:
        ConfigError: (one line) no checkpoint in ``out``, or the run did not complete (and not
            ``any_checkpoint``): ``<what> did not finish (<why it stopped>)``, why: the summary's ``stopped``, else
            ``no checkpoint`` or ``not completed``.
        CheckpointError: the checkpoint is unreadable or fails its digest.
    """
    checkpoint = RunDirectory(out).load_checkpoint()
    if checkpoint is None or not (any_checkpoint or summary.get("completed")):
        why = summary.get("stopped") or ("no checkpoint" if checkpoint is None else "not completed")
        raise ConfigError(f"{what} did not finish ({why})")
    return checkpoint.arrays["global"]


class ResultsFile:
    """A JSON list of result records, each keyed by its settings, rewritten atomically.

    Args:
        path: the result file (``audit_results.json``, ...); read if it exists.
        key: the settings that identify a record (``record["run"]``, a tuple of fields, ...).
        read: upgrades a stored record to today's form (e.g. a renamed key).
        indent: of ``json.dumps``; ``newline``: end the file with a newline.
        one: the file is one record (a JSON object), not a list: :meth:`add` replaces it.

    Raises:
        ConfigError: the existing file is not a list of records this ``key`` can read.
    """

    def __init__(
        self,
        path: Path,
        *,
        key: Callable[[Mapping[str, Any]], Hashable],
        read: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
        indent: int = 1,
        newline: bool = False,
        one: bool = False,
    ) -> None:
        self.path = path
        self.key = key
        self.indent = indent
        self.newline = newline
        self.one = one
        self.records: list[dict[str, Any]] = []
        self.done: dict[Hashable, dict[str, Any]] = {}
        if path.exists():
            try:
                stored = json.loads(path.read_text())
                self.done = {key(r): dict(read(r)) for r in ([stored] if one and isinstance(stored, dict) else stored)}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{path} is not a results file of this command ({exc}); use a new --out") from None

    def finished(self, key: Hashable) -> dict[str, Any] | None:
        """The stored record of ``key`` from an earlier run, or ``None`` when it still has to run."""
        return self.done.get(key)

    def add(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` and rewrite the file: this run's records, then earlier ones not reached yet
        (with ``one``: ``record`` alone)."""
        if self.one:
            self.records = [dict(record)]
            self._write(self.records)
            return
        self.records.append(dict(record))
        seen = {self.key(r) for r in self.records}
        self._write(self.records + [r for k, r in self.done.items() if k not in seen])

    def close(self) -> list[dict[str, Any]]:
        """Rewrite the file with this run's records only (keys no longer asked for are dropped); them.

        With ``one`` and nothing added, the file is left as it is."""
        if self.records or not self.one:
            self._write(self.records)
        return self.records

    def _write(self, records: list[dict[str, Any]]) -> None:
        content: object = records[0] if self.one and records else records
        atomic_write_text(self.path, json.dumps(content, indent=self.indent) + ("\n" if self.newline else ""))
