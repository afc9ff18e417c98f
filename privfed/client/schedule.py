"""A client's local schedule: its Poisson sampling rate, batch size and steps per round.

Pure arithmetic on the client config and the client's example count (no torch), so
``privfed validate`` and the accountants get the same numbers as
:class:`~privfed.client.trainer.ClientTrainer` without loading a model.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from privfed.config import ClientConfig

__all__ = ["batch_size_for", "local_steps", "sampling_rate_for"]


def batch_size_for(config: ClientConfig, num_examples: int) -> int:
    """(Expected) batch size of a client holding ``num_examples`` examples:
    ``sampling_rate * num_examples`` when a sampling rate is set, else ``batch_size``."""
    if config.sampling_rate > 0:
        return max(1, round(config.sampling_rate * num_examples))
    return config.batch_size


def sampling_rate_for(config: ClientConfig, num_examples: int) -> float:
    """DP-SGD's Poisson sampling rate for a client holding ``num_examples`` examples."""
    if config.sampling_rate > 0:
        return config.sampling_rate
    return min(1.0, config.batch_size / num_examples)


def local_steps(config: ClientConfig, num_examples: int) -> int:
    """Optimizer steps per round for a client holding ``num_examples`` examples."""
    if config.local_steps > 0:
        return config.local_steps
    if config.sampling_rate > 0:
        # Every client the same number of steps per epoch (1/q), as it has the same rate:
        # the same epsilon for all, whatever rounding does to q * n.
        return config.local_epochs * math.ceil(1 / config.sampling_rate)
    return config.local_epochs * math.ceil(num_examples / batch_size_for(config, num_examples))
