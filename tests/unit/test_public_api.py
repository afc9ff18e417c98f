"""privfed's public API in tiers, and the wall between privfed and attacks.

Tier 1 is ``privfed`` itself (``privfed.__all__``). Tier 2 is the documented
subpackages in ``PUBLIC_MODULES``, each with its own ``__all__``. Anything else
(a module inside those subpackages, ``privfed.tasks``, ``privfed.registry``, ...)
is internal. docs/extending.md ("Public API") says the same; keep them in step.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import privfed

ROOT = Path(__file__).resolve().parents[2]

#: Tier 2: the subpackages (and modules) whose ``__all__`` is public.
PUBLIC_MODULES = (
    "privfed.adapters",
    "privfed.cli",
    "privfed.client",
    "privfed.compression",
    "privfed.config",
    "privfed.data",
    "privfed.errors",
    "privfed.experiments",
    "privfed.models",
    "privfed.plotting",
    "privfed.privacy",
    "privfed.rng",
    "privfed.secagg",
    "privfed.server",
    "privfed.testing",
    "privfed.tracking",
    "privfed.transport",
)
PRESENT_MODULES = tuple(m for m in PUBLIC_MODULES if importlib.util.find_spec(m) is not None)

PACKAGES = [
    "privfed",
    *PRESENT_MODULES,
    "attacks",
    "attacks.audit",
    "attacks.cli",
    "attacks.inversion",
    "attacks.membership",
]

#: What ``import privfed`` (and ``import privfed.cli``) must not load.
HEAVY = ("attacks", "torch", "transformers", "peft", "opacus", "flwr", "scipy", "sklearn", "matplotlib")


def _python_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(set(exported))
    for symbol in exported:
        assert getattr(module, symbol) is not None, f"{name}.{symbol}"


def test_top_level_all_matches_the_lazy_table_and_the_type_checking_imports() -> None:
    # The TYPE_CHECKING block is what mypy sees; _SOURCES is what runs: they must name the same things.
    tree = _tree(ROOT / "privfed" / "__init__.py")
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed: dict[str, str] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module is not None
        for alias in node.names:
            assert alias.asname is None
            typed[alias.name] = node.module
    lazy = privfed._EXPORTS
    assert typed == lazy
    assert set(privfed.__all__) == set(lazy) | {"__version__"}
    assert set(dir(privfed)) >= set(privfed.__all__)
    for name, module in lazy.items():
        assert getattr(privfed, name) is getattr(importlib.import_module(module), name), name


def test_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'run_experimnet'"):
        _ = privfed.run_experimnet  # type: ignore[attr-defined]
    assert not hasattr(privfed, "Registry")  # internal: privfed.registry.Registry


def test_every_register_function_and_its_protocol_is_exported_at_top_level() -> None:
    # An extension point is a module-level register_* function; the Protocol classes beside it are what
    # an extension implements (Strategy beside register_strategy, UploadStage beside register_upload_stage).
    registers, protocols = set(), set()
    for path in _python_files("privfed"):
        tree = _tree(path)
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("register_")}
        registers |= names
        if names:
            protocols |= {
                n.name
                for n in tree.body
                if isinstance(n, ast.ClassDef) and any(ast.unparse(b) == "Protocol" for b in n.bases)
            }
    assert {"register_command", "register_strategy", "register_transport", "register_upload_stage"} <= registers
    assert {"Strategy", "Transport", "UploadStage"} <= protocols
    missing = (registers | protocols) - set(privfed.__all__)
    assert not missing, f"not exported by privfed: {sorted(missing)}"


def _public_names(module: str) -> set[str]:
    return set(importlib.import_module(module).__all__)


def _check_privfed_reference(dotted: str) -> str | None:
    """None if ``dotted`` (``privfed.X`` or ``privfed.X.Y``) is public, else why not."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in privfed.__all__:
        return None
    module = f"privfed.{parts[1]}"
    if module not in PUBLIC_MODULES:
        return f"{dotted}: {module} is not a public module"
    if len(parts) > 2 and parts[2] not in _public_names(module):
        return f"{dotted}: {parts[2]!r} is not in {module}.__all__"
    return None


