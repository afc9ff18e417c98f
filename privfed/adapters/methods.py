"""PEFT method registry: config section ``[adapter]`` -> a ``peft`` config.

Adding a method is one :func:`register_adapter_method` call with a builder
that maps the ``[adapter]`` section (a :class:`~privfed.config.AdapterConfig`)
to a ``peft.PeftConfig``. A method with settings of its own registers a small
frozen dataclass with it, as PEFT keeps ``LoraConfig`` beside
``PromptTuningConfig``: a config file sets them in the method's table
(``[adapter.lora]``, ``[adapter.prompt_tuning]``) and the builder reads them as
``adapter_config.method_config``. Whatever the method, only its trainable
parameters cross the wire, as one flat vector (see :mod:`privfed.adapters.layout`).

This module never imports :mod:`privfed.config` (the config validator imports
it, lazily, for the method names and their config classes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from privfed.config_fields import check_config_class, config_field
from privfed.errors import ConfigError, ModelError
from privfed.registry import Registry

if TYPE_CHECKING:
    from privfed.models.spec import ModelSpec

__all__ = [
    "IA3AdapterConfig",
    "LoraAdapterConfig",
    "PromptTuningAdapterConfig",
    "adapter_config_section",
    "adapter_method_names",
    "build_peft_config",
    "register_adapter_method",
    "wrap_model",
]


@dataclasses.dataclass(frozen=True)
class LoraAdapterConfig:
    """LoRA (Hu et al. 2022): a trainable low-rank update ``B A`` beside each target module's weight."""

    rank: int = config_field(8, ge=1, le=4096, help="LoRA rank r.")
    alpha: int = config_field(16, ge=1, help="Scaling numerator (`lora_alpha`): updates are scaled by alpha / rank.")
    dropout: float = config_field(0.0, ge=0.0, lt=1.0, help="Dropout on the input of each LoRA branch.")
    target_modules: tuple[str, ...] = config_field(
        (), help="Names of the modules LoRA attaches to; empty = the model's default (`privfed models`)."
    )


@dataclasses.dataclass(frozen=True)
class IA3AdapterConfig:
    """(IA)^3 (Liu et al. 2022): trainable vectors rescaling the target modules' activations."""

    target_modules: tuple[str, ...] = config_field(
        (), help="Names of the modules whose outputs are rescaled; empty = peft's default for the architecture."
    )


@dataclasses.dataclass(frozen=True)
class PromptTuningAdapterConfig:
    """Prompt tuning (Lester et al. 2021): trainable virtual-token embeddings prepended to every input."""

    num_virtual_tokens: int = config_field(
        8,
        ge=1,
        le=512,
        help="Trainable virtual tokens prepended to every sequence (they count towards the model's positions).",
    )


# A builder returns a ``peft.PeftConfig``, or ``None`` for no adapter at all
# (full fine-tuning: every parameter of the model is trainable and travels).
# Its first argument is the run's privfed.config.AdapterConfig (typed Any: no import of privfed.config).
_Builder = Callable[[Any, "ModelSpec"], Any]
_AfterWrap = Callable[[Any], None]


@dataclasses.dataclass(frozen=True)
class _Method:
    builder: _Builder
    after_wrap: _AfterWrap | None
    config: type[Any] | None
    section: str | None


_METHODS: Registry[_Method] = Registry("adapter method", error=ModelError, field="adapter.method")


def register_adapter_method(
    name: str,
    builder: _Builder,
    *,
    config: type[Any] | None = None,
    section: str | None = None,
    after_wrap: _AfterWrap | None = None,
    overwrite: bool = False,
) -> None:
    """Register ``builder(adapter_config, model_spec) -> peft.PeftConfig`` under ``name``.

    ``config``, when given, is the method's own settings: a frozen dataclass whose
    fields all have defaults (rules as in :func:`privfed.config_fields.config_field`).
    A config file sets them in the ``[adapter.<section>]`` table (``section``
    defaults to ``name``; a variant of another method shares its table, as
    ``ffa_lora`` shares ``[adapter.lora]``); the builder reads them as
    ``adapter_config.method_config``. ``after_wrap(peft_model)``, when given,
    runs once the adapter is attached (e.g. to freeze part of it); what stays
    trainable is what travels.

    Raises:
        ModelError: ``name`` already registered (without ``overwrite``).
        ConfigError: ``config`` is not a frozen dataclass with defaults, ``section`` without
            ``config``, or ``section`` already holds another config class.
    """
    where = f"register_adapter_method({name!r}, config=...)"
    if config is None:
        if section is not None:
            raise ConfigError(f"{where}: section {section!r} needs a config class")
    else:
        check_config_class(config, where=where)
        section = section or name
        for other in _METHODS.names():
            entry = _METHODS.get(other)
            if other != name and entry.section == section and entry.config is not config:
                held = getattr(entry.config, "__name__", repr(entry.config))
                raise ConfigError(
                    f"{where}: section [adapter.{section}] already holds {held} (method {other!r}); "
                    f"got {config.__name__}"
                )
    _METHODS.register(name, _Method(builder, after_wrap, config, section), overwrite=overwrite)


