"""A client node: turns the server's messages (bytes) into its replies (bytes).

One node per client, written once and used by every engine: the in-process
simulation calls :meth:`ClientNode.handle` directly, a distributed engine
calls it from whatever process holds the client's data. Within a
secure-aggregation round a node keeps its SecAgg+ client state machine until
the round's last stage. Across rounds it keeps one number,
:attr:`ClientNode.last_secure_round`: the highest secure round it has answered.
A ``SecureRoundRequest`` for that round or an earlier one is refused: training
and rounding are keyed by (seed, round, client), so a second execution of a
round with one client left out would give the server that client's exact
upload as the difference of two correct secure sums.

Messages a node handles:

* :class:`~privfed.transport.messages.GlobalModel` (a plain round): local training
  from the broadcast, reply :class:`~privfed.transport.messages.ClientUpdate`.
* :class:`~privfed.transport.messages.SecureRoundRequest`: local training, then the
  round's upload stages (clip, append metrics, fixed point, ...) and the SecAgg+
  setup; reply the first SecAgg+ message (``AdvertiseKeys``), or
  :class:`~privfed.transport.messages.Decline` when the update is not finite.
* :class:`~privfed.transport.messages.CompressedRoundRequest` (a plain round with upload
  compression): local training, then the round's stages (rotate, sparsify/top-k, fixed
  point); reply :class:`~privfed.transport.messages.EncodedUpdate`, or ``Decline``.
* SecAgg+ messages of the round in progress: the SecAgg+ client's reply.

A node-local :class:`~privfed.client.policy.NodePolicy` (optional) is checked before
each training round: DP-SGD settings, upload stages (clip, distributed noise share) or a
record-level budget weaker than the policy make the node reply ``Decline`` without
training, and :attr:`ClientNode.refusal` says why (one line). The node's
:class:`~privfed.client.policy.NodeLedger` records the DP-SGD it actually ran.
"""

from __future__ import annotations

import numpy as np

from privfed.client.data import ExampleSet
from privfed.client.policy import NodeLedger, NodePolicy
from privfed.client.stages import FixedPointStage, StageContext, Upload, UploadPipeline
from privfed.client.trainer import ClientTrainer, LocalResult, sampling_rate_for
from privfed.compression.quantize import ConditionalRoundingError
from privfed.errors import ProtocolError
from privfed.rng import derive_seed, generator
from privfed.secagg.client import SecAggClient
from privfed.secagg.crypto import RandomSource, system_random
from privfed.transport.messages import (
    ClientUpdate,
    CompressedRoundRequest,
    Decline,
    EncodedUpdate,
    GlobalModel,
    SecureRoundRequest,
    message_kind,
)

__all__ = ["ClientNode"]

#: The reason a node gives when local training ended in a non-finite update or loss.
NOT_FINITE = "local training produced a non-finite update or loss"


