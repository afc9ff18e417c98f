"""In-process simulation transport (the embedded default).

Every virtual client lives in this process and shares one model instance.
Messages still go through their byte encoding, so the simulation exercises
exactly the wire format a distributed driver would, and byte counts are real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from privfed.client.data import ExampleSet
from privfed.client.trainer import ClientTrainer
from privfed.errors import ProtocolError
from privfed.rng import derive_seed
from privfed.transport.base import RoundExchange
from privfed.transport.messages import ClientUpdate, GlobalModel

__all__ = ["SimulationTransport"]


class SimulationTransport:
    """Runs each selected client's local training in-process.

    Args:
        trainer: the shared client trainer.
        client_data: one :class:`ExampleSet` per client, indexed by client id.
        seed: experiment seed; client ``c`` in round ``r`` trains with
            ``derive_seed(seed, "local", r, c)``.
    """

    def __init__(self, *, trainer: ClientTrainer, client_data: Sequence[ExampleSet], seed: int) -> None:
        self.trainer = trainer
        self.client_data = list(client_data)
        self.seed = seed

    def _client_step(self, client_id: int, broadcast: bytes) -> bytes:
        message = GlobalModel.from_bytes(broadcast)
        result = self.trainer.train(
            global_vector=message.vector,
            data=self.client_data[client_id],
            seed=derive_seed(self.seed, "local", message.round, client_id),
        )
        return ClientUpdate(
            round=message.round,
            client_id=client_id,
            num_examples=result.num_examples,
            train_loss=result.train_loss,
            delta=result.delta,
        ).to_bytes()

    def exchange(
        self, *, broadcast: bytes, cohort: Sequence[int], on_client_done: Callable[[int], None] | None = None
    ) -> RoundExchange:
        uploads = []
        for client_id in cohort:
            if not 0 <= client_id < len(self.client_data):
                raise ProtocolError(f"no client {client_id} in this simulation ({len(self.client_data)} clients)")
            uploads.append(self._client_step(client_id, broadcast))
            if on_client_done is not None:
                on_client_done(client_id)
        return RoundExchange(
            uploads=tuple(uploads),
            bytes_down=len(broadcast) * len(cohort),
            bytes_up=sum(len(u) for u in uploads),
        )
