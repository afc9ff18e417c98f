"""``privfed`` command line.

    privfed run CONFIG.toml [--out DIR] [--quiet] [--set KEY=VALUE ...]
    privfed run --resume RUN_DIR [--quiet]
    privfed sweep CONFIG.toml [--grid KEY=V1,V2 ...] [--epsilons 1,3,8,inf] [--seeds 0,1,2] [--out DIR]
    privfed report DIR... [--out report.html]
    privfed audit | attack membership|exposure|inversion CONFIG.toml [--set KEY=VALUE ...]
    privfed reproduce DIR [--out DIR]   (a run, or an attack/audit directory)
    privfed validate CONFIG.toml [--set KEY=VALUE ...]
    privfed models | datasets

Every command takes ``--plugin MODULE_OR_FILE.py`` (repeatable): the module is
imported (a ``.py`` path is loaded from its file) before anything else, so the
datasets, strategies and adapters it registers can be named in the config.
``--set server.rounds=5`` (repeatable) overrides one config value, typed by the
schema and validated with the file's values.

Errors privfed raises on purpose (bad config, missing package, bad --out,
corrupt or tampered checkpoint) print one line, ``privfed: error: ...``, and
exit with status 2. ``privfed run`` exits with status 3 when the run finished
but no round applied a client update (the adapter is untrained).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from privfed.errors import PrivfedError

__all__ = ["main"]


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    warnings.filterwarnings("ignore", module="peft")
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # Opacus hooks on a frozen base model: harmless, and once per step it would flood the log.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")


def _cmd_run(args: argparse.Namespace) -> int:
    from privfed.config import load_config
    from privfed.errors import CheckpointError
    from privfed.experiments.run_dir import RunDirectory
    from privfed.experiments.runner import resume_experiment, run_experiment

    if args.resume is not None:
        if args.config or args.out is not None or args.set:
            raise SystemExit("privfed: error: --resume takes the run directory alone (no CONFIG, --out or --set)")
        if not args.resume:
            raise CheckpointError("--resume needs a run directory; got an empty path")
        out = Path(args.resume)
        _quiet_libraries()
        summary = resume_experiment(out, quiet=args.quiet)
    else:
        if not args.config:
            raise SystemExit("privfed: error: run needs CONFIG.toml or --resume RUN_DIR")
        if args.out == "":
            raise CheckpointError("--out is an empty path; give a directory name (omit --out for runs/<config name>)")
        out = Path(args.out) if args.out is not None else Path("runs") / Path(args.config).stem
        RunDirectory(out).check_new()  # a bad --out fails in a second, not after the model loads
        config = load_config(args.config, overrides=args.set)
        _quiet_libraries()
        summary = run_experiment(config, out, quiet=args.quiet)
    keys = ["final_eval_accuracy", "final_eval_loss", "final_eval_perplexity", "initial_eval_perplexity"]
    keys += ["majority_class_rate", "rounds", "rounds_without_update", "trainable_params", "bytes_up_total"]
    keys += ["epsilon_user", "epsilon_sample_max", "delta"]
    shown = {k: summary[k] for k in keys if k in summary}
    print(f"run directory: {out}")
    print(json.dumps(shown, indent=2))
    print(_summary_line(summary))
    for warning in summary.get("warnings", []):
        print(f"privfed: warning: {warning}", file=sys.stderr)
    if summary.get("completed") and not summary.get("trained", True):
        print(
            f"privfed: error: the run finished but NO round applied a client update; the adapter in {out} "
            "is untrained (see summary.json warnings)",
            file=sys.stderr,
        )
        return 3
    return 0


def _epsilon_text(summary: dict[str, Any]) -> str:
    """``ε_user=2.31, ε_record≤4.10 (δ=1e-05)``, or ``not private``: the epsilon a run has spent."""
    parts = []
    for key, label in (("epsilon_user", "ε_user="), ("epsilon_sample_max", "ε_record≤")):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label}{'inf' if math.isinf(value) else format(value, '.3g')}")
    if not parts:
        return "not private (no ε)"
    delta = summary.get("delta")
    return ", ".join(parts) + (f" (δ={delta:g})" if isinstance(delta, float) else "")


def _summary_line(summary: dict[str, Any]) -> str:
    """The run's outcome in one line: rounds, the final metric, the epsilon spent."""
    rounds = summary.get("rounds")
    parts = [f"{rounds} round(s)" if rounds is not None else "no rounds"]
    for key, label in (("final_eval_accuracy", "accuracy"), ("final_eval_perplexity", "perplexity")):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{label} {value:.4g}")
    stopped = summary.get("stopped")
    return "final: " + ", ".join(parts) + f"; {_epsilon_text(summary)}" + (f"; stopped: {stopped}" if stopped else "")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from privfed.config import load_config
    from privfed.experiments.sweep import EPSILONS_AXIS, GridAxis, parse_epsilons, parse_grid, parse_seeds, run_grid

    axes = parse_grid(args.grid or [])
    if args.epsilons is not None or not axes:
        epsilons = parse_epsilons(args.epsilons if args.epsilons is not None else "1,3,8,inf")
        axes.insert(0, GridAxis(EPSILONS_AXIS, tuple("inf" if math.isinf(e) else f"{e:g}" for e in epsilons)))
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    config = load_config(args.config, overrides=args.set)
    _quiet_libraries()
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-sweep"
    rows = run_grid(config, out, axes, seeds=seeds, quiet=args.quiet)
    print(f"sweep directory: {out}")
    print((out / "sweep.md").read_text(), end="")
    plot = next(p for p in (out / "privacy_utility.png", out / "utility.png") if p.exists())
    print(f"plot: {plot} (+ .pdf, .svg; {len(rows)} points); results: {out / 'sweep.json'}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from privfed.experiments.report import write_report

    path = write_report(args.dirs, args.out)
    print(f"report: {path} ({path.stat().st_size // 1024} KiB, self-contained)")
    return 0


def _cmd_attack_inversion(args: argparse.Namespace) -> int:
    # The attacks package ships with privfed but is only imported on demand.
    from attacks.inversion.sweep import load_inversion_config, run_inversion_sweep

    _quiet_libraries()
    sweep = load_inversion_config(_overridden_file(args.config, args.set, table="inversion"))
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-inversion"
    records = run_inversion_sweep(sweep, out, progress=None if args.quiet else print)
    print(f"results: {out / 'inversion_results.json'} ({len(records)} configurations)")
    print((out / "inversion_results.md").read_text(), end="")
    return 0


def _overridden_file(path: str, overrides: Sequence[str], *, table: str) -> str:
    """``path``, or with ``--set`` a copy of it (same file name, in a temporary folder) with the values replaced.

    For commands whose config is only their own ``[table]`` (attack inversion): every key must be under it.
    """
    if not overrides:
        return path
    import atexit
    import shutil
    import tempfile

    import tomli_w

    from privfed.config import apply_overrides, parse_override, read_config_file
    from privfed.errors import ConfigError

    for text in overrides:
        key, _ = parse_override(text)
        if key.split(".")[0] != table:
            raise ConfigError(f"--set {key}: this command reads only the [{table}] table; use {table}.<key>=VALUE")
    raw = apply_overrides(read_config_file(path), overrides, tables=(table,))
    folder = tempfile.mkdtemp(prefix="privfed-set-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = Path(folder) / Path(path).name
    copy.write_text(tomli_w.dumps(raw))
    return str(copy)


def _split_config(path: str, table: str, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Any]:
    """An experiment config file with one extra top-level ``[table]``: (that table, the validated config)."""
    from privfed.config import apply_overrides, config_from_dict, read_config_file
    from privfed.errors import ConfigError

    raw = read_config_file(path)  # one-line ConfigError: missing, not UTF-8, not TOML, too deep, empty
    raw = apply_overrides(raw, overrides, tables=(table,))
    extra = raw.pop(table, {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    return extra, config_from_dict(raw)


def _cmd_attack_exposure(args: argparse.Namespace) -> int:
    from attacks._tables import table_values
    from attacks.membership import SecretSharerSettings, run_exposure
    from privfed.errors import ConfigError

    _quiet_libraries()
    raw, config = _split_config(args.config, "exposure", args.set)
    table = table_values(SecretSharerSettings, raw, "exposure")
    try:
        if "repeats" in table:
            table["repeats"] = tuple(int(r) for r in table["repeats"])
        settings = SecretSharerSettings(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"exposure: {exc}") from None
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-exposure"
    record = run_exposure(config, settings, out, quiet=args.quiet)
    print(f"exposure results: {out / 'exposure_results.json'} (max {record['max_exposure']:.2f} bits)")
    for secret in record["secrets"]:
        print(
            f"  inserted {secret['inserted']:3d}x ({secret['copies_in_training']} in training): "
            f"{secret['exposure_before']:.2f} -> {secret['exposure_after']:.2f} bits"
        )
    return 0


def _cmd_attack_membership(args: argparse.Namespace) -> int:
    from attacks.membership import MembershipSettings, run_membership
    from attacks.membership.shadow import membership_table

    _quiet_libraries()
    table, config = _split_config(args.config, "membership", args.set)
    settings = MembershipSettings.from_mapping(table)
    variants = settings.resolved_variants(config)  # validates every override before any training
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-membership"
    print(f"membership directory: {out} ({len(variants)} variant(s) x {settings.num_models} federations)")
    records = run_membership(config, settings, out, quiet=args.quiet)
    print(membership_table(records), end="")  # n/a where an FPR is below 1/non-members
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from attacks.audit.federated import AuditSettings, run_audit
    from privfed.errors import ConfigError

    _quiet_libraries()
    table, config = _split_config(args.config, "audit", args.set)
    try:
        settings = AuditSettings.from_mapping(table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"audit: {exc}") from None
    out = Path(args.out) if args.out else Path("runs") / f"{Path(args.config).stem}-audit"
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


def _cmd_validate(args: argparse.Namespace) -> int:
    import tomli_w

    from privfed.config import load_config
    from privfed.experiments.plan import applicable_config, client_sizes, format_plan, privacy_plan

    config = load_config(args.config, overrides=args.set)
    # Record-level DP needs each client's examples; user data is read to check the file (no model either way).
    sizes = client_sizes(config) if config.privacy.sample_level or config.data.user_data else None
    lines = format_plan(privacy_plan(config, sizes=sizes), config)
    if sizes is not None:
        lines.append(
            f"data: {sum(sizes)} training examples on {len(sizes)} clients ({min(sizes)} to {max(sizes)} each)"
        )
    lines.append("config (only the keys that apply; the rest keep their defaults):")
    print("\n".join(f"# {line}" for line in lines))
    print(tomli_w.dumps(applicable_config(config)), end="")
    return 0


def _load_plugins(plugins: Sequence[str]) -> None:
    """Import each ``--plugin``: a dotted module name (the working directory is importable), or a ``.py`` file.

    Raises:
        ConfigError: one line naming the plugin and what went wrong.
    """
    from privfed.errors import ConfigError

    for plugin in plugins:
        is_file = plugin.endswith(".py") or "/" in plugin or os.sep in plugin
        try:
            if is_file:
                path = Path(plugin)
                if not path.is_file():
                    raise ConfigError(f"--plugin {plugin!r}: no such file")
                name = "privfed_plugin_" + re.sub(r"\W", "_", path.stem)
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise ConfigError(f"--plugin {plugin!r}: not a Python file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.append(os.getcwd())  # as `python -m` would: the user's own modules beside the config
                importlib.import_module(plugin)
        except ConfigError:
            raise
        except ModuleNotFoundError as exc:
            if exc.name and (plugin == exc.name or plugin.startswith(exc.name + ".")):
                raise ConfigError(
                    f"--plugin {plugin!r}: no module named {exc.name!r} (install it, run from its folder, "
                    "or give the path of a .py file)"
                ) from None
            raise ConfigError(f"--plugin {plugin!r} failed to import: {_one_line(exc)}") from None
        except Exception as exc:
            raise ConfigError(f"--plugin {plugin!r} failed to import: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _cmd_reproduce(args: argparse.Namespace) -> int:
    import time

    from privfed.errors import CheckpointError
    from privfed.experiments.reproduce import format_report, reproduce
    from privfed.experiments.run_dir import RunDirectory

    source = Path(args.run_dir)
    out = Path(args.out) if args.out else source.with_name(f"{source.name}-reproduce-{time.strftime('%Y%m%d-%H%M%S')}")
    _quiet_libraries()
    if not (source / RunDirectory.CONFIG).exists():
        # Not a run directory: an attack or audit directory (its result file and the config it was run from).
        from attacks.reproduce import attack_kind, format_attack_report, reproduce_attack

        if attack_kind(source) is None:
            raise CheckpointError(
                f"{str(source)!r} is not a finished run directory ({RunDirectory.CONFIG} + summary.json) or "
                "an attack/audit directory (audit_, membership_, exposure_ or inversion_results.json)"
            )
        attack_report = reproduce_attack(source, out=out, quiet=args.quiet)
        print(format_attack_report(attack_report))
        return 0 if attack_report.identical else 3
    report = reproduce(source, out=out, quiet=args.quiet)
    print(format_report(report))
    return 0 if report.identical else 3


def _cmd_models(args: argparse.Namespace) -> int:
    from privfed.models.registry import get_model_spec, model_names

    for name in model_names():
        spec = get_model_spec(name)
        print(f"{name:12s} {spec.task:15s} {spec.description}")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from privfed.data.registry import dataset_names, get_dataset_spec

    for name in dataset_names():
        spec = get_dataset_spec(name)
        print(f"{name:14s} {spec.modality:6s} {spec.task:18s} {spec.description}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privfed", description="Private federated fine-tuning of adapters.")
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE_OR_FILE.py",
        help="import a module (or load a .py file) that registers datasets, strategies or adapters; repeatable",
    )
    overrides = argparse.ArgumentParser(add_help=False, parents=[plugin])
    overrides.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. server.rounds=5 or privacy.user.target_epsilon=3; repeatable",
    )
    plain = argparse.ArgumentParser(add_help=False, parents=[plugin])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(parent: Any, name: str, *, parents: Sequence[argparse.ArgumentParser], help: str) -> Any:
        return parent.add_parser(name, help=help, parents=list(parents))

    run = add(sub, "run", parents=[overrides], help="run a federated experiment from a TOML config")
    run.add_argument("config", nargs="?", help="experiment config (TOML)")
    run.add_argument("--out", help="run directory to create (default: runs/<config name>)")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.set_defaults(func=_cmd_run)
    sweep = add(
        sub,
        "sweep",
        parents=[overrides],
        help="grid of runs (cartesian product, several seeds): tables with 95%% intervals, plot, sweep.json",
    )
    sweep.add_argument("config", help="experiment config (TOML)")
    sweep.add_argument(
        "--grid",
        nargs="+",
        metavar="KEY=V1,V2",
        help="swept config keys (typed like --set), e.g. privacy.user.target_epsilon=1,3,8,inf adapter.rank=4,8; "
        "inf as a target epsilon = privacy off for that point",
    )
    sweep.add_argument(
        "--epsilons",
        help="shorthand: target epsilons of every privacy level the config enables, inf = no DP "
        "(the default without --grid: 1,3,8,inf)",
    )
    sweep.add_argument("--seeds", help="comma-separated seeds; each point runs once per seed (default: the config's)")
    sweep.add_argument("--out", help="sweep directory (default: runs/<config name>-sweep); reruns reuse/resume")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(func=_cmd_sweep)
    report = add(
        sub,
        "report",
        parents=[plain],
        help="one self-contained HTML file from saved run, sweep and attack/audit directories",
    )
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run, sweep or attack/audit directories")
    report.add_argument("--out", default="report.html", help="HTML file to write (default: report.html)")
    report.set_defaults(func=_cmd_report)
    attack = add(sub, "attack", parents=[], help="privacy attacks against the pipeline")
    attack_sub = attack.add_subparsers(dest="attack", required=True)
    inversion = add(
        attack_sub, "inversion", parents=[overrides], help="gradient inversion sweep (text and images) vs defences"
    )
    inversion.add_argument("config", help="TOML file with an [inversion] table (see configs/inversion.toml)")
    inversion.add_argument("--out", help="results directory (default: runs/<config name>-inversion); reruns resume")
    inversion.add_argument("--quiet", action="store_true", help="no per-configuration progress lines")
    inversion.set_defaults(func=_cmd_attack_inversion)
    expo = add(
        attack_sub, "exposure", parents=[overrides], help="Secret Sharer: insert random secrets, train, rank them (LMs)"
    )
    expo.add_argument("config", help="causal-LM experiment config with an optional [exposure] table")
    expo.add_argument("--out", help="results directory (default: runs/<config name>-exposure); must be new")
    expo.add_argument("--quiet", action="store_true", help="no progress bars")
    expo.set_defaults(func=_cmd_attack_exposure)
    member = add(
        attack_sub,
        "membership",
        parents=[overrides],
        help="record-level MIA (LOSS, reference, LiRA, RMIA) with shadow federations",
    )
    member.add_argument("config", help="experiment config with an optional [membership] table")
    member.add_argument("--out", help="results directory (default: runs/<config name>-membership); reruns reuse")
    member.add_argument("--quiet", action="store_true", help="no progress bars")
    member.set_defaults(func=_cmd_attack_membership)
    audit = add(
        sub, "audit", parents=[overrides], help="canary audit: accountant epsilon next to empirical lower bounds"
    )
    audit.add_argument("config", help="experiment config with privacy.mode set and an optional [audit] table")
    audit.add_argument("--out", help="audit directory (default: runs/<config name>-audit); reruns reuse finished runs")
    audit.add_argument("--quiet", action="store_true", help="no progress bars")
    audit.set_defaults(func=_cmd_audit)
    repro = add(
        sub,
        "reproduce",
        parents=[plain],
        help="re-run a finished run (or attack/audit) from its saved config and compare the results",
    )
    repro.add_argument(
        "run_dir", metavar="DIR", help="a finished run directory, or an audit/membership/exposure/inversion directory"
    )
    repro.add_argument("--out", help="where the re-run goes (default: DIR-reproduce-<time>); must be new")
    repro.add_argument("--quiet", action="store_true", help="no progress bars")
    repro.set_defaults(func=_cmd_reproduce)
    validate = add(
        sub, "validate", parents=[overrides], help="check a config; print its privacy plan and the keys that apply"
    )
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)
    add(sub, "models", parents=[plain], help="list registered models").set_defaults(func=_cmd_models)
    add(sub, "datasets", parents=[plain], help="list registered datasets").set_defaults(func=_cmd_datasets)
    return parser


def _short_warnings() -> None:
    """privfed's own warnings (dropped blank or duplicate rows, ...) as one ``privfed: warning:`` line each."""
    import warnings

    package = str(Path(__file__).parent)
    default = warnings.formatwarning

    def formatwarning(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if filename.startswith(package):
            return f"privfed: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = formatwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privfed`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    _short_warnings()
    try:
        _load_plugins(getattr(args, "plugin", []))
        status: int = args.func(args)
        return status
    except PrivfedError as exc:
        print(f"privfed: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "privfed: interrupted; the last checkpoint is kept: continue with `privfed run --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
