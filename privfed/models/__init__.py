"""Offline base models: a registry of frozen transformers to put adapters on."""

from privfed.models.registry import (
    LoadedModel,
    ModelSpec,
    get_model_spec,
    load_base_model,
    model_names,
    register_model,
)

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "get_model_spec",
    "load_base_model",
    "model_names",
    "register_model",
]
