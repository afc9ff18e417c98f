"""``--set`` overrides typed by the schema, the privacy plan of ``privfed validate``, and the keys that apply."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from privfed.config import apply_overrides, config_from_dict, config_to_dict, load_config
from privfed.errors import ConfigError
from privfed.experiments.plan import applicable_config, privacy_plan
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.calibrate import calibrate_noise_multiplier
from privfed.privacy.events import SampledGaussianEvent

BASE: dict[str, Any] = {"name": "t", "partition": {"num_clients": 20}, "server": {"clients_per_round": 5}}


def test_values_are_typed_by_the_schema() -> None:
    raw = apply_overrides(
        BASE,
        [
            "server.rounds=7",
            "privacy.delta=1e-4",
            "client.learning_rate=1",  # an int where a float is wanted is fine
            "secagg.enabled=TRUE",
            "server.strategy=fedadam",
            "name='quoted run'",
            "adapter.lora.target_modules=query, value",
            "privacy.mode=user",
            "privacy.user.target_epsilon=3",
        ],
    )
    assert raw["server"] == {"clients_per_round": 5, "rounds": 7, "strategy": "fedadam"}
    assert raw["privacy"] == {"delta": 1e-4, "mode": "user", "user": {"target_epsilon": 3}}
    assert raw["secagg"] == {"enabled": True} and raw["name"] == "quoted run"
    assert raw["adapter"]["lora"]["target_modules"] == ["query", "value"]
    assert BASE["server"] == {"clients_per_round": 5}  # the input is not changed
    config = config_from_dict(
        {**raw, "secagg": {"enabled": False}, "server": {**raw["server"], "weighting": "uniform"}}
    )
    assert config.server.rounds == 7 and config.privacy.user.target_epsilon == 3.0
    assert config.adapter.method_config.target_modules == ("query", "value") and config.client.learning_rate == 1.0
    assert apply_overrides(BASE, ['adapter.lora.target_modules=["q"]', "adapter.lora.target_modules="])["adapter"] == {
        "lora": {"target_modules": []}
    }  # later assignments win


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("server.rounds", "KEY=VALUE"),
        ("=3", "KEY=VALUE"),
        ("server.roundz=3", "unknown key 'roundz' in server; allowed keys:"),
        ("privacy.usr.clip_norm=1", "unknown key 'usr' in privacy"),
        ("server=3", "server is a section"),
        ("server.rounds.x=3", "server.rounds is a value, not a section"),
        ("secagg.enabled=yes", "secagg.enabled must be true or false; got 'yes'"),
        ("server.rounds=five", "server.rounds must be an integer; got 'five'"),
        ("privacy.delta=small", "privacy.delta must be a number"),
    ],
)
def test_bad_assignments_name_the_key(assignment: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(BASE, [assignment])
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("assignment", "expected"),
    [
        ("server.rounds=2.5", "server.rounds must be an integer; got 2.5 (float)"),
        ("server.rounds=0", "server.rounds must be >= 1 and <= 1000000; got 0"),
        ("privacy.delta=inf", "privacy.delta must be a finite number"),
        ("server.strategy=fedsgd", "server.strategy must be one of"),
    ],
)
def test_values_are_validated_like_the_file(tmp_path: Path, assignment: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text('name = "c"\n[server]\nrounds = 3\n')
    assert load_config(path, overrides=["server.rounds=4"]).server.rounds == 4
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, overrides=[assignment])


def test_command_tables_take_any_key() -> None:
    raw = apply_overrides({"audit": {"canaries": 10}}, ["audit.canaries=20", "audit.kind=one_shot"], tables=("audit",))
    assert raw["audit"] == {"canaries": 20, "kind": "one_shot"}


def test_user_level_plan_matches_the_accountant() -> None:
    config = config_from_dict(
        {
            **BASE,
            "server": {"clients_per_round": 5, "rounds": 30},
            "privacy": {"mode": "user", "delta": 1e-3, "user": {"target_epsilon": 4.0}},
        }
    )
    report = privacy_plan(config)
    assert report.not_private is None and [lv.unit for lv in report.levels] == ["user"]
    level = report.levels[0]
    sigma = calibrate_noise_multiplier(target_epsilon=4.0, delta=1e-3, sample_rate=0.25, steps=30, accountant="rdp")
    assert level.noise_multiplier == pytest.approx(sigma) and level.calibrated
    assert level.sample_rates == (0.25, 0.25) and level.steps == (30, 30)
    assert 3.5 < level.epsilon <= 4.0 + 1e-6


def test_record_level_plan_uses_each_clients_rate_and_steps() -> None:
    config = config_from_dict(
        {
            **BASE,
            "server": {"clients_per_round": 5, "rounds": 4},
            "client": {"batch_size": 10, "local_epochs": 2},
            "privacy": {"mode": "sample", "delta": 1e-3, "sample": {"noise_multiplier": 1.1}},
        }
    )
    sizes = [40, 100]
    report = privacy_plan(config, sizes=sizes)
    level = report.levels[0]
    assert level.unit == "record" and not level.calibrated and level.noise_multiplier == 1.1
    assert level.sample_rates == (0.1, 0.25)
    assert level.steps == (4 * 2 * 4, 4 * 2 * 10)  # rounds * epochs * ceil(n / batch)
    worst = max(
        compute_epsilon(
            [SampledGaussianEvent(noise_multiplier=1.1, sample_rate=q, steps=s, scope="sample")],
            delta=1e-3,
            accountant="rdp",
        )
        for q, s in ((0.25, 32), (0.1, 80))
    )
    assert level.epsilon == pytest.approx(worst) and math.isfinite(worst)


def test_not_private_says_why() -> None:
    report = privacy_plan(
        config_from_dict(
            {**BASE, "secagg": {"enabled": True}, "server": {"clients_per_round": 5, "weighting": "uniform"}}
        )
    )
    assert report.levels == () and report.not_private is not None
    assert "privacy.mode = 'none'" in report.not_private and "secure aggregation" in report.not_private


def test_applicable_config_drops_unused_keys_and_rebuilds_the_experiment() -> None:
    config = config_from_dict({**BASE, "privacy": {"mode": "sample", "sample": {"target_epsilon": 3.0}}})
    shown = applicable_config(config)
    assert "user" not in shown["privacy"] and "sample" in shown["privacy"]
    assert "fedadam" not in shown["server"]
    assert shown["secagg"] == {"enabled": False}
    assert "prompt_tuning" not in shown["adapter"] and shown["adapter"]["lora"]["rank"] == 8
    assert not {"path", "text_column", "label_column", "client_column"} & set(shown["data"])
    assert "alpha" not in shown["partition"]
    assert config_from_dict(shown) == config  # the left-out keys hold their defaults here
    adam = config_from_dict({**BASE, "server": {"clients_per_round": 5, "strategy": "fedadam"}})
    assert set(applicable_config(adam)["server"]["fedadam"]) == {"beta1", "beta2", "tau"}
    # A table of a method not selected is checked when the config loads, and not shown (not used).
    unused = config_from_dict({**BASE, "adapter": {"prompt_tuning": {"num_virtual_tokens": 4}}})
    assert "prompt_tuning" not in applicable_config(unused)["adapter"]
    assert applicable_config(adam)["privacy"] == {"mode": "none"}
    both = config_from_dict(
        {
            **BASE,
            "privacy": {
                "mode": "both",
                "delta": 1e-3,
                "sample": {"noise_multiplier": 1.0},
                "user": {"noise_multiplier": 1.0},
            },
        }
    )
    assert {"sample", "user"} <= set(applicable_config(both)["privacy"])
    assert config_to_dict(both)["privacy"]["user"]["target_quantile"] == 0.5
    assert "target_quantile" not in applicable_config(both)["privacy"]["user"]  # adaptive clipping is off


def test_sweep_and_audit_print_a_header_per_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from privfed.experiments import sweep

    config = config_from_dict(
        {**BASE, "seed": 4, "privacy": {"mode": "user", "delta": 1e-3, "user": {"target_epsilon": 1.0}}}
    )
    monkeypatch.setattr(sweep, "run_sweep_point", lambda *a, **k: {"final_eval_accuracy": 0.5})
    sweep.run_sweep(config, tmp_path / "s", [1.0, 8.0, math.inf], quiet=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("point")]
    assert lines == ["point 1/3: ε=1, seed=4", "point 2/3: ε=8, seed=4", "point 3/3: ε=inf, seed=4"]
