"""Typed errors raised by privfed.

Every error derives from :class:`PrivfedError` and also from the builtin
exception a caller would expect (``ValueError`` for bad values, ...), so code
that already catches builtins keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PrivacyBudgetExceeded",
    "PrivfedError",
    "ProtocolError",
]


class PrivfedError(Exception):
    """Base class of every error privfed raises on purpose."""


class ConfigError(PrivfedError, ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    The message names the field, the value found and what is allowed.
    """


class DataError(PrivfedError, ValueError):
    """A dataset cannot be loaded or partitioned as asked."""


class ModelError(PrivfedError, ValueError):
    """A model or adapter cannot be built or loaded as asked."""


class ProtocolError(PrivfedError, ValueError):
    """A peer message is malformed, replayed, out of order or otherwise invalid."""


class CheckpointError(PrivfedError, ValueError, RuntimeError):
    """A run directory or checkpoint is missing, corrupt, tampered with or does not match its run.

    Raised instead of resuming from anything that fails the checkpoint's
    integrity digest or its schema (a resumed run must never reset or alter
    privacy accounting). Also a ``ValueError`` (bad content); still a
    ``RuntimeError`` as in earlier versions.
    """


class PrivacyBudgetExceeded(PrivfedError, RuntimeError):
    """The next step would spend more privacy budget than the configured limit."""
