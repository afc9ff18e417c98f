"""PEFT adapters: method registry and the flat-vector layout."""

from privfed.adapters.layout import AdapterLayout, ParameterSlot
from privfed.adapters.methods import adapter_method_names, build_peft_config, register_adapter_method, wrap_model

__all__ = [
    "AdapterLayout",
    "ParameterSlot",
    "adapter_method_names",
    "build_peft_config",
    "register_adapter_method",
    "wrap_model",
]
