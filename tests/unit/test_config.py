from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from privfed.adapters.methods import LoraAdapterConfig, PromptTuningAdapterConfig
from privfed.cli import main
from privfed.config import (
    AdapterConfig,
    ExperimentConfig,
    ServerConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    read_config_file,
    replace_path,
    replace_paths,
    validate_against_model,
)
from privfed.errors import ConfigError
from privfed.server.strategies import FedAdamConfig

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def test_defaults_are_valid_and_round_trip(tmp_path: Path) -> None:
    config = config_from_dict({})
    assert config == ExperimentConfig()
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    "name",
    [
        "demo.toml",
        "smollm2_fortunes.toml",
        "tiny.toml",
        "dp_tweets_gpu.toml",
        "dp_tweets_gpu_fedadam.toml",
        "cohort_tweets_gpu.toml",
    ],
)
def test_shipped_configs_load_and_round_trip(name: str, tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / name)
    path = tmp_path / "again.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        ({"sever": {}}, ["unknown key sever", "allowed keys"]),
        ({"server": {"roundz": 3}}, ["server.roundz", "rounds"]),
        ({"server": {"rounds": "3"}}, ["server.rounds", "integer", "'3'"]),
        ({"server": {"rounds": True}}, ["server.rounds", "integer", "True"]),
        ({"server": {"rounds": 0}}, ["server.rounds", ">= 1", "got 0"]),
        ({"client": {"learning_rate": -0.1}}, ["client.learning_rate", "> 0.0", "-0.1"]),
        ({"client": {"learning_rate": float("nan")}}, ["client.learning_rate", "finite"]),
        ({"data": {"eval_fraction": 1.0}}, ["data.eval_fraction", "< 1.0", "1.0"]),
        ({"model": {"name": "gpt-5"}}, ["model.name", "'minilm'", "'gpt-5'"]),
        ({"model": {"device": "tpu"}}, ["model.device", "'cuda'", "'tpu'"]),
        ({"client": {"sampling_rate": 1.5}}, ["client.sampling_rate", "<= 1.0", "1.5"]),
        ({"adapter": {"method": "dora"}}, ["adapter.method", "'lora'", "'dora'"]),
        ({"adapter": {"lora": {"target_modules": "query"}}}, ["adapter.lora.target_modules", "list"]),
        ({"adapter": {"lora": {"target_modules": ["query", 3]}}}, ["adapter.lora.target_modules[1]", "string"]),
        ({"adapter": {"lora": {"rank": 0}}}, ["adapter.lora.rank", ">= 1", "got 0"]),
        ({"adapter": {"method": "full", "ia3": {"target_modules": [1]}}}, ["adapter.ia3.target_modules[0]"]),
        ({"server": {"fedadam": {"beta1": 1.0}}}, ["server.fedadam.beta1", "< 1.0", "1.0"]),
        ({"server": {"fedadam": {"beta3": 0.5}}}, ["unknown key server.fedadam.beta3", "beta1, beta2, tau"]),
        ({"server": {"fedadam": 0.5}}, ["server.fedadam must be a table", "0.5"]),
        ({"server": {"fedavg": {}}}, ["unknown config section server.fedavg", "method tables: fedadam"]),
        ({"adapter": {"dora": {"rank": 2}}}, ["unknown config section adapter.dora", "ia3, lora, prompt_tuning"]),
        ({"partition": {"method": "zipf"}}, ["partition.method", "'dirichlet'"]),
        ({"server": {"clients_per_round": 20}}, ["server.clients_per_round", "partition.num_clients (10)", "20"]),
        ({"model": 3}, ["model", "table"]),
        ({"seed": -1}, ["seed", ">= 0", "-1"]),
    ],
)
def test_bad_values_name_field_value_and_rule(raw: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert isinstance(info.value, ValueError)


def test_load_config_reports_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nrounds = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_replace_path_revalidates() -> None:
    config = config_from_dict({})
    assert replace_path(config, "server.rounds", 7).server.rounds == 7
    with pytest.raises(ConfigError, match=r"server\.rounds"):
        replace_path(config, "server.rounds", -7)
    with pytest.raises(ConfigError, match="unknown config key"):
        replace_path(config, "server.nope", 1)


def test_replace_paths_validates_once_all_changes_are_in() -> None:
    config = config_from_dict({})
    # Switching privacy on needs its budget in the same step: one at a time the first change fails.
    with pytest.raises(ConfigError, match="target_epsilon"):
        replace_path(config, "privacy.mode", "sample")
    both = replace_paths(config, {"privacy.mode": "sample", "privacy.sample.target_epsilon": 4.0})
    assert both.privacy.mode == "sample" and both.privacy.sample.target_epsilon == 4.0
    assert config.privacy.mode == "none"  # the input is left alone
    with pytest.raises(ConfigError, match=r"privacy\.nope"):
        replace_paths(config, {"privacy.mode": "sample", "privacy.nope": 1})


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[client]\nbatch_size = 0\n")
    status = main(["run", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert lines == ["privfed: error: client.batch_size must be >= 1 and <= 65536; got 0"]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()  # nothing created for an invalid config


# --- issue 14 §5: hostile config files and absurd values -----------------------------------


def _one_line_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_a_config_that_is_not_utf8_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))
    assert "not UTF-8" in _one_line_error(path) and "0xe9" in _one_line_error(path)


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000 + "]" * 5000,
        "a = " + "{b = " * 5000 + "1" + "}" * 5000,
        'name = "x"\nmodel = ' + "[" * 40 + "]" * 40,
    ],
)
def test_a_config_nested_thousands_deep_is_one_line_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(text)
    assert "nests tables or arrays" in _one_line_error(path)


