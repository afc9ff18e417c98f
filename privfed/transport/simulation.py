"""In-process simulation transport (the embedded default).

Every virtual client lives in this process and shares one model instance.
Messages still go through their byte encoding, so the simulation exercises
exactly the wire format a distributed driver would, and byte counts are real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from privfed.client.data import ExampleSet
from privfed.client.trainer import ClientTrainer, LocalResult
from privfed.compression.quantize import FixedPointCodec
from privfed.errors import ProtocolError
from privfed.privacy.dpfedavg import clip_to_norm
from privfed.rng import derive_seed, generator
from privfed.secagg.client import SecAggClient
from privfed.secagg.crypto import RandomSource, system_random
from privfed.secagg.driver import DropoutPlan, Traffic, run_secagg_round
from privfed.secagg.server import SecAggAborted, SecAggServer
from privfed.transport.base import RoundExchange, SecureExchange
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

    def __init__(
        self,
        *,
        trainer: ClientTrainer,
        client_data: Sequence[ExampleSet],
        seed: int,
        crypto_random: RandomSource = system_random,
    ) -> None:
        self.trainer = trainer
        self.client_data = list(client_data)
        self.seed = seed
        self.crypto_random = crypto_random

    def _check_client(self, client_id: int) -> None:
        if not 0 <= client_id < len(self.client_data):
            raise ProtocolError(f"no client {client_id} in this simulation ({len(self.client_data)} clients)")

    def _train(self, client_id: int, message: GlobalModel) -> LocalResult:
        return self.trainer.train(
            global_vector=message.vector,
            data=self.client_data[client_id],
            seed=derive_seed(self.seed, "local", message.round, client_id),
        )

    def _client_step(self, client_id: int, broadcast: bytes) -> bytes:
        message = GlobalModel.from_bytes(broadcast)
        result = self._train(client_id, message)
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
            self._check_client(client_id)
            uploads.append(self._client_step(client_id, broadcast))
            if on_client_done is not None:
                on_client_done(client_id)
        return RoundExchange(
            uploads=tuple(uploads),
            bytes_down=len(broadcast) * len(cohort),
            bytes_up=sum(len(u) for u in uploads),
        )

    def secure_exchange(
        self,
        *,
        broadcast: bytes,
        server: SecAggServer,
        codec: FixedPointCodec,
        dropouts: DropoutPlan,
        clip_norm: float | None = None,
        count_bit: float = 0.5,
        on_client_done: Callable[[int], None] | None = None,
    ) -> SecureExchange:
        """Train the cohort on the broadcast model, then run SecAgg+ over their encoded updates.

        Each client uploads ``encode([delta, train_loss])`` (with ``clip_norm``:
        ``encode([clip(delta), train_loss, +-count_bit])``, the sign saying whether the
        delta was within ``clip_norm``: the centred unclipped bit of adaptive clipping); a client whose
        update is not finite stays out of the protocol (counted as rejected).
        The cohort is the set of clients ``server`` was built for.
        """
        message = GlobalModel.from_bytes(broadcast)
        cohort = sorted(server.neighbours)
        clients: dict[int, SecAggClient] = {}
        rejected = 0
        for client_id in cohort:
            self._check_client(client_id)
            result = self._train(client_id, message)
            if clip_norm is None:
                upload = np.append(result.delta.astype(np.float64), result.train_loss)
            else:  # user-level DP: clip here, before masking; count unclipped
                clipped, norm = clip_to_norm(result.delta, max_norm=clip_norm)
                bit = count_bit if norm <= clip_norm else -count_bit
                upload = np.concatenate([clipped.astype(np.float64), [result.train_loss, bit]])
            if np.isfinite(upload).all():
                values = codec.encode(upload, rng=generator(self.seed, "quantize", message.round, client_id))
                clients[client_id] = SecAggClient(
                    client_id=client_id, round=message.round, values=values, random=self.crypto_random
                )
            else:
                rejected += 1
            if on_client_done is not None:
                on_client_done(client_id)
        # Clients with nothing to send are silent from the first stage on.
        silent = frozenset(set(cohort) - set(clients))
        plan = DropoutPlan({**dropouts.drops, "advertise": dropouts.drops.get("advertise", frozenset()) | silent})
        traffic = Traffic(down=len(broadcast) * len(cohort))
        try:
            outcome = run_secagg_round(server, clients, dropouts=plan, traffic=traffic)
        except (SecAggAborted, ProtocolError) as exc:  # any protocol failure aborts the round, not the run
            return SecureExchange(None, (), rejected, str(exc), traffic.down, traffic.up)
        return SecureExchange(outcome.result, outcome.contributors, rejected, None, traffic.down, traffic.up)
