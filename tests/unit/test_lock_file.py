"""requirements.lock pins the whole environment, agrees with pyproject, and is what is installed."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[2]


def locked() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) from requirements.lock."""
    text = (ROOT / "requirements.lock").read_text().replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = line.split("--hash=")
        name, version = spec.strip().split("==")
        pins[canonicalize_name(name)] = (version, [h.strip() for h in hashes])
    return pins


def test_every_pin_is_exact_and_hashed() -> None:
    pins = locked()
    assert len(pins) > 50
    for name, (version, hashes) in pins.items():
        assert re.fullmatch(r"[0-9][0-9A-Za-z.!+-]*", version), name
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    assert "torch" not in pins  # installed first from the CPU wheel on these machines


def test_lock_satisfies_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    asset_lines = (ROOT / "requirements-assets.txt").read_text().splitlines()
    assets = [Requirement(line) for line in (raw.split("#")[0].strip() for raw in asset_lines) if line]
    pins = locked()
    for req in wanted + assets:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        assert name in pins, f"{req.name} is not in requirements.lock (run `make lock`)"
        assert req.specifier.contains(pins[name][0], prereleases=True), f"{req} but the lock pins {pins[name][0]}"


def test_installed_environment_is_the_locked_one() -> None:
    """What scripts/setup.sh installed (the README's test command runs it) is exactly the lock."""
    mismatched = {}
    for name, (version, _) in locked().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            mismatched[name] = "missing"
            continue
        if installed != version:
            mismatched[name] = installed
    if mismatched:
        pytest.fail(f"installed packages differ from requirements.lock: {mismatched}")
