"""Commands that packages add to ``privfed`` (privfed.cli.register_command and the privfed.commands entry points)."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from privfed import ConfigError, cli, register_command, register_reproducer
from privfed.cli import Command, command_names, main
from privfed.registry import Registry


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty command and reproducer registries."""
    monkeypatch.setattr(cli, "_COMMANDS", Registry("command", error=ConfigError))
    monkeypatch.setattr(cli, "_REPRODUCERS", Registry("reproducer", error=ConfigError))


def _entry_points(*values: str) -> object:
    points = [
        importlib.metadata.EntryPoint(name=f"p{i}", value=v, group=cli.ENTRY_POINT_GROUP) for i, v in enumerate(values)
    ]
    return lambda group: points if group == cli.ENTRY_POINT_GROUP else []


def _greet(args: argparse.Namespace) -> int:
    print(f"hello {args.who} {getattr(args, 'set', None)}")
    return 7


def _greet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("who")


def test_attack_commands_come_from_the_attacks_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0  # any command: the entry points are called first, on every call
    assert main(["models"]) == 0
    assert {"attack", "attack exposure", "attack inversion", "attack membership", "audit"} <= set(command_names())
    assert main(["attack", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == "privfed: error: unknown command 'attack nope'; choose from exposure, inversion, membership\n"


@pytest.mark.parametrize(
    ("command", "kind", "reruns"),
    [
        ("attack inversion", "inversion", "resume"),
        ("attack exposure", "exposure", "resume"),
        ("attack membership", "membership", "reuse"),
        ("audit", "audit", "reuse finished runs"),
    ],
)
def test_attack_commands_share_config_out_quiet_and_set(
    command: str, kind: str, reruns: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one help line per option
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    lines = [" ".join(line.split()) for line in capsys.readouterr().out.splitlines()]
    usage = f"usage: privfed {command} [-h] [--plugin MODULE_OR_FILE.py] [--set KEY=VALUE] [--out OUT] [--quiet] "
    assert lines[0].startswith(usage) and lines[0].endswith(" config")  # audit adds its --deployment options
    assert f"--out OUT results directory (default: runs/<config name>-{kind}); reruns {reruns}" in lines
    assert any(line.startswith("--quiet ") for line in lines)


def test_a_registered_command_parses_its_arguments_and_returns_its_status(
    fresh: None, capsys: pytest.CaptureFixture[str]
) -> None:
    register_command("greet", help="say hello", run=_greet, add_arguments=_greet_arguments)
    register_command("tools", help="a group")
    register_command("tools greet", help="say hello", run=_greet, add_arguments=_greet_arguments, overrides=False)
    assert main(["greet", "ada", "--set", "a.b=1"]) == 7
    assert capsys.readouterr().out == "hello ada ['a.b=1']\n"
    assert main(["tools", "greet", "bob"]) == 7
    assert capsys.readouterr().out.startswith("hello bob")
    with pytest.raises(SystemExit):
        main(["tools", "greet", "bob", "--set", "a=1"])  # overrides=False: no --set
    assert {"greet", "tools", "tools greet"} <= set(command_names())


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("Greet", {}, "lowercase words"),
        ("two  spaces", {}, "lowercase words"),
        ("run", {}, "'run' is a built-in privfed command"),
        ("attack x", {}, "register the group 'attack' (run=None) first"),
        ("g", {"add_arguments": _greet_arguments}, "a group (run=None) takes no add_arguments"),
    ],
)
def test_register_command_refuses_bad_registrations(
    fresh: None, name: str, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        register_command(name, help="h", **kwargs)  # type: ignore[arg-type]


def test_registering_twice_needs_overwrite(fresh: None) -> None:
    first = register_command("greet", help="one", run=_greet)
    assert isinstance(first, Command) and first.overrides
    with pytest.raises(ConfigError, match="already registered"):
        register_command("greet", help="two", run=_greet)
    assert register_command("greet", help="two", run=_greet, overwrite=True).help == "two"


def test_missing_plugin_package_is_one_line_naming_it(
    fresh: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As if privfed were installed without its attacks package: the entry point cannot be loaded.
    monkeypatch.setitem(sys.modules, "attacks", None)
    monkeypatch.setitem(sys.modules, "attacks.cli", None)
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points("attacks.cli:register_commands"))
    assert main(["audit", "config.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("privfed: error: unknown command 'audit'; choose from run, ")
    assert "command plugin 'p0' (attacks.cli:register_commands) failed to load: ModuleNotFoundError" in err
    assert main(["models"]) == 0  # the built-in commands do not care


def test_unknown_command_without_plugins_says_where_commands_come_from(
    fresh: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points())
    assert main(["attack", "membership", "c.toml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown command 'attack'" in err and "'privfed.commands' entry points" in err


def test_reproduce_asks_the_registered_reproducers(
    fresh: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.metadata, "entry_points", _entry_points())
    assert main(["reproduce", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert (
        capsys.readouterr()
        .err.rstrip()
        .endswith("is not a finished run directory (config.resolved.toml + summary.json)")
    )
    seen: list[tuple[Path, Path, bool]] = []

    def run(source: Path, out: Path, quiet: bool) -> int:
        seen.append((source, out, quiet))
        return 3

    register_reproducer(
        "mine", describe="a directory of mine (mine.json)", detect=lambda p: (p / "mine.json").exists(), run=run
    )
    assert main(["reproduce", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.rstrip().endswith("or a directory of mine (mine.json)")
    (tmp_path / "mine.json").write_text("{}")
    assert main(["reproduce", str(tmp_path), "--out", str(tmp_path / "x"), "--quiet"]) == 3
    assert seen == [(tmp_path, tmp_path / "x", True)]
