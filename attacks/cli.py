"""The attack and audit commands of ``privfed``, added through the ``privfed.commands`` entry point.

    privfed attack inversion|exposure|membership CONFIG.toml [--out DIR] [--quiet] [--set KEY=VALUE ...]
    privfed audit CONFIG.toml [--out DIR] [--quiet] [--set KEY=VALUE ...]
    privfed audit CONFIG.toml --deployment plan|score [--audit-seed N] [--run RUN_DIR] [--received DIR] [--out DIR]
    privfed reproduce DIR   (DIR: an audit, membership, exposure or inversion directory)

pyproject.toml declares ``attacks = "attacks.cli:register_commands"`` in the
``privfed.commands`` group; privfed's CLI calls :func:`register_commands` before it
parses the arguments, so privfed itself never imports ``attacks``. This module
imports nothing heavy: each command imports its driver when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from privfed import register_command, register_reproducer
from privfed.cli import overridden_file, quiet_libraries, split_config

__all__ = ["register_commands"]


def register_commands() -> None:
    """Register ``privfed attack ...``, ``privfed audit`` and the reproducer of their directories."""
    register_command("attack", help="privacy attacks against the pipeline", overwrite=True)
    register_command(
        "attack inversion",
        help="gradient inversion sweep (text and images) vs defences",
        run=_run_inversion,
        add_arguments=_arguments(
            "inversion",
            config="TOML file with an [inversion] table (see configs/inversion.toml)",
            reruns="resume",
            quiet="no per-configuration progress lines",
        ),
        overwrite=True,
    )
    register_command(
        "attack exposure",
        help="Secret Sharer: insert random secrets, train, rank them (LMs)",
        run=_run_exposure,
        add_arguments=_arguments(
            "exposure",
            config="causal-LM experiment config with an optional [exposure] table",
            reruns="resume",
            quiet="no progress bars",
        ),
        overwrite=True,
    )
    register_command(
        "attack membership",
        help="record-level MIA (LOSS, reference, LiRA, RMIA) with shadow federations",
        run=_run_membership,
        add_arguments=_arguments(
            "membership",
            config="experiment config with an optional [membership] table",
            reruns="reuse",
            quiet="no progress bars",
        ),
        overwrite=True,
    )
    register_command(
        "audit",
        help="canary audit: accountant epsilon next to empirical lower bounds",
        run=_run_audit,
        add_arguments=_audit_arguments,
        overwrite=True,
    )
    register_reproducer(
        "attacks",
        describe="an attack/audit directory (audit_, membership_, exposure_ or inversion_results.json)",
        detect=_is_attack_directory,
        run=_reproduce,
        overwrite=True,
    )


def _arguments(kind: str, *, config: str, reruns: str, quiet: str) -> Callable[[argparse.ArgumentParser], None]:
    """``add_arguments`` of an attack command: CONFIG, ``--out`` (default :func:`_out`) and ``--quiet``.

    Args:
        kind: the default directory's suffix (``runs/<config name>-<kind>``).
        config: help of the CONFIG argument; ``reruns``: what a rerun into the same ``--out`` does;
        quiet: what ``--quiet`` silences.
    """

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", help=config)
        parser.add_argument("--out", help=f"results directory (default: runs/<config name>-{kind}); reruns {reruns}")
        parser.add_argument("--quiet", action="store_true", help=quiet)

    return add_arguments


def _audit_arguments(parser: argparse.ArgumentParser) -> None:
    _arguments(
        "audit",
        config="experiment config with privacy.mode set and an optional [audit] table",
        reruns="reuse finished runs",
        quiet="no progress bars",
    )(parser)
    parser.add_argument(
        "--deployment",
        choices=("plan", "score"),
        help="audit a Flower deployment of CONFIG (docs/attacks-and-audits.md): 'plan' writes the canary "
        "SuperNodes' node configs, 'score' scores them once the run has finished",
    )
    parser.add_argument("--audit-seed", type=int, help="plan: the auditor's secret seed (default: random)")
    parser.add_argument("--run", help="score: the deployment's run directory (the ServerApp's out-dir)")
    parser.add_argument("--received", help="score: the canaries' audit-record-dir (default: the plan's)")


def _run_deployment_audit(args: argparse.Namespace) -> int:
    from attacks.audit.deployment import node_config_arg, plan_deployment_audit, run_config_for, score_deployment
    from attacks.audit.federated import AuditSettings

    table, config = split_config(args.config, "audit", args.set)
    out = _out(args, "audit")
    if args.deployment == "plan":
        nodes = plan_deployment_audit(config, AuditSettings.from_mapping(table), out, audit_seed=args.audit_seed)
        print(f"audit plan (keep it secret): {out / 'audit_plan.json'}; {len(nodes)} canary SuperNode(s) to start:")
        for node in nodes:
            print(f"  --node-config {node_config_arg(node)!r}")
        print(f'and run the ServerApp with --run-config "{run_config_for(nodes)}" (canaries see every round)')
        return 0
    if not args.run:
        print("privfed: error: privfed audit --deployment score needs --run RUN_DIR", file=sys.stderr)
        return 2
    record = score_deployment(
        config, out, run_dir=Path(args.run), received_dir=Path(args.received) if args.received else None
    )
    print(f"audit directory: {out}")
    return 3 if record.get("bound_violated") else 0


def _out(args: argparse.Namespace, kind: str) -> Path:
    """``--out``, or ``runs/<config file stem>-<kind>``."""
    return Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-{kind}"


def _run_inversion(args: argparse.Namespace) -> int:
    from attacks.inversion.sweep import load_inversion_config, run_inversion_sweep

    quiet_libraries()
    sweep = load_inversion_config(overridden_file(args.config, args.set, table="inversion"))
    out = _out(args, "inversion")
    records = run_inversion_sweep(sweep, out, progress=None if args.quiet else print)
    print(f"results: {out / 'inversion_results.json'} ({len(records)} configurations)")
    print((out / "inversion_results.md").read_text(), end="")
    return 0


def _run_exposure(args: argparse.Namespace) -> int:
    from attacks.membership import SecretSharerSettings, run_exposure

    quiet_libraries()
    raw, config = split_config(args.config, "exposure", args.set)
    settings = SecretSharerSettings.from_mapping(raw)
    out = _out(args, "exposure")
    record = run_exposure(config, settings, out, quiet=args.quiet)
    print(f"exposure results: {out / 'exposure_results.json'} (max {record['max_exposure']:.2f} bits)")
    for secret in record["secrets"]:
        print(
            f"  inserted {secret['inserted']:3d}x ({secret['copies_in_training']} in training): "
            f"{secret['exposure_before']:.2f} -> {secret['exposure_after']:.2f} bits"
        )
    return 0


def _run_membership(args: argparse.Namespace) -> int:
    from attacks.membership import MembershipSettings, run_membership
    from attacks.membership.shadow import membership_table

    quiet_libraries()
    table, config = split_config(args.config, "membership", args.set)
    settings = MembershipSettings.from_mapping(table)
    variants = settings.resolved_variants(config)  # validates every override before any training
    out = _out(args, "membership")
    print(f"membership directory: {out} ({len(variants)} variant(s) x {settings.num_models} federations)")
    records = run_membership(config, settings, out, quiet=args.quiet)
    print(membership_table(records), end="")  # n/a where an FPR is below 1/non-members
    return 0


def _run_audit(args: argparse.Namespace) -> int:
    from attacks.audit.federated import AuditSettings, run_audit

    if getattr(args, "deployment", None):
        quiet_libraries()
        return _run_deployment_audit(args)
    quiet_libraries()
    table, config = split_config(args.config, "audit", args.set)
    settings = AuditSettings.from_mapping(table)
    out = _out(args, "audit")
    records = run_audit(config, settings, out, quiet=args.quiet)
    keys = ["run", "epsilon", "epsilon_lower_bound_one_run", "epsilon_estimate_one_shot", "auc"]
    keys += ["tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "final_eval_accuracy"]
    print(f"audit directory: {out}")
    print(" | ".join(keys))
    for r in records:
        print(" | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    violated = [r["run"] for r in records if r.get("bound_violated")]
    if violated:
        print(f"privfed: error: empirical lower bound above the accountant's epsilon in {violated}", file=sys.stderr)
        return 3
    return 0


def _is_attack_directory(source: Path) -> bool:
    from attacks.reproduce import attack_kind

    return attack_kind(source) is not None


def _reproduce(source: Path, out: Path, quiet: bool) -> int:
    from attacks.reproduce import format_attack_report, reproduce_attack

    report = reproduce_attack(source, out=out, quiet=quiet)
    print(format_attack_report(report))
    return 0 if report.identical else 3
