"""Model registry: adding an offline model is one :func:`register_model` call.

Every entry loads with no network: weights come from an installed package or
are initialised at random from a small config (for fast tests). Heavy imports
(transformers) happen inside the loaders, so the registry itself is cheap to
import (the config validator reads its names). The built-in entries are
registered when this module is imported; :mod:`privfed.models.builtin` does not
import this module (no import cycle).
"""

from __future__ import annotations

import os

from privfed.errors import ModelError
from privfed.models.builtin import BUILTIN_MODELS
from privfed.models.spec import LoadedModel, ModelSpec
from privfed.registry import Registry

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "get_model_spec",
    "load_base_model",
    "model_names",
    "register_model",
]

_MODELS: Registry[ModelSpec] = Registry("model", error=ModelError, field="model.name")


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (names are unique).

    ``overwrite=True`` replaces an existing entry (re-running a notebook cell).
    """
    return _MODELS.register(spec.name, spec, overwrite=overwrite)


def model_names() -> tuple[str, ...]:
    """Registered model names, sorted."""
    return _MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``.

    Raises:
        ModelError: if no model of that name is registered.
    """
    return _MODELS.get(name)


def load_base_model(name: str, *, num_labels: int | None = None, init_seed: int = 0) -> LoadedModel:
    """Load a registered base model with no network access.

    Args:
        name: registry key.
        num_labels: number of classes; required for classification models.
        init_seed: seed for randomly initialised weights (tiny models, new heads).

    Raises:
        ModelError: unknown name, missing ``num_labels``, or the model package
            is not installed.
    """
    spec = get_model_spec(name)
    if spec.task == "classification" and (num_labels is None or num_labels < 2):
        raise ModelError(f"model {name!r} is a classifier and needs num_labels >= 2; got {num_labels}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from privfed.rng import torch_rng

    with torch_rng(init_seed):
        model, tokenizer = spec.loader(num_labels=num_labels, init_seed=init_seed)
    model.float()
    actual = getattr(model.config, "max_position_embeddings", None)
    if spec.max_positions is not None and isinstance(actual, int) and actual < spec.max_positions:
        raise ModelError(
            f"model {name!r} declares max_positions = {spec.max_positions} but embeds only {actual} positions"
        )
    # Batches are trimmed on the right (privfed.data.tokenize); padding must be there too.
    tokenizer.padding_side = "right"
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec)


for _spec in BUILTIN_MODELS:
    register_model(_spec)
