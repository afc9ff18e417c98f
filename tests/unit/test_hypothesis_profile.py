"""The suite's hypothesis profile (tests/conftest.py): derandomized by default, random on request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]


def _draws() -> list[int]:
    seen: list[int] = []

    @settings(max_examples=30)
    @given(st.integers())
    def record(value: int) -> None:
        seen.append(value)

    record()
    return seen


@pytest.mark.skipif(
    os.environ.get("PRIVFED_HYPOTHESIS_PROFILE", "ci") != "ci", reason="checks the default profile only"
)
def test_the_default_profile_draws_the_same_examples_every_run() -> None:
    assert settings.default.derandomize and settings.default.database is None
    assert settings.default.deadline is None and settings.default.print_blob
    first, second = _draws(), _draws()
    assert first == second and len(set(first)) > 10


# CI=true: hypothesis then parents new profiles on its own CI settings (no database); CI runs set it.
@pytest.mark.parametrize("ci", ["", "true"])
def test_explore_is_random_and_keeps_failures(ci: str) -> None:
    script = (
        "import os, sys; sys.path.insert(0, 'tests'); import conftest\n"
        "from hypothesis import settings\n"
        "s = settings.default\n"
        "print(s.derandomize, s.database is not None, s.max_examples, s.deadline, s.print_blob)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PRIVFED_HYPOTHESIS_PROFILE": "explore"}
    if ci:
        env["CI"] = ci
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.split() == ["False", "True", "1000", "None", "True"]
