"""PEFT method registry: config section ``[adapter]`` -> a ``peft`` config.

Adding a method is one :func:`register_adapter_method` call with a builder
that maps :class:`~privfed.config.AdapterConfig` to a ``peft.PeftConfig``.
Whatever the method, only its trainable parameters cross the wire, as one
flat vector (see :mod:`privfed.adapters.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from privfed.errors import ModelError
from privfed.registry import Registry

if TYPE_CHECKING:
    from privfed.config import AdapterConfig
    from privfed.models.registry import ModelSpec

__all__ = ["adapter_method_names", "build_peft_config", "register_adapter_method", "wrap_model"]

# A builder returns a ``peft.PeftConfig``, or ``None`` for no adapter at all
# (full fine-tuning: every parameter of the model is trainable and travels).
_Builder = Callable[["AdapterConfig", "ModelSpec"], Any]
_AfterWrap = Callable[[Any], None]
_METHODS: Registry[tuple[_Builder, _AfterWrap | None]] = Registry(
    "adapter method", error=ModelError, field="adapter.method"
)


def register_adapter_method(
    name: str, builder: _Builder, *, after_wrap: _AfterWrap | None = None, overwrite: bool = False
) -> None:
    """Register ``builder(adapter_config, model_spec) -> peft.PeftConfig`` under ``name``.

    ``after_wrap(peft_model)``, when given, runs once the adapter is attached
    (e.g. to freeze part of it); what stays trainable is what travels.
    """
    _METHODS.register(name, (builder, after_wrap), overwrite=overwrite)


def adapter_method_names() -> tuple[str, ...]:
    """Registered adapter methods, sorted."""
    return _METHODS.names()


def _task_type(spec: ModelSpec) -> Any:
    from peft import TaskType

    return TaskType.SEQ_CLS if spec.task == "classification" else TaskType.CAUSAL_LM


def _lora(cfg: AdapterConfig, spec: ModelSpec) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        task_type=_task_type(spec),
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules or spec.default_target_modules),
    )


def _ia3(cfg: AdapterConfig, spec: ModelSpec) -> Any:
    from peft import IA3Config

    if cfg.target_modules:
        # Without a separate list, treat none of the targets as feed-forward
        # (IA3 then scales their outputs rather than inputs).
        return IA3Config(task_type=_task_type(spec), target_modules=list(cfg.target_modules), feedforward_modules=[])
    return IA3Config(task_type=_task_type(spec))  # peft's per-architecture defaults


def _prompt_tuning(cfg: AdapterConfig, spec: ModelSpec) -> Any:
    from peft import PromptTuningConfig

    return PromptTuningConfig(task_type=_task_type(spec), num_virtual_tokens=cfg.num_virtual_tokens)


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


def _full(cfg: AdapterConfig, spec: ModelSpec) -> None:
    # Full fine-tuning, the baseline PEFT is compared against (e.g. for how much
    # membership leaks, issue 7): no peft wrapper, all base weights train.
    return None


register_adapter_method("lora", _lora)
register_adapter_method("full", _full)
register_adapter_method("ffa_lora", _lora, after_wrap=_freeze_lora_a)
register_adapter_method("ia3", _ia3)
register_adapter_method("prompt_tuning", _prompt_tuning)


def build_peft_config(cfg: AdapterConfig, spec: ModelSpec) -> Any:
    """The ``peft`` config for ``cfg`` on the model described by ``spec``."""
    builder, _ = _METHODS.get(cfg.method)
    return builder(cfg, spec)


def wrap_model(model: Any, cfg: AdapterConfig, spec: ModelSpec) -> Any:
    """Freeze ``model`` and attach the adapter; returns the ``peft.PeftModel``.

    For classifiers, peft also trains a copy of the classification head
    (``modules_to_save``), which travels in the same flat vector. A method
    whose builder returns ``None`` (``full``) returns ``model`` itself with
    every parameter trainable.

    Raises:
        ModelError: if peft rejects the combination (e.g. unknown target modules).
    """
    from peft import get_peft_model

    _, after_wrap = _METHODS.get(cfg.method)
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
