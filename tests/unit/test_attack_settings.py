"""Attack settings tables are parsed by the config machinery: typed one-line errors, unknown keys refused."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from attacks.audit.federated import AuditSettings
from attacks.inversion.sweep import ImageSweep, InversionSweep, TextSweep, load_inversion_config
from attacks.membership import MembershipSettings, SecretSharerSettings
from privfed import ConfigError


@pytest.mark.parametrize(
    ("parse", "table", "message"),
    [
        (AuditSettings.from_mapping, {"num_canaries": 1}, "audit.num_canaries must be >= 2; got 1"),
        (AuditSettings.from_mapping, {"confidence": 1.0}, "audit.confidence must be > 0.0 and < 1.0; got 1.0"),
        (AuditSettings.from_mapping, {"canary_norm": "big"}, "audit.canary_norm must be a number; got 'big' (str)"),
        (AuditSettings.from_mapping, {"epsilons": [1.0, -2]}, "audit.epsilons must be a non-empty list of values > 0"),
        (AuditSettings.from_mapping, {"canaries": 3}, "unknown key audit.canaries in audit; allowed keys: "),
        (MembershipSettings.from_mapping, {"num_models": 2}, "membership.num_models must be >= 4; got 2"),
        (MembershipSettings.from_mapping, {"num_models": 5}, "membership.num_models must be even"),
        (MembershipSettings.from_mapping, {"unit": "x"}, "membership.unit must be one of 'record', 'client'; got 'x'"),
        (MembershipSettings.from_mapping, {"rmia_gamma": math.inf}, "membership.rmia_gamma must be a finite number"),
        (SecretSharerSettings.from_mapping, {"candidates": 5}, "exposure.candidates must be >= 10; got 5"),
        (SecretSharerSettings.from_mapping, {"repeats": [1, "2"]}, "exposure.repeats[1] must be an integer; got '2'"),
        (SecretSharerSettings.from_mapping, {"space": 100, "candidates": 100}, "exposure.candidates must be below"),
        (SecretSharerSettings.from_mapping, {"secrets": 3}, "unknown key exposure.secrets in exposure"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key(parse: Any, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(table)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_direct_construction_is_checked_by_the_same_rules() -> None:
    with pytest.raises(ConfigError, match=r"^audit\.num_unobserved must be >= 10; got 3$"):
        AuditSettings(num_unobserved=3)
    with pytest.raises(ConfigError, match=r"^inversion\.image\.steps must be >= 1; got 0$"):
        ImageSweep(steps=0)
    with pytest.raises(ConfigError, match=r"^inversion\.text\.ranks must be a non-empty list of integers 1\.\.1024"):
        TextSweep(ranks=(0,))


def test_good_tables_parse_to_the_settings_they_name() -> None:
    audit = AuditSettings.from_mapping({"epsilons": ["inf", 8, 1.0], "num_canaries": 1000})
    assert audit == AuditSettings(epsilons=(math.inf, 8.0, 1.0), num_canaries=1000)
    assert MembershipSettings.from_mapping({"rmia_gamma": 1}).rmia_gamma == 1.0
    assert SecretSharerSettings.from_mapping({"repeats": [1, 64]}).repeats == (1, 64)


def test_inversion_tables_nest_and_name_their_keys(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[inversion]\nseed = 3\n[inversion.text]\nranks = [4]\n[inversion.image]\nsteps = 5\n")
    sweep = load_inversion_config(path)
    assert sweep == InversionSweep(seed=3, text=TextSweep(ranks=(4,)), image=ImageSweep(steps=5))
    for body, message in (
        ("[inversion.text]\nmax_length = 4\n", "inversion.text.max_length must be >= 8 and <= 512; got 4"),
        ("[inversion]\ndesign = 'random'\n", "inversion.design must be one of 'axes', 'grid'; got 'random'"),
        ("[inversion]\nmodalities = ['audio']\n", "inversion.modalities must be a non-empty list of each one of"),
        ("[inversion.image]\nattack = 'x'\n", "inversion.image.attack must be one of 'dlg', 'inverting_gradients'"),
        ("[inversion.text]\nbatch_sizes = [0]\n", "inversion.text.batch_sizes must be a non-empty list of integers"),
        ("[inversion]\nsteps = 1\n", "unknown key inversion.steps in inversion"),
    ):
        path.write_text(body)
        with pytest.raises(ConfigError) as info:
            load_inversion_config(path)
        assert message in str(info.value)
