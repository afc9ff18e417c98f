"""Shorter waits in Flower 1.42's polling loops (its sleeps and back-offs are not configurable).

Flower moves a message in steps that each poll: an idle SuperNode asks the SuperLink for
work every 3 s and waits for its ClientApp's reply in 0.5 s steps, and whoever pulls a
message's contents (the SuperNode from the SuperLink, the ServerApp's grid for a reply)
retries a part not stored yet after 1 s, then 2 s, ... (the sender stores the message
before its parts, so the first try often comes too early). On a local deployment of the
tiny model these waits were most of a round's time.

Each function here replaces one module attribute of flwr 1.42.0 (and does nothing, with
a line on stderr, on another version): the waits become at most ``cap`` seconds; what is
sent, and how it is checked, is unchanged.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

__all__ = ["FLOWER_VERSION", "OBJECT_PULL_BACKOFF_SECONDS", "cap_grid_object_pulls", "cap_supernode_waits"]

#: The flwr version whose loops these patches are written for.
FLOWER_VERSION = "1.42.0"
#: First retry of an object pull that came too early (Flower's: 1 s, doubling to 10 s).
OBJECT_PULL_BACKOFF_SECONDS = 0.01
_BACKOFF_CAP_SECONDS = 0.2


class _CappedTime:
    """Stands in for the ``time`` module inside one Flower module: each ``sleep`` is at most ``cap`` s."""

    def __init__(self, cap: float) -> None:
        self._cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _is_known_flower() -> bool:
    import flwr

    if flwr.__version__ == FLOWER_VERSION:
        return True
    print(
        f"privfed: flwr {flwr.__version__} is not {FLOWER_VERSION}; Flower's own polling intervals are kept",
        file=sys.stderr,
    )
    return False


def _short_pulls(pull_objects: Any) -> Any:
    return functools.partial(
        pull_objects, initial_backoff=OBJECT_PULL_BACKOFF_SECONDS, backoff_cap=_BACKOFF_CAP_SECONDS
    )


def cap_supernode_waits(*, cap: float) -> bool:
    """In this process's SuperNode loop: sleeps at most ``cap`` s, object pulls retried after 10 ms.

    Returns:
        Whether the loop was changed (flwr is 1.42.0).
    """
    if not 0.001 <= cap <= 3.0:
        raise ValueError(f"cap must be between 0.001 and 3 seconds; got {cap}")
    if not _is_known_flower():
        return False
    import flwr.supernode.start_client_internal as loop

    names = vars(loop)  # the module's globals: what its functions look up when they run
    names["time"] = _CappedTime(cap)
    if not isinstance(names["pull_objects"], functools.partial):
        names["pull_objects"] = _short_pulls(names["pull_objects"])
    return True


def cap_grid_object_pulls() -> bool:
    """In this process's deployment grid (the ServerApp's): a reply's parts retried after 10 ms.

    Returns:
        Whether the grid was changed (flwr is 1.42.0).
    """
    if not _is_known_flower():
        return False
    import flwr.superlink.grid.http_grid as grid

    names = vars(grid)
    if not isinstance(names["pull_objects"], functools.partial):
        names["pull_objects"] = _short_pulls(names["pull_objects"])
    return True