def adapter_method_names() -> tuple[str, ...]:
    """Registered adapter methods, sorted."""
    return _METHODS.names()


def adapter_config_section(name: str) -> tuple[str, type[Any]] | None:
    """``(section, config class)`` of method ``name`` (its ``[adapter.<section>]`` table), or ``None``.

    Raises:
        ModelError: ``name`` is not a registered adapter method.
    """
    entry = _METHODS.get(name)
    if entry.config is None or entry.section is None:
        return None
    return entry.section, entry.config


def _task_type(spec: ModelSpec) -> Any:
    from peft import TaskType

    return TaskType.SEQ_CLS if spec.task == "classification" else TaskType.CAUSAL_LM


def _lora(cfg: Any, spec: ModelSpec) -> Any:
    import peft

    settings: LoraAdapterConfig = cfg.method_config
    return peft.LoraConfig(
        task_type=_task_type(spec),
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules or spec.default_target_modules),
    )


def _ia3(cfg: Any, spec: ModelSpec) -> Any:
    import peft

    settings: IA3AdapterConfig = cfg.method_config
    if settings.target_modules:
        # Without a separate list, treat none of the targets as feed-forward
        # (IA3 then scales their outputs rather than inputs).
        return peft.IA3Config(
            task_type=_task_type(spec), target_modules=list(settings.target_modules), feedforward_modules=[]
        )
    return peft.IA3Config(task_type=_task_type(spec))  # peft's per-architecture defaults


def _prompt_tuning(cfg: Any, spec: ModelSpec) -> Any:
    import peft

    settings: PromptTuningAdapterConfig = cfg.method_config
    return peft.PromptTuningConfig(task_type=_task_type(spec), num_virtual_tokens=settings.num_virtual_tokens)


def _freeze_lora_a(model: Any) -> None:
    # FFA-LoRA (Sun, Qin, Xu, Li, ICLR 2024, "Improving LoRA in Privacy-preserving
    # Federated Learning"): A stays at its seeded random init on every party and
    # only B is trained, so the server's average of B is the exact average of the
    # clients' products B·A (plain LoRA averages B and A separately), and DP noise
    # is added to half as many parameters. A is reproducible from the adapter-init
    # seed, so it never crosses the wire.
    frozen = 0
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise ModelError("ffa_lora found no LoRA A matrices to freeze")


def _full(cfg: Any, spec: ModelSpec) -> None:
    # Full fine-tuning, the baseline PEFT is compared against (e.g. for how much
    # membership leaks, issue 7): no peft wrapper, all base weights train.
    return None


register_adapter_method("lora", _lora, config=LoraAdapterConfig)
register_adapter_method("full", _full)
register_adapter_method("ffa_lora", _lora, config=LoraAdapterConfig, section="lora", after_wrap=_freeze_lora_a)
register_adapter_method("ia3", _ia3, config=IA3AdapterConfig)
register_adapter_method("prompt_tuning", _prompt_tuning, config=PromptTuningAdapterConfig)


def build_peft_config(cfg: Any, spec: ModelSpec) -> Any:
    """The ``peft`` config for ``cfg`` (an ``AdapterConfig``) on the model described by ``spec``."""
    return _METHODS.get(cfg.method).builder(cfg, spec)


def wrap_model(model: Any, cfg: Any, spec: ModelSpec) -> Any:
    """Freeze ``model`` and attach the adapter; returns the ``peft.PeftModel``.

    For classifiers, peft also trains a copy of the classification head
    (``modules_to_save``), which travels in the same flat vector. A method
    whose builder returns ``None`` (``full``) returns ``model`` itself with
    every parameter trainable.

    Raises:
        ModelError: if peft rejects the combination (e.g. unknown target modules).
    """
    from peft import get_peft_model

    after_wrap = _METHODS.get(cfg.method).after_wrap
    peft_config = build_peft_config(cfg, spec)
    if peft_config is None:
        wrapped = model.requires_grad_(True)
    else:
        try:
            wrapped = get_peft_model(model, peft_config)
        except ValueError as exc:
            raise ModelError(f"adapter {cfg.method!r} cannot be attached to model {spec.name!r}: {exc}") from None
    if after_wrap is not None:
        after_wrap(wrapped)
    return wrapped
