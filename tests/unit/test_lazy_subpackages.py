"""``privfed.client`` and ``privfed.server`` load their names lazily, so the pure-numpy paths stay torch-free.

Validating a config lists the registered strategies (``privfed.server.strategies``) and the upload
stages are pure numpy (``privfed.client.stages``); neither may pull torch or opacus in through a
package ``__init__`` (that cost ~5 s per process before the packages became lazy).
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "opacus", "transformers", "peft", "flwr")
LAZY_PACKAGES = ("privfed.client", "privfed.experiments", "privfed.server")


def _heavy_after(statements: str) -> list[str]:
    script = f"import json, sys\n{statements}\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_numpy_stages_and_config_validation_do_not_load_torch() -> None:
    assert _heavy_after("import privfed.client.stages") == []
    assert _heavy_after("import privfed.server.strategies, privfed.client, privfed.server") == []
    assert _heavy_after("from privfed import load_config\nload_config('configs/tiny.toml')") == []
    # The check can fail: a trainer name really loads torch.
    assert "torch" in _heavy_after("from privfed.client import ClientTrainer")


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_table_matches_all_and_the_type_checking_imports(package: str) -> None:
    # mypy reads the TYPE_CHECKING imports, run time reads _EXPORTS: they must name the same things.
    path = ROOT / Path(*package.split(".")) / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    typed = {
        alias.name: str(node.module) for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    module = importlib.import_module(package)
    assert typed == module._EXPORTS
    assert sorted(module.__all__) == sorted(typed)
    assert set(dir(module)) >= set(module.__all__)
    for name, source in typed.items():
        assert getattr(module, name) is getattr(importlib.import_module(source), name), name


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_unknown_name_is_an_attribute_error(package: str) -> None:
    module = importlib.import_module(package)
    with pytest.raises(AttributeError, match=f"module '{package}' has no attribute 'ClientTrainr'"):
        _ = module.ClientTrainr
