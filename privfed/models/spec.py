"""What a registered base model is: :class:`ModelSpec` and the :class:`LoadedModel` it loads to.

Kept apart from the registry so that the built-in entries
(:mod:`privfed.models.builtin`) and the registry (:mod:`privfed.models.registry`)
both import it and neither imports the other's importer: the registry imports
the built-ins, the built-ins import only this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

from privfed.errors import ModelError

__all__ = ["LoadedModel", "ModelSpec", "Task"]

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
