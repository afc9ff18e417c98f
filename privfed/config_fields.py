"""Config fields with validation rules, shared by :mod:`privfed.config` and the method registries.

A config section is a frozen dataclass whose fields carry their range rules as
metadata; :func:`config_field` writes one such field in one line. Strategies and
adapter methods declare their own small config class the same way (PEFT's
``LoraConfig`` beside ``PromptTuningConfig``) and register it with their factory;
this module is what they import, so no registry imports :mod:`privfed.config`
and :mod:`privfed.config` needs no registry at import time.

Rules (all optional): ``ge``, ``gt``, ``le``, ``lt`` (bounds), ``choices`` (a
callable returning the allowed values), ``off`` (a value that switches a feature
off and skips the bounds), ``text`` (1 to 200 printable characters) and
``help`` (the description in ``docs/configuration.md``). Field types may be
``bool``, ``int``, ``float``, ``str`` or ``tuple[X, ...]`` of those.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from privfed.errors import ConfigError

__all__ = ["check_config_class", "config_field"]


def config_field(default: Any, **rules: Any) -> Any:
    """A dataclass field with a default and validation rules as metadata.

    A list or tuple default becomes an immutable tuple (a fresh one per instance).
    """
    if isinstance(default, (list, tuple)):
        value = tuple(default)
        return dataclasses.field(default_factory=lambda: value, metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


def check_config_class(cls: Any, *, where: str) -> None:
    """Check that ``cls`` can be a method's config section: a frozen dataclass with a default for every field.

    Raises:
        ConfigError: naming ``where`` (e.g. ``"register_strategy('fedadam', config=...)"``) and what is wrong.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"{where}: config must be a dataclass class; got {cls!r}")
    if not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ConfigError(f"{where}: config class {cls.__name__} must be frozen (@dataclass(frozen=True))")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(
            f"{where}: every field of config class {cls.__name__} needs a default (a config file may leave "
            f"the table out); {', '.join(missing)} has none"
        )
