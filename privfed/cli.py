"""``privfed`` command line, and the registry through which packages add commands to it.

    privfed run CONFIG.toml [--out DIR] [--quiet] [--set KEY=VALUE ...]
    privfed run --resume RUN_DIR [--quiet]
    privfed sweep CONFIG.toml [--grid KEY=V1,V2 ...] [--epsilons 1,3,8,inf] [--seeds 0,1,2] [--out DIR]
    privfed report DIR... [--out report.html]
    privfed reproduce DIR [--out DIR]   (a run, or a directory a plugin's reproducer recognises)
    privfed validate CONFIG.toml [--set KEY=VALUE ...]
    privfed models | datasets

More commands come from packages that declare a function in the ``privfed.commands``
entry point group; the CLI calls each such function, which calls :func:`register_command`
(and :func:`register_reproducer`). The ``attacks`` package adds
``privfed audit | attack membership|exposure|inversion CONFIG.toml`` this way
(``attacks = "attacks.cli:register_commands"`` in pyproject.toml), so privfed never
imports it. An unknown command prints one line that also names any plugin that failed
to load.

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
import dataclasses
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from privfed.errors import CheckpointError, ConfigError, PrivfedError
from privfed.registry import Registry

if TYPE_CHECKING:
    from privfed.config import ExperimentConfig

__all__ = [
    "Command",
    "Reproducer",
    "command_names",
    "main",
    "overridden_file",
    "quiet_libraries",
    "register_command",
    "register_reproducer",
    "split_config",
]

ENTRY_POINT_GROUP = "privfed.commands"
_BUILTIN_COMMANDS = ("run", "sweep", "report", "reproduce", "validate", "models", "datasets")
_WORD = re.compile(r"[a-z][a-z0-9-]*")


@dataclasses.dataclass(frozen=True)
class Command:
    """A ``privfed`` subcommand that a package adds (see :func:`register_command`).

    Attributes:
        name: the words after ``privfed``, space-separated: ``"audit"``, ``"attack membership"``.
        help: one line for ``privfed --help``.
        run: runs the parsed arguments and returns the exit status; ``None`` for a group
            (``"attack"``), whose members are registered as ``"attack <word>"``.
        add_arguments: adds the command's own arguments to its ``argparse`` parser.
        overrides: whether the command takes ``--set KEY=VALUE`` (every command takes ``--plugin``).
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int] | None = None
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    overrides: bool = True


@dataclasses.dataclass(frozen=True)
class Reproducer:
    """How ``privfed reproduce DIR`` re-runs a directory that is not a run directory (see :func:`register_reproducer`).

    Attributes:
        name: the registry key (``"attacks"``).
        describe: what such a directory is, for the error when none matches
            (``"an attack/audit directory (audit_... .json)"``).
        detect: whether ``DIR`` is one of these.
        run: ``run(source, out, quiet)`` re-runs ``source`` into ``out``, prints the comparison and
            returns the exit status (0 identical, 3 different).
    """

    name: str
    describe: str
    detect: Callable[[Path], bool]
    run: Callable[[Path, Path, bool], int]


_COMMANDS: Registry[Command] = Registry("command", error=ConfigError)
_REPRODUCERS: Registry[Reproducer] = Registry("reproducer", error=ConfigError)