class ClientNode:
    """One client of the federation.

    Args:
        client_id: this client's id.
        trainer: the local trainer (DP-SGD when configured); may be shared by nodes of one process.
        data: this client's examples.
        seed: experiment seed; training in round ``r`` uses ``derive_seed(seed, "local", r, client_id)``
            and fixed-point rounding ``generator(seed, "quantize", r, client_id)``.
        crypto_random: randomness for SecAgg+ keys, seeds and nonces.
        last_secure_round: the highest secure round this client already answered (a
            node rebuilt per message, as in Flower, passes the value it persisted);
            ``None``: none yet.
        policy: this node's own privacy policy (``None``: it runs whatever the server sends).
        record_ledger: this node's record-level ledger so far (a node rebuilt per message
            passes the one it persisted); ``None``: a fresh one when ``policy`` names a
            ``record_delta``.
    """

    def __init__(
        self,
        *,
        client_id: int,
        trainer: ClientTrainer,
        data: ExampleSet,
        seed: int,
        crypto_random: RandomSource = system_random,
        last_secure_round: int | None = None,
        policy: NodePolicy | None = None,
        record_ledger: NodeLedger | None = None,
    ) -> None:
        self.client_id = client_id
        self.trainer = trainer
        self.data = data
        self.seed = seed
        self.crypto_random = crypto_random
        self._secagg: SecAggClient | None = None
        self.last_secure_round = last_secure_round
        self.policy = policy
        if record_ledger is None and policy is not None:
            record_ledger = NodeLedger.for_policy(policy, client_id=client_id)
        self.record_ledger = record_ledger
        #: Why the node declined its last training round under its policy (``None``: it did not).
        self.refusal: str | None = None

    @property
    def record_epsilon(self) -> float | None:
        """Record-level epsilon this node has spent (at its ledger's delta), ``None`` without a ledger."""
        return None if self.record_ledger is None else self.record_ledger.epsilon()

    @property
    def secagg_client(self) -> SecAggClient | None:
        """The SecAgg+ client of the secure round in progress (``None`` when there is none)."""
        return self._secagg

    def _refuse(self, round: int, pipeline: UploadPipeline | None) -> bytes | None:
        """A ``Decline`` when the round's instructions or budget fail this node's policy, else ``None``."""
        self.refusal = None
        if self.policy is None:
            return None
        reason = self.policy.check_sample_dp(self.trainer.dp)
        if reason is None and pipeline is not None:
            reason = self.policy.check_upload(pipeline)
        if reason is None and self.record_ledger is not None and self.trainer.dp is not None:
            n = len(self.data)
            reason = self.record_ledger.refusal(
                self.record_ledger.event(
                    noise_multiplier=self.trainer.dp.noise_multiplier,
                    sample_rate=sampling_rate_for(self.trainer.config, n),
                    steps=self.trainer.steps_for(n),
                    round=round,
                )
            )
        if reason is None:
            return None
        self.refusal = reason
        return Decline(round=round, client_id=self.client_id, reason=reason).to_bytes()

    def _train(self, round: int, vector: np.ndarray) -> LocalResult:
        result = self.trainer.train(
            global_vector=vector, data=self.data, seed=derive_seed(self.seed, "local", round, self.client_id)
        )
        if self.record_ledger is not None and self.trainer.dp is not None:  # spent, whatever the update is
            self.record_ledger.record(
                self.record_ledger.event(
                    noise_multiplier=self.trainer.dp.noise_multiplier,
                    sample_rate=sampling_rate_for(self.trainer.config, len(self.data)),
                    steps=result.steps,
                    round=round,
                )
            )
        return result

    def handle(self, data: bytes) -> bytes | None:
        """The reply to one server message, or ``None`` when the node stays silent.

        Raises:
            ProtocolError: a malformed message, or one the node refuses (an unsafe
                SecAgg+ request, a message of no round in progress).
        """
        kind = message_kind(data)
        if kind == GlobalModel.KIND:
            self._secagg = None
            return self._plain_round(GlobalModel.from_bytes(data))
        if kind == SecureRoundRequest.KIND:
            self._secagg = None
            request = SecureRoundRequest.from_bytes(data)
            if self.last_secure_round is not None and request.round <= self.last_secure_round:
                raise ProtocolError(
                    f"client {self.client_id} already answered secure round {self.last_secure_round}; "
                    f"refusing round {request.round} (allowed: rounds after {self.last_secure_round})"
                )
            # Recorded before anything is computed: a request that fails half-way still burns its round.
            self.last_secure_round = request.round
            return self._secure_round(request)
        if kind == CompressedRoundRequest.KIND:
            self._secagg = None
            return self._compressed_round(CompressedRoundRequest.from_bytes(data))
        if kind is not None:
            raise ProtocolError(f"a client node does not handle message kind {kind}")
        if self._secagg is None:
            raise ProtocolError(f"client {self.client_id} has no secure-aggregation round in progress")
        return self._secagg.step(data)

    def _plain_round(self, message: GlobalModel) -> bytes:
        refused = self._refuse(message.round, None)
        if refused is not None:
            return refused
        result = self._train(message.round, message.vector)
        return ClientUpdate(
            round=message.round,
            client_id=self.client_id,
            num_examples=result.num_examples,
            train_loss=result.train_loss,
            delta=result.delta,
        ).to_bytes()

    def _compressed_round(self, message: CompressedRoundRequest) -> bytes:
        pipeline = UploadPipeline.from_json(message.stages)
        refused = self._refuse(message.round, pipeline)
        if refused is not None:
            return refused
        result = self._train(message.round, message.vector)
        if not (np.isfinite(result.delta).all() and np.isfinite(result.train_loss)):
            return Decline(round=message.round, client_id=self.client_id, reason=NOT_FINITE).to_bytes()
        ctx = StageContext(
            round=message.round,
            client_id=self.client_id,
            rng=generator(self.seed, "quantize", message.round, self.client_id),
        )
        encoded = pipeline.encode(Upload(values=result.delta.astype(np.float64)), ctx)
        last = pipeline.stages[-1] if pipeline.stages else None
        bits = last.bits if isinstance(last, FixedPointStage) else 0
        support = np.zeros(0, dtype=np.uint32) if encoded.support is None else encoded.support.astype(np.uint32)
        return EncodedUpdate(
            round=message.round,
            client_id=self.client_id,
            num_examples=result.num_examples,
            train_loss=result.train_loss,
            bits=bits,
            values=encoded.values if bits else encoded.values.astype(np.float32),
            support=support,
        ).to_bytes()

    def _secure_round(self, message: SecureRoundRequest) -> bytes:
        pipeline = UploadPipeline.from_json(message.stages)
        refused = self._refuse(message.round, pipeline)
        if refused is not None:
            return refused
        result = self._train(message.round, message.vector)
        upload = Upload(values=result.delta.astype(np.float64), metrics={"train_loss": result.train_loss})
        if not (np.isfinite(upload.values).all() and np.isfinite(result.train_loss)):
            return Decline(round=message.round, client_id=self.client_id, reason=NOT_FINITE).to_bytes()
        ctx = StageContext(
            round=message.round,
            client_id=self.client_id,
            rng=generator(self.seed, "quantize", message.round, self.client_id),
        )
        try:
            encoded = pipeline.encode(upload, ctx)
        except ConditionalRoundingError as exc:  # no rounding within the norm bound: sit the round out
            return Decline(round=message.round, client_id=self.client_id, reason=str(exc)).to_bytes()
        self._secagg = SecAggClient(
            client_id=self.client_id, round=message.round, values=encoded.values, random=self.crypto_random
        )
        return self._secagg.step(message.setup)
