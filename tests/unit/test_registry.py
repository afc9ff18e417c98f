from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from privfed.adapters import adapter_method_names
from privfed.data import dataset_names, partitioner_names
from privfed.errors import ConfigError, DataError, ModelError
from privfed.models import model_names
from privfed.privacy import accountant_names
from privfed.registry import Registry
from privfed.server import strategy_names


def test_registry_registers_lists_and_names_the_field_on_unknown() -> None:
    registry: Registry[int] = Registry("widget", error=ConfigError, field="x.widget")
    registry.register("b", 2)
    registry.register("a", 1)
    assert registry.names() == ("a", "b") and registry.get("a") == 1 and "b" in registry
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("a", 3)
    with pytest.raises(ConfigError) as info:
        registry.get("c")
    assert str(info.value) == "x.widget must be one of 'a', 'b'; got 'c'"


def test_every_extension_point_lists_its_builtins() -> None:
    assert set(model_names()) >= {"minilm", "smollm2", "tiny-bert", "tiny-llama"}
    assert set(dataset_names()) >= {"bbc_news", "tweets", "drug_reviews", "fortunes", "digits", "mnist"}
    assert set(partitioner_names()) == {"iid", "dirichlet", "shards", "natural"}
    assert set(adapter_method_names()) == {"lora", "ffa_lora", "full", "ia3", "prompt_tuning"}
    assert set(strategy_names()) == {"fedavg", "fedadam"}
    assert set(accountant_names()) == {"rdp", "prv"}


def test_unknown_names_raise_the_registry_error_type() -> None:
    from privfed.data import get_dataset_spec
    from privfed.models import get_model_spec

    with pytest.raises(DataError, match=r"data\.name"):
        get_dataset_spec("imagenet")
    with pytest.raises(ModelError, match=r"model\.name"):
        get_model_spec("gpt-9")


# --- no import cycles between the config and the registries --------------------------------------

PACKAGE = Path(__file__).resolve().parents[2] / "privfed"
# The config schema, the field helper, the registries whose names and method tables the config
# validates against, and the models package.
GRAPH_MODULES = (
    "privfed.config",
    "privfed.config_fields",
    "privfed.config_reference",
    "privfed.server.strategies",
    "privfed.adapters.methods",
    *(f"privfed.models.{p.stem}" for p in sorted((PACKAGE / "models").glob("*.py")) if p.stem != "__init__"),
)
REGISTRIES = ("privfed.server.strategies", "privfed.adapters.methods", "privfed.models.registry")


def _module_path(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def _imports(module: str, *, top_level_only: bool = False) -> set[str]:
    """Every privfed module ``module`` imports: at the top, in functions and under TYPE_CHECKING.

    ``from privfed.models import builtin`` counts as importing ``privfed.models.builtin``.
    """
    tree = ast.parse(_module_path(module).read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.startswith("privfed.")}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_import_graph_of_config_and_registries_has_no_cycle() -> None:
    graph = {m: _imports(m) & set(GRAPH_MODULES) for m in GRAPH_MODULES}
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph) or [])}"
    # The ways the cycles used to close, each checked on its own.
    for registry in REGISTRIES:
        assert "privfed.config" not in _imports(registry), f"{registry} imports privfed.config"
    assert "privfed.models.builtin" in _imports("privfed.models.registry")
    assert not {"privfed.models.registry", "privfed.models"} & _imports("privfed.models.builtin")
    # privfed.config reads the registries only when it validates, never when it is imported.
    assert not set(REGISTRIES) & _imports("privfed.config", top_level_only=True)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_each_module_imports_first_in_a_fresh_process() -> None:
    """Imported first, each module works: configs validate against the registries' built-ins.

    One fresh interpreter per module, all started at once (a config load imports the registries,
    which takes seconds).
    """
    check = (
        "from privfed.config import config_from_dict\n"
        "c = config_from_dict({'model': {'name': 'tiny-bert'}, 'server': {'strategy': 'fedadam', "
        "'clients_per_round': 2, 'fedadam': {'tau': 0.5}}, 'adapter': {'lora': {'rank': 2}}})\n"
        "assert c.server.strategy_config.tau == 0.5 and c.adapter.method_config.rank == 2\n"
    )
    runs = {
        module: subprocess.Popen(
            [sys.executable, "-c", f"import {module}\n{check}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for module in GRAPH_MODULES
    }
    failed = {}
    for module, process in runs.items():
        _, stderr = process.communicate(timeout=300)
        if process.returncode:
            failed[module] = stderr[-1500:]
    assert not failed, failed
