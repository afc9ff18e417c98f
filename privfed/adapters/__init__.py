"""PEFT adapters: method registry, each method's config class, and the flat-vector layout."""

from privfed.adapters.layout import AdapterLayout, ParameterSlot
from privfed.adapters.methods import (
    IA3AdapterConfig,
    LoraAdapterConfig,
    PromptTuningAdapterConfig,
    adapter_config_section,
    adapter_method_names,
    build_peft_config,
    register_adapter_method,
    wrap_model,
)

__all__ = [
    "AdapterLayout",
    "IA3AdapterConfig",
    "LoraAdapterConfig",
    "ParameterSlot",
    "PromptTuningAdapterConfig",
    "adapter_config_section",
    "adapter_method_names",
    "build_peft_config",
    "register_adapter_method",
    "wrap_model",
]
