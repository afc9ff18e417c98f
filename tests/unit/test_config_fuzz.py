"""Config fuzzing: every field of valid configs mutated into wrong types and absurd values.

A mutated config must either be refused with a one-line :class:`ConfigError`
that names a config field (the mutated one, when its own type or range is what
is wrong), or load into a config whose every value is inside its documented
range and that a run could actually use (the fixed-point codec has a usable
scale, sequences fit the model, privacy has a noise source). Exhaustive over
(field, mutation) pairs for single mutations, plus a seeded sample of
multi-field mutations and a sample that goes through a TOML file.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from privfed.compression.quantize import FixedPointCodec
from privfed.config import (
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    method_tables,
    required_positions,
    schema_fields,
)
from privfed.errors import ConfigError
from privfed.models.registry import get_model_spec

_DELETE = object()

MUTATIONS: list[Any] = [
    _DELETE,
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    7,
    10**6,
    2**62,
    2**63,
    -(2**63),
    10**30,
    0.0,
    -0.0,
    0.5,
    1.0,
    1.5,
    -1.5,
    1e-6,
    5e-324,
    1e6,
    1e308,
    -1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "3",
    "nan",
    "lora",
    "minilm",
    "x" * 300,
    "a\nb",
    "\x00",
    [],
    [1, 2],
    ["query"],
    [["query"]],
    {},
    {"enabled": True},
    {"nested": {"deeper": {"still": 1}}},
]


def _base_configs() -> list[dict[str, Any]]:
    """Valid configs that between them switch on every section."""
    plain = config_to_dict(ExperimentConfig(name="fuzz"))
    secure = copy.deepcopy(plain)
    secure["server"].update(weighting="uniform", clients_per_round=5)
    secure["secagg"].update(enabled=True, bits=16, clip=0.5, loss_clip=20.0)
    private = copy.deepcopy(plain)
    private["partition"]["num_clients"] = 50
    private["privacy"].update(mode="both", delta=1e-3)
    private["privacy"]["sample"].update(noise_multiplier=1.0, target_epsilon=8.0)
    private["privacy"]["user"].update(target_epsilon=4.0, adaptive_clipping=True)
    private["server"].update(strategy="fedadam", fedadam={"beta1": 0.8, "beta2": 0.9, "tau": 0.01})
    prompt = copy.deepcopy(plain)
    prompt["model"].update(name="tiny-llama", max_length=256)
    prompt["adapter"].update(method="prompt_tuning", prompt_tuning={"num_virtual_tokens": 64})  # lora's kept
    for raw in (plain, secure, private, prompt):
        config_from_dict(raw)  # each base is valid
    return [plain, secure, private, prompt]


def _paths(raw: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(value, dict):
            yield from _paths(value, path)


def _mutate(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = copy.deepcopy(value)


def _schema_paths(cls: type = ExperimentConfig, prefix: str = "") -> set[str]:
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for field in schema_fields(cls):
        path = f"{prefix}.{field.name}" if prefix else field.name
        out.add(path)
        if dataclasses.is_dataclass(hints[field.name]):
            out |= _schema_paths(hints[field.name], path)
    for table, table_cls in method_tables(cls).items():  # [server.fedadam], [adapter.lora], ...
        out.add(f"{prefix}.{table}")
        out |= _schema_paths(table_cls, f"{prefix}.{table}")
    return out


def _child_class(cls: type, part: str) -> Any:
    """The annotation of key ``part`` of section ``cls``, a method table's class for a table."""
    tables = method_tables(cls)
    return tables[part] if part in tables else typing.get_type_hints(cls)[part]


SCHEMA_PATHS = _schema_paths()


def _check_rules(path: str, value: Any, rules: dict[str, Any]) -> None:
    """Independent re-check of one accepted value against its documented rule."""
    if "choices" in rules:
        assert value in tuple(rules["choices"]()), (path, value)
    if rules.get("text"):
        assert isinstance(value, str) and 1 <= len(value) <= 200 and value.isprintable(), (path, value)
    if isinstance(value, float):
        assert math.isfinite(value), (path, value)
    if "off" in rules and value == rules["off"]:
        return
    holds = {"ge": value >= rules.get("ge", value), "gt": "gt" not in rules or value > rules["gt"]}
    holds |= {"le": value <= rules.get("le", value), "lt": "lt" not in rules or value < rules["lt"]}
    assert all(holds.values()), (path, value, holds)


def _assert_in_range(node: Any, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(node))
    for field in dataclasses.fields(node):
        path = f"{prefix}.{field.name}" if prefix else field.name
        value = getattr(node, field.name)
        if field not in schema_fields(type(node)):  # the fields holding method tables
            tables = method_tables(type(node))
            for name, table in value if isinstance(value, tuple) else [("", value)] if value is not None else []:
                assert name == "" or isinstance(table, tables[name]), (path, name, table)
                _assert_in_range(table, f"{prefix}.{name or field.name}")
            continue
        expected = hints[field.name]
        if dataclasses.is_dataclass(expected):
            _assert_in_range(value, path)
            continue
        if expected is int:
            assert type(value) is int, (path, value)
        elif expected is float:
            assert type(value) is float, (path, value)
        elif expected is bool:
            assert type(value) is bool, (path, value)
        elif expected is str:
            assert type(value) is str, (path, value)
        else:
            assert isinstance(value, tuple) and all(type(v) is str for v in value), (path, value)
        _check_rules(path, value, dict(field.metadata))