def register_command(
    name: str,
    *,
    help: str,
    run: Callable[[argparse.Namespace], int] | None = None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    overrides: bool = True,
    overwrite: bool = False,
) -> Command:
    """Add ``privfed <name>`` to the command line.

    Call it from the function your package declares in the ``privfed.commands`` entry point
    group (``[project.entry-points."privfed.commands"]`` in pyproject.toml); the CLI calls that
    function before it parses the arguments, on every call of :func:`main`, so pass
    ``overwrite=True`` there. Import heavy modules inside ``run``, not at the top of the module,
    so that ``privfed --help`` stays fast.

    Args:
        name: space-separated lowercase words; every word but the last names a group
            registered before (``register_command("attack", help=...)`` then ``"attack membership"``).
        help: one line for ``privfed --help``.
        run: ``run(args) -> exit status``; ``None`` registers a group of subcommands.
        add_arguments: ``add_arguments(parser)`` adds the command's positional arguments and options.
        overrides: whether the command takes ``--set KEY=VALUE`` (repeatable; ``args.set``).
        overwrite: replace a command of the same name.

    Raises:
        ConfigError: a malformed name, a built-in command's name, a group that is not registered,
            or a name already registered (without ``overwrite``).
    """
    words = name.split(" ")
    if not all(_WORD.fullmatch(word) for word in words):
        raise ConfigError(f"command name must be lowercase words separated by single spaces; got {name!r}")
    if words[0] in _BUILTIN_COMMANDS:
        raise ConfigError(f"command {name!r}: {words[0]!r} is a built-in privfed command")
    parent = " ".join(words[:-1])
    if parent and (parent not in _COMMANDS or _COMMANDS.get(parent).run is not None):
        raise ConfigError(f"command {name!r}: register the group {parent!r} (run=None) first")
    if run is None and add_arguments is not None:
        raise ConfigError(f"command {name!r}: a group (run=None) takes no add_arguments")
    command = Command(name=name, help=help, run=run, add_arguments=add_arguments, overrides=overrides)
    return _COMMANDS.register(name, command, overwrite=overwrite)


def register_reproducer(
    name: str,
    *,
    describe: str,
    detect: Callable[[Path], bool],
    run: Callable[[Path, Path, bool], int],
    overwrite: bool = False,
) -> Reproducer:
    """Teach ``privfed reproduce DIR`` another kind of directory (one your command writes).

    Args:
        name: registry key.
        describe: what such a directory is, completing "DIR is not a finished run directory or ...".
        detect: ``detect(DIR)``: whether ``DIR`` is one of yours (checked in name order).
        run: ``run(DIR, out, quiet) -> exit status``: re-run ``DIR`` into the new directory ``out``
            and print the comparison (0 when identical, 3 when not).
    """
    return _REPRODUCERS.register(
        name, Reproducer(name=name, describe=describe, detect=detect, run=run), overwrite=overwrite
    )


def command_names() -> tuple[str, ...]:
    """The commands packages have registered so far (not the built-in ones), sorted."""
    return _COMMANDS.names()


def _load_command_plugins() -> list[str]:
    """Call every ``privfed.commands`` entry point; one line per entry point that failed.

    Called on every :func:`main`, so a registration function must be idempotent (``overwrite=True``):
    tests and notebooks call ``main`` many times in one process, and may swap the registries between calls.
    """
    problems = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()()
        except Exception as exc:
            problems.append(
                f"command plugin {entry_point.name!r} ({entry_point.value}) failed to load: {_one_line(exc)}"
            )
    return problems


def quiet_libraries() -> None:
    """Offline Hugging Face, no transformers progress bars or info logs, no known-harmless library warnings.

    Call it in a command's ``run`` before loading models (the built-in commands all do).
    """
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
    from privfed.experiments.run_dir import RunDirectory
    from privfed.experiments.runner import resume_experiment, run_experiment

    if args.resume is not None:
        if args.config or args.out is not None or args.set:
            raise SystemExit("privfed: error: --resume takes the run directory alone (no CONFIG, --out or --set)")
        if not args.resume:
            raise CheckpointError("--resume needs a run directory; got an empty path")
        out = Path(args.resume)
        quiet_libraries()
        summary = resume_experiment(out, quiet=args.quiet)
    else:
        if not args.config:
            raise SystemExit("privfed: error: run needs CONFIG.toml or --resume RUN_DIR")
        if args.out == "":
            raise CheckpointError("--out is an empty path; give a directory name (omit --out for runs/<config name>)")
        out = Path(args.out) if args.out is not None else Path("runs") / Path(args.config).stem
        RunDirectory(out).check_new()  # a bad --out fails in a second, not after the model loads
        config = load_config(args.config, overrides=args.set)
        quiet_libraries()
        summary = run_experiment(config, out, quiet=args.quiet)
    keys = ["final_eval_accuracy", "final_eval_loss", "final_eval_perplexity", "initial_eval_perplexity"]
    keys += ["majority_class_rate", "rounds", "rounds_without_update", "trainable_params", "bytes_up_total"]
    keys += ["epsilon_user", "epsilon_sample_max", "delta"]
    fields: Mapping[str, object] = summary
    shown = {k: fields[k] for k in keys if k in fields}
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


