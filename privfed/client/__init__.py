"""Client side: local data and local training."""

from privfed.client.data import ExampleSet
from privfed.client.trainer import ClientTrainer, LocalResult

__all__ = ["ClientTrainer", "ExampleSet", "LocalResult"]
