"""docs/configuration.md is generated from the config schema and cannot drift from it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from privfed import config as cfg
from privfed.config_reference import FALLBACK_HELP, REGENERATE, field_comments, render_reference, sections

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_matches_the_schema() -> None:
    # A fresh process: registries hold only the built-in entries (other tests register more).
    generated = subprocess.run(
        [sys.executable, "-m", "privfed.config_reference"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == generated, f"docs/configuration.md is out of date: run `{REGENERATE}`"


def _leaf_paths(cls: type = cfg.ExperimentConfig, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for field in dataclasses.fields(cls):
        path = f"{prefix}.{field.name}" if prefix else field.name
        sub = cls.__dataclass_fields__[field.name].default_factory  # type: ignore[attr-defined]
        if sub is not dataclasses.MISSING and dataclasses.is_dataclass(sub) and isinstance(sub, type):
            paths |= _leaf_paths(sub, path)
        else:
            paths.add(path)
    return paths


def test_every_key_is_documented_once_with_a_description() -> None:
    documented = [f.path for s in sections() for f in s.fields]
    assert sorted(documented) == sorted(_leaf_paths())
    assert all(f.help.strip() for s in sections() for f in s.fields), "a config key without a description"
    text = render_reference()
    for path in documented:
        assert f"`{path.rsplit('.', 1)[-1]}`" in text


def test_fallback_texts_name_real_fields_and_shadow_only_tags() -> None:
    leaves = _leaf_paths()
    assert set(FALLBACK_HELP) <= leaves
    by_path = {
        (f"{s.path}.{name}" if s.path else name): comment
        for s in sections()
        for name, comment in field_comments(getattr(cfg, s.class_name)).items()
    }
    for path in FALLBACK_HELP:
        assert len(by_path.get(path, "").split()) <= 4, f"{path}: the comment in config.py says more; drop the fallback"


def test_ranges_and_choices_come_from_the_field_rules() -> None:
    rows = {f.path: f for s in sections() for f in s.fields}
    assert rows["privacy.user.noise_multiplier"].allowed == "0 (off) or ≥ 1e-6 and ≤ 10000"
    assert rows["privacy.mode"].allowed == "`none`, `sample`, `user`, `both`"
    assert rows["secagg.bits"].allowed == "≥ 2 and ≤ 52"
    assert rows["privacy.delta"].default == "1e-5"
    assert rows["adapter.target_modules"].type == "list of string"
    assert rows["adapter.target_modules"].default == "[]"
    assert rows["secagg.enabled"].default == "false"


@dataclasses.dataclass(frozen=True)
class _Sample:
    # Two lines above
    # the field.
    a: int = 1  # and a trailing one
    b: str = "x#y"

    # Separated by a blank line from c's comment? No: directly above c.
    c: float = 0.5  # tail
    # A comment after the last field belongs to nothing.


def test_field_comments_reads_above_and_trailing_comments() -> None:
    comments = field_comments(_Sample)
    assert comments == {
        "a": "Two lines above the field. and a trailing one",
        "c": "Separated by a blank line from c's comment? No: directly above c. tail",
    }