def _privfed_uses(tree: ast.Module) -> list[tuple[int, str, str | None]]:
    """(line, module, name) for every use of privfed in ``tree``: imports and ``privfed.x.y`` attribute chains."""
    uses: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "privfed":
            assert node.level == 0
            uses += [(node.lineno, node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            uses += [(node.lineno, a.name, None) for a in node.names if a.name.split(".")[0] == "privfed"]
        elif isinstance(node, ast.Attribute):
            chain = ast.unparse(node)
            if chain.startswith("privfed.") and isinstance(getattr(node, "ctx", None), ast.Load):
                module, _, name = chain.rpartition(".")
                uses.append((node.lineno, module, name))
    return uses


def test_attacks_use_only_public_privfed_names() -> None:
    violations = []
    for path in _python_files("attacks"):
        for line, module, name in _privfed_uses(_tree(path)):
            if module == "privfed":
                public = name is None or name in privfed.__all__ or f"privfed.{name}" in PUBLIC_MODULES
                problem = None if public else f"privfed.{name} is not public"
            elif module not in PUBLIC_MODULES and name is not None:
                problem = _check_privfed_reference(f"{module}.{name}")
            elif name is None:
                problem = _check_privfed_reference(module)
            else:
                problem = None if name in _public_names(module) else f"{name!r} is not in {module}.__all__"
            if problem:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    assert not violations, "\n".join(violations)


def test_the_public_reference_check_catches_internals() -> None:
    # The checker above must be able to fail: internal modules and private names are refused.
    assert _check_privfed_reference("privfed.experiments.provenance.collect_provenance") is not None
    assert _check_privfed_reference("privfed.tasks.get_task") is not None
    assert _check_privfed_reference("privfed.server._FACTORIES") is not None
    assert _check_privfed_reference("privfed.server.validate_update") is None
    assert _check_privfed_reference("privfed.run_experiment") is None
    uses = _privfed_uses(ast.parse("import privfed.tasks\nfrom privfed.client.node import ClientNode\nprivfed.rng.x"))
    assert (1, "privfed.tasks", None) in uses and (2, "privfed.client.node", "ClientNode") in uses
    assert (3, "privfed.rng", "x") in uses


def test_privfed_never_imports_attacks() -> None:
    found = []
    for path in _python_files("privfed"):
        for node in ast.walk(_tree(path)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and ast.unparse(node.func).endswith(("import_module", "__import__")):
                names = [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "attacks"]
    assert not found, "\n".join(found)


def test_import_privfed_loads_no_heavy_dependency_and_no_attacks() -> None:
    script = (
        "import json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = lambda: sorted(m for m in heavy if m in sys.modules)\n"
        "import privfed\n"
        "after_import = loaded()\n"
        "import privfed.cli\n"
        "after_cli = loaded()\n"
        "from privfed import ConfigError, ExperimentConfig, load_config, register_command\n"
        "after_light_names = loaded()\n"
        "privfed.run_experiment\n"
        "print(json.dumps([after_import, after_cli, after_light_names, loaded()]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    after_import, after_cli, after_light_names, after_run = json.loads(result.stdout)
    assert after_import == [] and after_cli == [] and after_light_names == []
    assert "torch" in after_run  # the lazy name really loads its subpackage
    assert "attacks" not in after_run


def test_attacks_commands_are_declared_as_an_entry_point() -> None:
    # The source of truth (a fresh `pip install -e .` by scripts/setup.sh) and the installed metadata.
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["privfed.commands"]
    assert declared == {"attacks": "attacks.cli:register_commands"}
    installed = importlib.metadata.entry_points(group="privfed.commands")
    assert {ep.name: ep.value for ep in installed}.get("attacks") == "attacks.cli:register_commands", (
        "the installed privfed metadata lacks the privfed.commands entry point: run `.venv/bin/pip install "
        "--no-deps -e .` (scripts/setup.sh does)"
    )