def _epsilon_text(summary: Mapping[str, Any]) -> str:
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


def _summary_line(summary: Mapping[str, Any]) -> str:
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
    quiet_libraries()
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


def overridden_file(path: str, overrides: Sequence[str], *, table: str) -> str:
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


def split_config(path: str, table: str, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], ExperimentConfig]:
    """An experiment config file with one extra top-level ``[table]``: (that table, the validated config)."""
    from privfed.config import apply_overrides, config_from_dict, read_config_file

    raw = read_config_file(path)  # one-line ConfigError: missing, not UTF-8, not TOML, too deep, empty
    raw = apply_overrides(raw, overrides, tables=(table,))
    extra = raw.pop(table, {})
    if not isinstance(extra, dict):
        raise ConfigError(f"{path}: [{table}] must be a table")
    return extra, config_from_dict(raw)


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

    from privfed.experiments.reproduce import format_report, reproduce
    from privfed.experiments.run_dir import RunDirectory

    source = Path(args.run_dir)
    out = Path(args.out) if args.out else source.with_name(f"{source.name}-reproduce-{time.strftime('%Y%m%d-%H%M%S')}")
    quiet_libraries()
    if not (source / RunDirectory.CONFIG).exists():
        # Not a run directory: perhaps one a plugin's command wrote (an attack or audit directory).
        for name in _REPRODUCERS.names():
            reproducer = _REPRODUCERS.get(name)
            if reproducer.detect(source):
                return reproducer.run(source, out, args.quiet)
        kinds = "".join(f" or {_REPRODUCERS.get(name).describe}" for name in _REPRODUCERS.names())
        raise CheckpointError(
            f"{str(source)!r} is not a finished run directory ({RunDirectory.CONFIG} + summary.json){kinds}"
        )
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
    groups: dict[str, Any] = {"": sub}
    for name in _COMMANDS.names():  # sorted, so a group comes before its members
        command = _COMMANDS.get(name)
        parent, _, word = name.rpartition(" ")
        if command.run is None:
            groups[name] = add(groups[parent], word, parents=[], help=command.help).add_subparsers(
                dest=name.replace(" ", "_"), required=True
            )
        else:
            node = add(groups[parent], word, parents=[overrides if command.overrides else plain], help=command.help)
            if command.add_arguments is not None:
                command.add_arguments(node)
            node.set_defaults(func=command.run)
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


def _unknown_command(words: Sequence[str], problems: Sequence[str]) -> str | None:
    """One line when the leading words name no command (argparse would print usage and a long list)."""
    choices = [*_BUILTIN_COMMANDS, *(name for name in _COMMANDS.names() if " " not in name)]
    path: list[str] = []
    for word in words:
        if word.startswith("-"):
            return None  # --help, or an option argparse will judge
        if word not in choices:
            text = f"unknown command {' '.join([*path, word])!r}; choose from {', '.join(choices)}"
            if problems:
                return f"{text}; {'; '.join(problems)}"
            if not path and not importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                text += (
                    f" (no package adds commands through the {ENTRY_POINT_GROUP!r} entry points; the attack and "
                    "audit commands come with privfed's attacks package: `pip install -e .` in a privfed checkout)"
                )
            return text
        path.append(word)
        group = " ".join(path)
        if group not in _COMMANDS or _COMMANDS.get(group).run is not None:
            return None
        choices = [name.rpartition(" ")[2] for name in _COMMANDS.names() if name.rpartition(" ")[0] == group]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``privfed`` console script; returns the exit status."""
    problems = _load_command_plugins()
    words = list(sys.argv[1:] if argv is None else argv)
    unknown = _unknown_command(words, problems)
    if unknown is not None:
        print(f"privfed: error: {unknown}", file=sys.stderr)
        return 2
    args = _parser().parse_args(words)
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
