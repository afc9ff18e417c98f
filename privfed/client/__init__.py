"""Client side: local data and local training.

Importing ``privfed.client`` (or a pure-numpy module inside it, such as
``privfed.client.stages``) is cheap: ``ClientTrainer`` and friends load torch and
opacus, so each public name is imported from its module the first time it is
used (PEP 562 module ``__getattr__``, as in ``privfed/__init__.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from privfed._lazy import lazy_exports as _lazy_exports

if TYPE_CHECKING:
    from privfed.client.data import ExampleSet
    from privfed.client.policy import NodeLedger, NodePolicy
    from privfed.client.trainer import ClientTrainer, LocalResult

__all__ = ["ClientTrainer", "ExampleSet", "LocalResult", "NodeLedger", "NodePolicy"]

_EXPORTS: dict[str, str] = {
    "ClientTrainer": "privfed.client.trainer",
    "ExampleSet": "privfed.client.data",
    "LocalResult": "privfed.client.trainer",
    "NodeLedger": "privfed.client.policy",
    "NodePolicy": "privfed.client.policy",
}

if not TYPE_CHECKING:  # type checkers see the imports above; at run time names load on first use
    __getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
