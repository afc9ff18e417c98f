"""The Python examples in README.md and docs/*.md run as written.

A ```python block preceded by ``<!-- test: NAME -->`` is extracted and executed
in a fresh namespace, in a temporary working directory, with every privfed
registry restored afterwards (the examples register datasets, strategies and
adapter methods that other tests must not see).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from privfed.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- test: ([\w-]+) -->[ \t]*\n```python\n(.*?)\n```", re.S)
EXPECTED = {
    "quickstart",
    "readme-testing",
    "strategy",
    "dataset",
    "adapter-method",
    "attack",
    "upload_stage",
    "transport",
    "command",
    "testing-upload-stage",
}


def doc_examples() -> list[tuple[str, Path, str]]:
    found = []
    for path in DOC_FILES:
        for match in MARKED.finditer(path.read_text(encoding="utf-8")):
            found.append((match.group(1), path, match.group(2)))
    return found


def test_examples_are_found_and_named_once() -> None:
    names = [name for name, _, _ in doc_examples()]
    assert len(names) == len(set(names)), f"duplicate example names: {names}"
    assert set(names) >= EXPECTED, f"missing examples: {sorted(EXPECTED - set(names))}"


def test_marker_without_a_python_block_is_an_error() -> None:
    # Every marker must be followed directly by a python block, or its example would silently not run.
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        assert text.count("<!-- test:") == len(MARKED.findall(text)), f"{path.name}: a test marker without a block"


@pytest.fixture
def isolated_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every privfed Registry gets a private copy of its entries for the test."""
    from privfed.models import model_names

    model_names()  # the built-in models register lazily: before the copies, or they would land in one
    for module in [m for name, m in list(sys.modules.items()) if name.startswith("privfed") and m is not None]:
        for value in list(vars(module).values()):
            if isinstance(value, Registry):
                monkeypatch.setattr(value, "_entries", dict(value._entries))
    yield
    from privfed.data.registry import load_dataset

    load_dataset.cache_clear()


@pytest.mark.parametrize(("name", "path", "code"), [pytest.param(*e, id=e[0]) for e in doc_examples()])
def test_example_runs(
    name: str, path: Path, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_registries: None
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_example_{name.replace('-', '_')}"}
    # dont_inherit: run like a user's script, without this module's `from __future__ import annotations`.
    exec(compile(code, f"{path.name}:{name}", "exec", dont_inherit=True), namespace)
