"""Model registry: adding an offline model is one :func:`register_model` call.

Every entry loads with no network: weights come from an installed package or
are initialised at random from a small config (for fast tests). Heavy imports
(transformers) happen inside the loaders, so the registry itself is cheap to
import (the config validator reads its names).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any, Literal

from privfed.errors import ModelError
from privfed.registry import Registry

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "get_model_spec",
    "load_base_model",
    "model_names",
    "register_model",
]

Task = Literal["classification", "causal_lm"]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A base model ready for an adapter.

    Attributes:
        model: the ``transformers`` model (float32, CPU, all parameters trainable
            until an adapter freezes them).
        tokenizer: its tokenizer, with a pad token set.
        spec: the registry entry it came from.
    """

    model: Any
    tokenizer: Any
    spec: ModelSpec


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    Attributes:
        name: registry key used in configs (``model.name``).
        task: ``"classification"`` (sequence classifier, needs ``num_labels``)
            or ``"causal_lm"``.
        loader: ``loader(num_labels=..., init_seed=...) -> (model, tokenizer)``.
        default_target_modules: module names LoRA attaches to when the config
            leaves ``adapter.target_modules`` empty.
        description: one line for ``privfed models``.
        pretrained: whether weights are real pretrained weights (not random).
        max_positions: positions the model can embed (``max_position_embeddings``),
            so that configs are checked before any weights load; ``None`` when
            unknown (then checked right after loading, see
            :func:`privfed.config.validate_against_model`). Checked against the
            loaded model by :func:`load_base_model`.
    """

    name: str
    task: Task
    loader: Callable[..., tuple[Any, Any]]
    default_target_modules: tuple[str, ...]
    description: str
    pretrained: bool
    max_positions: int | None = None

    def __post_init__(self) -> None:
        if self.max_positions is not None and self.max_positions < 1:
            raise ModelError(f"ModelSpec.max_positions must be >= 1 or None; got {self.max_positions}")


_MODELS: Registry[ModelSpec] = Registry("model", error=ModelError, field="model.name")


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (names are unique).

    ``overwrite=True`` replaces an existing entry (re-running a notebook cell).
    """
    return _MODELS.register(spec.name, spec, overwrite=overwrite)


def model_names() -> tuple[str, ...]:
    """Registered model names, sorted."""
    _ensure_builtin()
    return _MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``.

    Raises:
        ModelError: if no model of that name is registered.
    """
    _ensure_builtin()
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


_BUILTIN_LOADED = False


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        _BUILTIN_LOADED = True
        from privfed.models import builtin  # noqa: F401  (registers on import)
