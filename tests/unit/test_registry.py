from __future__ import annotations

import pytest

from privfed.adapters import adapter_method_names
from privfed.data import dataset_names, partitioner_names
from privfed.errors import ConfigError, DataError, ModelError
from privfed.models import model_names
from privfed.privacy import accountant_names
from privfed.registry import Registry
from privfed.server import strategy_names


def test_registry_registers_lists_and_names_the_field_on_unknown() -> None:
    registry: Registry[int] = Registry("widget", error=ConfigError, field="x.widget")
    registry.register("b", 2)
    registry.register("a", 1)
    assert registry.names() == ("a", "b") and registry.get("a") == 1 and "b" in registry
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("a", 3)
    with pytest.raises(ConfigError) as info:
        registry.get("c")
    assert str(info.value) == "x.widget must be one of 'a', 'b'; got 'c'"


def test_every_extension_point_lists_its_builtins() -> None:
    assert set(model_names()) >= {"minilm", "smollm2", "tiny-bert", "tiny-llama"}
    assert set(dataset_names()) >= {"bbc_news", "tweets", "drug_reviews", "fortunes", "digits", "mnist"}
    assert set(partitioner_names()) == {"iid", "dirichlet", "shards", "natural"}
    assert set(adapter_method_names()) == {"lora", "ffa_lora", "full", "ia3", "prompt_tuning"}
    assert set(strategy_names()) == {"fedavg", "fedadam"}
    assert set(accountant_names()) == {"rdp", "prv"}


def test_unknown_names_raise_the_registry_error_type() -> None:
    from privfed.data import get_dataset_spec
    from privfed.models import get_model_spec

    with pytest.raises(DataError, match=r"data\.name"):
        get_dataset_spec("imagenet")
    with pytest.raises(ModelError, match=r"model\.name"):
        get_model_spec("gpt-9")
