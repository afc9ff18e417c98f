"""The one check every ``[table]`` of attack settings shares: no keys a settings dataclass lacks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from privfed import ConfigError

__all__ = ["table_values"]


def table_values(cls: Any, raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A copy of the TOML table ``raw``; ``ConfigError`` naming ``where`` if a key is not a field of ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; allowed: {sorted(known)}")
    return dict(raw)
