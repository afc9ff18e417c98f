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
    for field in cfg.schema_fields(cls):
        path = f"{prefix}.{field.name}" if prefix else field.name
        sub = cls.__dataclass_fields__[field.name].default_factory  # type: ignore[attr-defined]
        if sub is not dataclasses.MISSING and dataclasses.is_dataclass(sub) and isinstance(sub, type):
            paths |= _leaf_paths(sub, path)
        else:
            paths.add(path)
    for table, table_cls in cfg.method_tables(cls).items():
        paths |= _leaf_paths(table_cls, f"{prefix}.{table}")
    return paths


def _section_classes() -> dict[str, type]:
    """``{section path: its class}``, method tables included."""
    out: dict[str, type] = {}

    def walk(cls: type, prefix: str) -> None:
        out[prefix] = cls
        for field in cfg.schema_fields(cls):
            sub = cls.__dataclass_fields__[field.name].default_factory  # type: ignore[attr-defined]
            if sub is not dataclasses.MISSING and dataclasses.is_dataclass(sub) and isinstance(sub, type):
                walk(sub, f"{prefix}.{field.name}" if prefix else field.name)
        for table, table_cls in cfg.method_tables(cls).items():
            walk(table_cls, f"{prefix}.{table}")

    walk(cfg.ExperimentConfig, "")
    return out


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
    classes = _section_classes()
    by_path = {
        (f"{s.path}.{name}" if s.path else name): comment
        for s in sections()
        for name, comment in field_comments(classes[s.path]).items()
    }
    for path in FALLBACK_HELP:
        assert len(by_path.get(path, "").split()) <= 4, f"{path}: the comment in config.py says more; drop the fallback"


def test_ranges_and_choices_come_from_the_field_rules() -> None:
    rows = {f.path: f for s in sections() for f in s.fields}
    assert rows["privacy.user.noise_multiplier"].allowed == "0 (off) or ≥ 1e-6 and ≤ 10000"
    assert rows["privacy.mode"].allowed == "`none`, `sample`, `user`, `both`"
    assert rows["secagg.bits"].allowed == "≥ 2 and ≤ 52"
    assert rows["privacy.delta"].default == "1e-5"
    assert rows["adapter.lora.target_modules"].type == "list of string"
    assert rows["adapter.lora.target_modules"].default == "[]"
    assert rows["server.fedadam.beta1"].allowed == "≥ 0 and < 1"
    assert rows["adapter.prompt_tuning.num_virtual_tokens"].allowed == "≥ 1 and ≤ 512"
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


def test_every_registered_method_table_has_a_section_that_names_its_readers() -> None:
    by_path = {s.path: s for s in sections()}
    assert {"server.fedadam", "adapter.lora", "adapter.ia3", "adapter.prompt_tuning"} <= set(by_path)
    assert by_path["server.fedadam"].class_name == "FedAdamConfig"
    assert "`adapter.method` is `ffa_lora` or `lora`" in by_path["adapter.lora"].summary
    # The flat keys moved out of [server] and [adapter]; the holder fields are not keys.
    assert not {"server.beta1", "server.strategy_config", "adapter.rank", "adapter.method_config"} & {
        f.path for s in sections() for f in s.fields
    }


def test_a_strategy_registered_with_a_config_gets_its_section() -> None:
    from privfed.server.strategies import FedAvg, register_strategy, unregister_strategy

    @dataclasses.dataclass(frozen=True)
    class Trim:
        """Trimmed mean."""

        fraction: float = dataclasses.field(default=0.1, metadata={"ge": 0.0, "lt": 0.5, "help": "Trimmed share."})

    register_strategy("trim_doc_test", lambda server: FedAvg(), config=Trim)
    try:
        rows = {f.path: f for s in sections() for f in s.fields}
        assert rows["server.trim_doc_test.fraction"].allowed == "≥ 0 and < 0.5"
        assert "## `[server.trim_doc_test]`" in render_reference()
    finally:
        unregister_strategy("trim_doc_test")
    assert "server.trim_doc_test" not in {s.path for s in sections()}