def test_an_empty_config_file_is_refused(tmp_path: Path) -> None:
    """An empty file used to start a 6-minute run with every default."""
    for text in ("", "\n# only a comment\n"):
        path = tmp_path / "empty.toml"
        path.write_text(text)
        message = _one_line_error(path)
        assert "is empty" in message and "`name`" in message


def test_a_config_file_must_set_name(tmp_path: Path) -> None:
    path = tmp_path / "noname.toml"
    path.write_text("[server]\nrounds = 2\n")
    assert _one_line_error(path).startswith("name is required")
    path.write_text('name = "ok"\n[server]\nrounds = 2\n')
    assert load_config(path).server.rounds == 2
    # The Python API keeps its defaults (tests and notebooks build configs from dicts).
    assert config_from_dict({}).name == "experiment"


def test_cli_reports_a_non_utf8_config_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"name = '\xff\xfe'\n")
    status = main(["run", str(bad), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "not UTF-8" in err


@pytest.mark.parametrize(
    ("raw", "fragments"),
    [
        # target_epsilon = 1e308 used to run and report epsilon = 1.27e18.
        (
            {"privacy": {"mode": "sample", "sample": {"target_epsilon": 1e308}}},
            ["privacy.sample.target_epsilon", "100"],
        ),
        ({"privacy": {"mode": "user", "user": {"target_epsilon": 101.0}}}, ["privacy.user.target_epsilon", "<= 100"]),
        # noise_multiplier = 1e308 raised OverflowError in the accountant; 1e-200 ZeroDivisionError.
        (
            {"privacy": {"mode": "user", "user": {"noise_multiplier": 1e308}}},
            ["privacy.user.noise_multiplier", "1e+308"],
        ),
        ({"privacy": {"mode": "sample", "sample": {"noise_multiplier": 1e-200}}}, ["noise_multiplier", ">= 1e-06"]),
        # secagg.clip = 1e308 gave the codec scale 0 and a NaN model.
        ({"secagg": {"clip": 1e308}}, ["secagg.clip", "<= 1000000.0"]),
        ({"secagg": {"clip": 5e-324}}, ["secagg.clip", ">= 1e-06"]),
        ({"secagg": {"loss_clip": 1e308}}, ["secagg.loss_clip"]),
        ({"secagg": {"loss_clip": 0.25}}, ["secagg.loss_clip", ">= 1.0"]),
        ({"partition": {"alpha": 1e-300}}, ["partition.alpha", ">= 0.001"]),
        ({"partition": {"alpha": 1e308}}, ["partition.alpha", "<= 1000.0"]),
        ({"partition": {"shards_per_client": 10**12}}, ["partition.shards_per_client"]),
        ({"name": ""}, ["name", "printable"]),
        ({"name": "two\nlines"}, ["name", "printable"]),
        ({"model": {"name": "x" * 10_000}}, ["model.name", "..."]),
    ],
)
def test_absurd_values_are_refused_at_load(raw: dict[str, object], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_secagg_bits_must_hold_the_whole_sum() -> None:
    base = {"server": {"weighting": "uniform", "clients_per_round": 200}, "partition": {"num_clients": 300}}
    with pytest.raises(ConfigError, match=r"secagg\.bits must be at least 9 .* got 8"):
        config_from_dict({**base, "secagg": {"enabled": True, "bits": 8}})
    assert config_from_dict({**base, "secagg": {"enabled": True, "bits": 9}}).secagg.bits == 9
    # Under user-level DP the codec leaves room for every client (Poisson cohorts).
    private = {
        "server": {"weighting": "uniform", "clients_per_round": 10},
        "partition": {"num_clients": 1000},
        "privacy": {"mode": "user", "delta": 1e-4, "user": {"noise_multiplier": 1.0}},
    }
    with pytest.raises(ConfigError, match=r"secagg\.bits must be at least 11 .*partition\.num_clients"):
        config_from_dict({**private, "secagg": {"enabled": True, "bits": 10}})


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"model": {"name": "minilm", "max_length": 600}}, "model.max_length must be <= 512"),
        ({"model": {"name": "tiny-llama", "max_length": 1024}}, "model.max_length must be <= 512"),
        (
            {"model": {"name": "tiny-bert", "max_length": 510}, "adapter": {"method": "prompt_tuning"}},
            "model.max_length + adapter.prompt_tuning.num_virtual_tokens must be <= 512",
        ),
        (
            {
                "model": {"name": "minilm", "max_length": 256},
                "adapter": {"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 300}},
            },
            "got 256 + 300 = 556",
        ),
    ],
)
def test_sequence_length_is_checked_against_the_model_positions(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        config_from_dict(raw)


def test_lengths_that_fit_the_model_load() -> None:
    assert config_from_dict({"model": {"name": "minilm", "max_length": 512}}).model.max_length == 512
    fits = {"model": {"name": "tiny-bert", "max_length": 504}, "adapter": {"method": "prompt_tuning"}}
    assert config_from_dict(fits).adapter.method_config.num_virtual_tokens == 8
    # Virtual tokens count only for prompt tuning (a table for it is checked, not used, under LoRA).
    unused = {"model": {"max_length": 512}, "adapter": {"prompt_tuning": {"num_virtual_tokens": 512}}}
    assert config_from_dict(unused).model.max_length == 512
    assert config_from_dict({"model": {"name": "smollm2", "max_length": 4096}}).model.max_length == 4096


def test_validate_against_model_reads_the_loaded_model_config() -> None:
    """For a registered model that does not declare max_positions, the runner checks after loading."""
    config = config_from_dict({"model": {"max_length": 128}, "adapter": {"method": "prompt_tuning"}})
    validate_against_model(config, SimpleNamespace(config=SimpleNamespace(max_position_embeddings=136)))
    with pytest.raises(ConfigError, match=r"must be <= 100 .* got 128 \+ 8 = 136"):
        validate_against_model(config, SimpleNamespace(config=SimpleNamespace(max_position_embeddings=100)))
    with pytest.raises(ConfigError, match="<= 64"):
        validate_against_model(config, SimpleNamespace(config=SimpleNamespace(n_positions=64)))
    validate_against_model(config, SimpleNamespace(config=SimpleNamespace()))  # unknown: nothing to check


def test_every_shipped_config_loads(tmp_path: Path) -> None:
    """Each file under configs/ loads as its command reads it (extra tables are the attack drivers')."""
    from attacks.inversion.sweep import load_inversion_config

    extras = {"audit", "exposure", "membership"}
    paths = sorted((REPO / "configs").glob("*.toml"))
    assert len(paths) >= 15
    for path in paths:
        raw = read_config_file(path)
        if "inversion" in raw:
            load_inversion_config(path)
            continue
        for table in extras & set(raw):
            raw.pop(table)
        config = config_from_dict(raw)
        assert "name" in raw, path
        again = tmp_path / "again.toml"
        again.write_text(dump_config(config))
        assert load_config(again) == config, path


# --- per-method tables -------------------------------------------------------------------


def test_method_tables_hold_the_selected_methods_settings() -> None:
    config = config_from_dict(
        {
            "server": {"strategy": "fedadam", "fedadam": {"beta1": 0.8}},
            "adapter": {"method": "ffa_lora", "lora": {"rank": 4}},
        }
    )
    assert config.server.strategy_config == FedAdamConfig(beta1=0.8)
    assert config.adapter.method_config == LoraAdapterConfig(rank=4)  # ffa_lora reads [adapter.lora]
    resolved = config_to_dict(config)
    assert resolved["server"]["fedadam"] == {"beta1": 0.8, "beta2": 0.99, "tau": 0.001}
    assert not {"beta1", "beta2", "tau"} & set(resolved["server"])
    assert resolved["adapter"]["lora"]["rank"] == 4 and "rank" not in resolved["adapter"]
    # Defaults are filled in for the selected method only; no table for a method without settings.
    plain = config_to_dict(config_from_dict({}))
    assert "lora" in plain["adapter"] and "fedadam" not in plain["server"]
    full = config_to_dict(config_from_dict({"adapter": {"method": "full"}}))
    assert set(full["adapter"]) == {"method", "train_head"}


def test_a_table_for_a_method_not_selected_is_checked_kept_and_used_when_selected(tmp_path: Path) -> None:
    config = config_from_dict({"server": {"fedadam": {"tau": 0.5}}, "adapter": {"prompt_tuning": {}}})
    assert config.server.strategy_config is None
    assert config.server.other_strategy_configs == (("fedadam", FedAdamConfig(tau=0.5)),)
    path = tmp_path / "c.toml"
    path.write_text(dump_config(replace_path(config, "name", "kept")))
    assert load_config(path) == replace_path(config, "name", "kept")  # round-trips through the resolved file
    adam = replace_path(config, "server.strategy", "fedadam")
    assert adam.server.strategy_config == FedAdamConfig(tau=0.5) and adam.server.other_strategy_configs == ()
    prompt = replace_paths(config, {"adapter.method": "prompt_tuning", "adapter.prompt_tuning.num_virtual_tokens": 3})
    assert prompt.adapter.method_config == PromptTuningAdapterConfig(num_virtual_tokens=3)
    assert dict(prompt.adapter.other_method_configs) == {"lora": LoraAdapterConfig()}
    # A table not written yet can be set by its dotted path (it starts from the method's defaults).
    assert replace_path(config, "server.fedadam.beta2", 0.5).server.other_strategy_configs[0][1].beta2 == 0.5


def test_python_construction_fills_in_and_checks_the_method_config() -> None:
    assert AdapterConfig().method_config == LoraAdapterConfig()
    assert AdapterConfig(method="full").method_config is None
    assert ServerConfig().strategy_config is None
    assert ServerConfig(strategy="fedadam").strategy_config == FedAdamConfig()
    moved = ServerConfig(strategy="fedadam", other_strategy_configs=(("fedadam", FedAdamConfig(beta1=0.5)),))
    assert moved == ServerConfig(strategy="fedadam", strategy_config=FedAdamConfig(beta1=0.5))
    with pytest.raises(ConfigError, match=r"adapter\.method_config must be a PromptTuningAdapterConfig"):
        AdapterConfig(method="prompt_tuning", method_config=LoraAdapterConfig())
    with pytest.raises(ConfigError, match=r"server\.strategy 'fedavg' has no settings of its own"):
        ServerConfig(strategy_config=FedAdamConfig())
    with pytest.raises(ConfigError, match=r"server\.fedadam must be a FedAdamConfig"):
        ServerConfig(other_strategy_configs=(("fedadam", LoraAdapterConfig()),))
    with pytest.raises(ConfigError, match=r"unknown config section adapter\.dora"):
        AdapterConfig(other_method_configs=(("dora", LoraAdapterConfig()),))


@pytest.mark.parametrize(
    ("file", "warned", "expected"),
    [
        (
            "resolved_before_method_tables_fedadam.toml",
            [r"server\.beta1 -> server\.fedadam\.beta1", r"adapter\.rank -> adapter\.lora\.rank"],
            {
                "name": "old-fedadam",
                "model": {"name": "tiny-bert"},
                "server": {"strategy": "fedadam", "clients_per_round": 4, "fedadam": {"beta1": 0.8}},
                "adapter": {"lora": {"rank": 4, "alpha": 8, "target_modules": ["query"]}},
            },
        ),
        (
            "resolved_before_method_tables_prompt.toml",
            [
                r"adapter\.num_virtual_tokens -> adapter\.prompt_tuning\.num_virtual_tokens",
                r"adapter\.rank ignored \(adapter\.method 'prompt_tuning' does not use it\)",
                r"server\.beta1 ignored \(server\.strategy 'fedavg'",
            ],
            {
                "name": "old-prompt",
                "model": {"name": "tiny-llama"},
                "adapter": {"method": "prompt_tuning", "prompt_tuning": {"num_virtual_tokens": 16}},
            },
        ),
    ],
)
def test_resolved_configs_written_before_method_tables_load_as_the_same_experiment(
    file: str, warned: list[str], expected: dict[str, object]
) -> None:
    """config.resolved.toml of run directories written with flat keys (server.beta1, adapter.rank, ...)."""
    with pytest.warns(DeprecationWarning) as record:
        config = load_config(DATA / file)
    messages = " ".join(str(w.message) for w in record)
    for pattern in warned:
        assert re.search(pattern, messages), (pattern, messages)
    assert config == config_from_dict(expected)


def test_old_flat_keys_are_moved_checked_or_refused() -> None:
    with pytest.warns(DeprecationWarning, match=r"adapter\.target_modules -> adapter\.ia3\.target_modules"):
        ia3 = config_from_dict({"adapter": {"method": "ia3", "target_modules": ["value"], "rank": 4}})
    assert ia3.adapter.method_config.target_modules == ("value",) and ia3.adapter.other_method_configs == ()
    # A key the method does not use is still checked as before the move, then dropped.
    with pytest.raises(ConfigError, match=r"adapter\.rank must be >= 1 and <= 4096; got 0"):
        config_from_dict({"adapter": {"method": "full", "rank": 0}})
    with pytest.raises(ConfigError, match=r"server\.tau must be a number"):
        config_from_dict({"server": {"tau": "small"}})
    with pytest.raises(ConfigError, match=r"adapter\.rank and adapter\.lora\.rank are both set; keep adapter\.lora"):
        config_from_dict({"adapter": {"rank": 4, "lora": {"rank": 8}}})


def test_set_reaches_method_tables_and_moves_old_keys() -> None:
    raw = apply_overrides({"server": {"strategy": "fedadam"}}, ["server.fedadam.beta1=0.5", "adapter.lora.rank=2"])
    assert raw == {"server": {"strategy": "fedadam", "fedadam": {"beta1": 0.5}}, "adapter": {"lora": {"rank": 2}}}
    resolved = config_to_dict(config_from_dict({}))
    with pytest.warns(DeprecationWarning, match=r"adapter\.rank is deprecated; it is adapter\.lora\.rank"):
        moved = apply_overrides(resolved, ["adapter.rank=4"])
    assert config_from_dict(moved).adapter.method_config.rank == 4
    with pytest.raises(ConfigError, match=r"adapter\.lora\.rank must be an integer"):
        apply_overrides({}, ["adapter.lora.rank=four"])
    with pytest.raises(ConfigError, match=r"unknown key 'dora' in adapter; .*method tables: ia3, lora, prompt_tuning"):
        apply_overrides({}, ["adapter.dora.rank=4"])


def test_replace_paths_reads_old_keys_as_set_does() -> None:
    """Attack variants' `set` tables written before the move (``server.tau``) keep working."""
    with pytest.warns(DeprecationWarning, match=r"server\.tau is deprecated; it is server\.fedadam\.tau"):
        adam = replace_paths(config_from_dict({}), {"server.strategy": "fedadam", "server.tau": 0.5})
    assert adam.server.strategy_config == FedAdamConfig(tau=0.5)
    with pytest.raises(ConfigError, match=r"unknown config key 'server\.tau'"):  # fedavg has no tau
        replace_paths(config_from_dict({}), {"server.tau": 0.5})


def test_moved_settings_are_not_attributes_of_the_section() -> None:
    """A method's settings live in its own config object: reading the old attribute
    (``config.adapter.rank``) or passing the old keyword fails loudly instead of giving None."""
    config = config_from_dict({"adapter": {"lora": {"rank": 4}}, "server": {"strategy": "fedadam"}})
    assert config.adapter.method_config == LoraAdapterConfig(rank=4)
    for section, name in ((config.adapter, "rank"), (config.adapter, "num_virtual_tokens"), (config.server, "tau")):
        with pytest.raises(AttributeError):
            getattr(section, name)
    with pytest.raises(TypeError, match="rank"):
        AdapterConfig(method="lora", rank=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="tau"):
        ServerConfig(strategy="fedadam", tau=0.5)  # type: ignore[call-arg]
    replaced = dataclasses.replace(config.adapter, method_config=LoraAdapterConfig(rank=8))
    assert replaced.method_config == LoraAdapterConfig(rank=8)


@pytest.mark.parametrize(
    ("privacy", "secagg", "message"),
    [
        ({"mode": "user", "user": {"mechanism": "skellam", "noise_multiplier": 1.0}}, False, "needs privacy.mode"),
        ({"mode": "sample", "sample": {"noise_multiplier": 1.0}, "user": {"mechanism": "skellam"}}, True, "needs"),
        (
            {
                "mode": "user",
                "user": {"mechanism": "distributed_gaussian", "noise_multiplier": 1.0, "adaptive_clipping": True},
            },
            True,
            "adaptive_clipping is not implemented yet",
        ),
    ],
)
def test_distributed_mechanisms_are_refused_where_they_cannot_hold(
    privacy: dict[str, object], secagg: bool, message: str
) -> None:
    raw = {
        "privacy": privacy,
        "secagg": {"enabled": secagg, "bits": 20},
        "server": {"weighting": "uniform", "clients_per_round": 5},
        "partition": {"num_clients": 20},
    }
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