def _assert_usable(config: ExperimentConfig) -> None:
    """What a run needs beyond per-field ranges (the documented cross-field rules)."""
    _assert_in_range(config)
    assert 1 <= config.server.clients_per_round <= config.partition.num_clients
    limit = get_model_spec(config.model.name).max_positions
    assert limit is None or required_positions(config) <= limit
    p = config.privacy
    for wanted, section in ((p.sample_level, p.sample), (p.user_level, p.user)):
        if wanted:
            assert section.noise_multiplier > 0 or section.target_epsilon > 0
        assert section.target_epsilon <= 100.0 and section.noise_multiplier <= 1e4
    if config.secagg.enabled:
        s = config.secagg
        summands = config.partition.num_clients if p.user_level else config.server.clients_per_round
        assert 2 ** (s.bits - 1) - 1 >= summands
        for clip in (s.clip, s.loss_clip):
            scale = FixedPointCodec(bits=s.bits, clip=clip, num_summands=summands).scale
            assert math.isfinite(float(scale)) and float(scale) > 0 and float(scale) * clip >= 1
    # What is accepted round-trips through the resolved TOML a run directory stores.
    assert config_from_dict(tomllib.loads(dump_config(config))) == config


def _assert_refusal(error: ConfigError, path: str, value: Any) -> None:
    message = str(error)
    assert message and "\n" not in message, message
    assert len(message) < 600, message
    named = [p for p in SCHEMA_PATHS if p in message]
    assert named, message  # names some config field
    if path in SCHEMA_PATHS and value is not _DELETE and _wrong_type(path, value):
        assert path in message, (path, value, message)
    assert isinstance(error, ValueError)


def _wrong_type(path: str, value: Any) -> bool:
    """Whether ``value`` cannot be the type of the field at ``path`` (then the error must name it)."""
    node: Any = ExperimentConfig
    for part in path.split("."):
        node = _child_class(node, part)
    if dataclasses.is_dataclass(node):
        return not isinstance(value, dict)
    if node is bool:
        return not isinstance(value, bool)
    if node is int:
        return isinstance(value, bool) or not isinstance(value, int)
    if node is float:
        return isinstance(value, bool) or not isinstance(value, (int, float))
    if node is str:
        return not isinstance(value, str)
    return not isinstance(value, list)


BASES = _base_configs()


@pytest.mark.parametrize("base_index", range(len(BASES)))
def test_every_field_times_every_mutation(base_index: int) -> None:
    base = BASES[base_index]
    outcomes = {"refused": 0, "accepted": 0}
    for path in _paths(base):
        for value in MUTATIONS:
            raw = copy.deepcopy(base)
            _mutate(raw, path, value)
            try:
                config = config_from_dict(raw)
            except ConfigError as error:
                _assert_refusal(error, path, value)
                outcomes["refused"] += 1
            else:
                _assert_usable(config)
                outcomes["accepted"] += 1
    # The fuzzer must exercise both outcomes, or it checks nothing.
    assert outcomes["refused"] > 100 and outcomes["accepted"] > 20, outcomes


def test_random_multi_field_mutations() -> None:
    rng = random.Random(20240514)
    for _ in range(300):
        base = rng.choice(BASES)
        raw = copy.deepcopy(base)
        paths = list(_paths(base))
        for _ in range(rng.randint(2, 4)):
            path = rng.choice(paths)
            value = rng.choice(MUTATIONS)
            try:
                _mutate(raw, path, value)
            except (KeyError, TypeError):
                continue  # a parent was deleted or replaced by a scalar earlier
        try:
            config = config_from_dict(raw)
        except ConfigError as error:
            message = str(error)
            assert message and "\n" not in message and any(p in message for p in SCHEMA_PATHS), message
        else:
            _assert_usable(config)


def test_mutations_through_toml_files(tmp_path: Path) -> None:
    """The file path adds its own failure modes (TOML types, empty files); same contract."""
    rng = random.Random(7)
    path = tmp_path / "c.toml"
    checked = 0
    for _ in range(150):
        base = rng.choice(BASES)
        raw = copy.deepcopy(base)
        field = rng.choice(list(_paths(base)))
        value = rng.choice([m for m in MUTATIONS if m is not None])
        _mutate(raw, field, value)
        path.write_text(tomli_w.dumps(raw))
        try:
            config = load_config(path)
        except ConfigError as error:
            message = str(error)
            assert message and "\n" not in message, message
            assert any(p in message for p in SCHEMA_PATHS) or "config file" in message, message
        else:
            _assert_usable(config)
        checked += 1
    assert checked == 150
