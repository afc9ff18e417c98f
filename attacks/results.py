"""Result files of the audit and membership drivers, old and new: read, upgrade, recompute from saved scores.

``python -m attacks.results FILE.json ...`` rewrites result files in today's form:

- the one-shot figure is ``epsilon_estimate_one_shot`` (files before the rename say
  ``epsilon_lower_bound_one_shot``; it is an estimate, not a bound);
- a TPR at an FPR below ``1 / num_nonmembers`` is ``null``, with ``min_resolvable_fpr`` beside it, and each
  TPR has its 95% Clopper-Pearson interval ``..._ci95``.

When the scores behind a file are saved next to it (``X_results.json`` -> ``X_scores.npz``, as
:func:`attacks.metrics.save_scores` writes them), every AUC/TPR is recomputed from the scores and must equal
the stored figure (``ValueError`` otherwise); without them, the new fields are derived from each stored TPR
(a count out of ``num_members``) and the counts only.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from attacks.audit.federated import read_audit_record
from attacks.membership.shadow import ATTACKS
from attacks.metrics import load_scores, membership_metrics, roc_curve, upgrade_tpr_fields

__all__ = ["metric_groups", "scores_path", "upgrade_record", "upgrade_results"]

_Scores = dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]]
# Audit views: (view in the score file, key prefix in the record, prefix of its member/non-member counts).
_AUDIT_GROUPS = (
    ("whitebox", "", ""),
    ("final_model", "final_model_", ""),
    ("record_loss", "record_loss_", "record_"),
    ("record_reference", "record_reference_", "record_"),
)
# Figures a recomputation must reproduce exactly.
_FIGURES = ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr")


def scores_path(results: Path) -> Path:
    """The score file beside a result file: ``X_results.json`` -> ``X_scores.npz``, ``X.json`` -> ``X_scores.npz``."""
    stem = results.stem.removesuffix("_results")
    return results.with_name(f"{stem}_scores.npz")


def metric_groups(record: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(score view, key prefix, counts prefix)`` of every AUC/TPR group a record holds.

    Audit records (``run``) name views ``<run>.<view>``; membership records (``variant``)
    ``<variant>.<attack>`` and ``<variant>.client_update_<attack>``.
    """
    groups: list[tuple[str, str, str]] = []
    if "run" in record:
        for view, prefix, counts in _AUDIT_GROUPS:
            if f"{prefix}tpr_at_1pct_fpr" in record:
                groups.append((f"{record['run']}.{view}", prefix, counts))
    elif "variant" in record:
        for view in ("", "client_update_"):
            for attack in ATTACKS:
                prefix = f"{view}{attack}_"
                if f"{prefix}tpr_at_1pct_fpr" in record:
                    groups.append((f"{record['variant']}.{view}{attack}", prefix, prefix))
    return groups


def upgrade_record(record: Mapping[str, Any], scores: _Scores | None = None) -> dict[str, Any]:
    """``record`` in today's form; figures recomputed from ``scores`` where it holds the group's view."""
    out: dict[str, Any] = dict(read_audit_record(record) if "run" in record else record)
    for view, prefix, counts in metric_groups(out):
        if scores is not None and view in scores:
            fresh: dict[str, Any] = dict(membership_metrics(*scores[view]).to_dict())
            # An old file may hold a TPR at an unresolvable FPR: compare it with what the old rule computed.
            fpr, tpr = roc_curve(*scores[view])
            old_rule = {
                f"tpr_at_{p}_fpr": float(tpr[fpr <= t + 1e-12].max()) for p, t in (("0.1pct", 0.001), ("1pct", 0.01))
            }
            for key in _FIGURES:
                stored = out.get(f"{prefix}{key}")
                expected = fresh[key] if fresh[key] is not None else old_rule.get(key)
                if stored is not None and stored != expected:
                    raise ValueError(f"{view}: stored {prefix}{key} = {stored!r}, the saved scores give {expected!r}")
            if (int(out[f"{counts}num_members"]), int(out[f"{counts}num_nonmembers"])) != (
                fresh["num_members"],
                fresh["num_nonmembers"],
            ):
                raise ValueError(f"{view}: the saved scores have other member/non-member counts than the record")
            for key in _FIGURES:
                out[f"{prefix}{key}"] = fresh[key]
        out = upgrade_tpr_fields(out, prefix=prefix, counts_prefix=counts)
    return out


def upgrade_results(path: Path) -> tuple[Any, bool]:
    """``(upgraded content, whether scores were used)`` of one result file (a list of records, or one)."""
    raw = json.loads(path.read_text())
    scores = load_scores(scores_path(path)) if scores_path(path).exists() else None
    if isinstance(raw, list):
        return [upgrade_record(r, scores) for r in raw], scores is not None
    return upgrade_record(raw, scores), scores is not None


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite each result file named on the command line in today's form (indent and key order kept)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m attacks.results RESULTS.json ...", file=sys.stderr)
        return 2
    for name in args:
        path = Path(name)
        text = path.read_text()
        indent = 2 if text.startswith(("[\n  ", "{\n  ")) else 1
        content, used = upgrade_results(path)
        path.write_text(json.dumps(content, indent=indent) + ("\n" if text.endswith("\n") else ""))
        print(f"{path}: {'recomputed from ' + str(scores_path(path)) if used else 'upgraded from stored counts'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
