"""Round orchestration: sample a cohort, broadcast, validate replies, aggregate."""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import TypedDict

import numpy as np
import numpy.typing as npt

from privfed.adapters.layout import AdapterLayout
from privfed.client.stages import (
    AppendMetricsStage,
    ClipStage,
    DistributedNoiseStage,
    FixedPointStage,
    RotateStage,
    SparsifyStage,
    StageContext,
    TopKStage,
    Upload,
    UploadPipeline,
    UploadStage,
)
from privfed.compression.quantize import FixedPointCodec, coordinate_range, max_norm_before_rounding
from privfed.compression.rotation import padded_dim
from privfed.compression.sparsify import kept_count
from privfed.config import CompressionConfig, SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy.distributed import DistributedNoisePlan, distributed_plan
from privfed.privacy.dpfedavg import DPFedAvgServer
from privfed.privacy.noise import NoiseSource, make_noise
from privfed.rng import derive_seed, generator
from privfed.secagg.driver import STAGES as SECAGG_STAGES
from privfed.secagg.server import SecAggServer
from privfed.server.aggregation import (
    Aggregate,
    DistributedDPAggregation,
    DPFedAvgAggregation,
    StrategyAggregation,
    check_strategy_composes,
)
from privfed.server.strategies import Strategy
from privfed.transport.base import Exchange, Transport
from privfed.transport.messages import (
    ClientUpdate,
    CompressedRoundRequest,
    Decline,
    EncodedUpdate,
    GlobalModel,
    SecureRoundRequest,
    message_kind,
)

# Conditional rounding's per-draw failure probability bound (Kairouz, Liu, Steinke 2021 use e^-0.5).
_CONDITIONAL_BETA = math.exp(-0.5)

__all__ = ["FederatedServer", "RoundResult", "check_strategy_composes", "sample_cohort", "validate_update"]


def sample_cohort(
    *, seed: int, round: int, num_clients: int, clients_per_round: int, poisson: bool = False
) -> npt.NDArray[np.int64]:
    """Clients taking part in ``round``, sorted.

    Fixed size (uniform without replacement) by default; with ``poisson`` each
    client joins independently with probability ``clients_per_round / num_clients``
    (the sampling that user-level DP accounting assumes). Depends only on
    ``(seed, round)``, so a resumed run picks the same cohorts.
    """
    rng = generator(seed, "cohort", round)
    if poisson:
        return np.flatnonzero(rng.random(num_clients) < clients_per_round / num_clients).astype(np.int64)
    return np.sort(rng.choice(num_clients, size=clients_per_round, replace=False)).astype(np.int64)


def validate_update(raw: bytes, *, round: int, expected: set[int], dim: int) -> ClientUpdate:
    """A client's upload as the server accepts it, else ``ProtocolError``.

    Well-formed, for ``round``, from a client in ``expected`` (callers drop a
    client from it once its first reply is in: later ones are replays), of
    ``dim`` finite values.
    """
    update = ClientUpdate.from_bytes(raw)
    if update.round != round:
        raise ProtocolError(f"update for round {update.round} received in round {round}")
    if update.client_id not in expected:
        raise ProtocolError(f"update from client {update.client_id}, which is not (or no longer) expected")
    if update.delta.shape != (dim,):
        raise ProtocolError(f"update has {update.delta.shape[0]} values; the adapter has {dim}")
    if not np.isfinite(update.delta).all():
        raise ProtocolError(f"update from client {update.client_id} has non-finite values")
    return update


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """Server-side record of one round.

    Attributes:
        round: the round number.
        num_clients: updates accepted into the aggregate.
        rejected_updates: replies dropped (malformed, wrong round/client, non-finite).
        train_loss: mean of accepted clients' local loss, weighted as the aggregate is.
        bytes_up / bytes_down: bytes moved this round.
        update_norm: L2 norm of the aggregate delta applied to the global adapter.
        dropped_clients: cohort members that dropped out of secure aggregation.
        aborted: why secure aggregation aborted (the global adapter then gets no client
            update; under user-level DP the round's noise is still released and applied).
        cohort: the clients selected this round.
        clip_norm / unclipped_fraction: user-level DP clip bound used, and the noised
            fraction of unclipped clients (adaptive clipping), else ``None``.
        aggregate_rejected: why the round's aggregate was not applied (it, or the model
            the strategy made from it, was not finite), else ``None``. The global
            adapter is then left as it was.
        answered / unanswered: cohort members that answered every message sent to them this
            round, and those that missed one (timed out, crashed or stayed silent: dropped);
            they add up to the cohort unless the round sent nothing (a cohort too small for
            secure aggregation).
        rejected_clients: answering cohort members none of whose replies was accepted
            (malformed, wrong shape, non-finite, forged or declined).
        seconds_waiting: seconds the round's exchanges waited for their slowest node, summed.
        declines: the valid :class:`~privfed.transport.messages.Decline` replies of the round by
            the reason their nodes gave (``""`` for none), counted; they are among the rejected.
    """

    round: int
    num_clients: int
    rejected_updates: int
    train_loss: float
    bytes_up: int
    bytes_down: int
    update_norm: float
    dropped_clients: int = 0
    aborted: str | None = None
    cohort: tuple[int, ...] = ()
    clip_norm: float | None = None
    unclipped_fraction: float | None = None
    aggregate_rejected: str | None = None
    answered: int = 0
    unanswered: int = 0
    rejected_clients: int = 0
    seconds_waiting: float = 0.0
    declines: Mapping[str, int] = dataclasses.field(default_factory=dict)


class _Participation(TypedDict):
    """Who took part in a round: the :class:`RoundResult` fields of the same names."""

    answered: int
    unanswered: int
    rejected_clients: int
    seconds_waiting: float


def _plain_counts(exchange: Exchange, cohort: list[int], accepted: int) -> _Participation:
    """Who answered a plain round's one exchange, who was rejected, and the wait."""
    answered = len(exchange.answered() & set(cohort))
    return {
        "answered": answered,
        "unanswered": len(cohort) - answered,
        "rejected_clients": answered - accepted,
        "seconds_waiting": exchange.seconds_waiting,
    }


class FederatedServer:
    """Holds the global adapter vector and runs FedAvg-style rounds over a transport."""

    def __init__(
        self,
        *,
        layout: AdapterLayout,
        global_vector: npt.NDArray[np.float32],
        strategy: Strategy,
        num_clients: int,
        clients_per_round: int,
        seed: int,
        weighting: str = "examples",
        secagg: SecAggConfig | None = None,
        user_dp: DPFedAvgServer | None = None,
        secure_noise: bool = False,
        compression: CompressionConfig | None = None,
        user_mechanism: str = "central",
    ) -> None:
        self.layout = layout
        self.global_vector = layout.check_vector(global_vector).copy()
        self.strategy = strategy
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.seed = seed
        self.weighting = weighting
        self.user_dp = user_dp
        self.secure_noise = secure_noise
        self.secagg = secagg if secagg is not None and secagg.enabled else None
        check_strategy_composes(strategy, user_dp=user_dp is not None, secure=self.secagg is not None)
        # Aggregation by composition: the strategy is always called; user-level DP wraps it.
        inner = StrategyAggregation(strategy, weighting=weighting)
        self.aggregation: StrategyAggregation | DPFedAvgAggregation | DistributedDPAggregation = (
            inner if user_dp is None else DPFedAvgAggregation(inner, user_dp, dim=layout.dim, noise=self._noise)
        )
        # Distributed DP (privacy.user.mechanism): the clients add the noise, the server adds none.
        self.distributed: DistributedNoisePlan | None = None
        if user_mechanism != "central":
            if user_dp is None or self.secagg is None:
                raise ConfigError(f"privacy.user.mechanism = {user_mechanism!r} needs user-level DP and secagg.enabled")
            if user_dp.adaptive is not None:
                raise ConfigError(
                    f"privacy.user.adaptive_clipping is not implemented yet with privacy.user.mechanism = "
                    f"{user_mechanism!r} (the unclipped count would need its own distributed noise); "
                    "use a fixed clip_norm"
                )
            self.aggregation = DistributedDPAggregation(inner, user_dp)
        self.codec: FixedPointCodec | None = None
        self._rounding_slack = 0.0
        self._count_bit = 0.5
        self.compression = compression if compression is not None else CompressionConfig()
        c = self.compression
        # Geometry of the compressed delta: rotation pads to a power of two, then a subset is kept.
        self._rotated_dim = padded_dim(layout.dim) if c.rotation else layout.dim
        self._kept = kept_count(self._rotated_dim, sparsity=c.sparsity) if c.sparsity > 0 else self._rotated_dim
        # Public seeds of the shared rotation signs and sparsification subsets (per round inside the stages).
        self._stage_seed = derive_seed(seed, "upload-stages")
        self._compressed_plain = self.secagg is None and bool(c.rotation or c.sparsity > 0 or c.bits)
        if self.secagg is not None and c.sparsify == "topk" and c.sparsity > 0:
            raise ConfigError(
                "compression.sparsify = 'topk' cannot be used with secagg.enabled: each client would keep different "
                "coordinates, so the masked vectors would not line up for the secure sum; use 'random'"
            )
        if c.conditional_rounding and (self.secagg is None or user_dp is None):
            raise ConfigError("compression.conditional_rounding needs secagg.enabled and user-level DP")
        if self.secagg is not None:
            # The loss rides along as one extra coordinate with its own range.
            # Extra coordinates: the local loss, and (user-level DP) the "unclipped" bit; none under
            # distributed DP (they would reach the server noiseless).
            extra = 0 if user_mechanism != "central" else 2 if user_dp is not None else 1
            # Rotated coordinates of a known L2 clip get a range of a few standard deviations (issue 16).
            self._coordinate_range = coordinate_range(
                coordinate_clip=self.secagg.clip,
                clip_norm=None if user_dp is None or user_dp.adaptive is not None else user_dp.clip_norm,
                rotated=c.rotation,
                rotated_dim=self._rotated_dim,
                kept=self._kept,
            )
            clip = np.full(self._kept + extra, self._coordinate_range, dtype=np.float64)
            clip[self._kept :] = self.secagg.loss_clip
            # Poisson cohorts (user-level DP) can exceed clients_per_round: leave room for everyone.
            summands = num_clients if user_dp is not None else clients_per_round
            if user_mechanism != "central":
                assert user_dp is not None
                self.distributed = distributed_plan(
                    mechanism=user_mechanism,
                    noise_multiplier=user_dp.noise_multiplier,
                    clip_norm=user_dp.clip_norm,
                    dim=layout.dim,
                    secagg=self.secagg,
                    compression=self.compression,
                    num_clients=num_clients,
                    clients_per_round=clients_per_round,
                )
                summands = self.distributed.summands  # room for the summed noise too
            try:
                self.codec = FixedPointCodec(bits=self.secagg.bits, clip=clip, num_summands=summands)
            except ValueError as exc:
                raise ConfigError(f"secagg.bits = {self.secagg.bits}: {exc}") from None
            self._upload_dim = self._kept + extra
            if user_dp is not None:
                self._plan_rounding(user_dp)

    def _plan_rounding(self, user_dp: DPFedAvgServer) -> None:
        """Keep the user-level DP sensitivities true *after* stochastic rounding (issue: rounding adds
        up to one quantization step per coordinate, up to sqrt(k) / scale in L2 norm over the k
        coordinates that are rounded).

        Clients clip their delta to a bound ``C'`` (:meth:`upload_clip_norm`) below C so that the
        decoded delta has norm at most C: the rounding error (worst case ``sqrt(k)`` steps, or
        the conditional-rounding bound of Kairouz, Liu, Steinke 2021) is accounted over the
        ``k`` coordinates that travel (rotation pads to a power of two; sparsification keeps a
        subset and the server scales its sum by ``rotated / kept``, which multiplies the
        sensitivity by as much). The centred unclipped bit is sent as ``+-(1/2 - step)``, so the
        decoded bit stays within 1/2.
        """
        assert self.codec is not None and self.secagg is not None
        step = np.broadcast_to(self.codec.rounding_error_bound(), (self._upload_dim,))
        self._rounding_slack = float(np.linalg.norm(step[: self._kept]))
        self._count_bit = 0.5 - float(step[-1]) if self._upload_dim > self._kept else 0.5
        if self.upload_clip_norm() == 0.0:
            raise ConfigError(
                f"secagg.bits = {self.secagg.bits} leaves a rounding error of up to {self._rounding_slack:.3g} "
                f"(L2, over {self._kept} coordinates, with room for {self.codec.num_summands} summands), not below "
                f"privacy.user.clip_norm ({user_dp.clip_norm:g}) after sparsification's rescaling "
                f"({self._rotated_dim}/{self._kept}): every update would be clipped to zero; raise secagg.bits or "
                "lower secagg.clip or compression.sparsity"
            )
        if self._count_bit <= 0:
            raise ConfigError(
                f"secagg.bits = {self.secagg.bits} is too few for the unclipped count with secagg.loss_clip = "
                f"{self.secagg.loss_clip:g} and {self.codec.num_summands} summands; raise secagg.bits or lower "
                "secagg.loss_clip"
            )

    def upload_clip_norm(self) -> float | None:
        """The L2 bound clients clip their delta to before encoding (user-level DP under SecAgg), else ``None``.

        The largest ``C'`` whose decoded delta, rounding and sparsification's rescaling included, has
        norm at most the current clip norm C: ``C kept / rotated - slack`` (``slack`` the worst-case
        rounding error), or under conditional rounding the inverse of its norm bound.
        """
        if self.user_dp is None or self.secagg is None:
            return None
        assert self.codec is not None
        target = self.user_dp.clip_norm * self._kept / self._rotated_dim
        if self.compression.conditional_rounding:
            scale = float(np.asarray(self.codec.scale).reshape(-1)[0])
            return max_norm_before_rounding(target * scale, dim=self._kept, beta=_CONDITIONAL_BETA) / scale
        return max(target - self._rounding_slack, 0.0)

    def _validate(self, reply_data: bytes, *, sender: int, round: int, expected: set[int]) -> ClientUpdate:
        update = validate_update(reply_data, round=round, expected=expected, dim=self.layout.dim)
        if update.client_id != sender:
            raise ProtocolError(f"an update claiming client {update.client_id} came from node {sender}")
        return update

    def _apply(self, aggregate: npt.NDArray[np.floating]) -> tuple[float, str | None]:
        """Server optimizer step with the round's aggregate.

        Returns the L2 norm of the change, and why nothing was applied (a non-finite
        aggregate, or a non-finite model from the strategy) or ``None``.
        """
        if not np.isfinite(aggregate).all():
            return 0.0, "the aggregate has non-finite values"
        new_vector = self.strategy.apply(self.global_vector, aggregate.astype(np.float32))
        if new_vector.shape != self.global_vector.shape or not np.isfinite(new_vector).all():
            return 0.0, f"the strategy's new model is not a finite vector of {self.layout.dim} values"
        update_norm = float(np.linalg.norm(new_vector.astype(np.float64) - self.global_vector))
        self.global_vector = np.asarray(new_vector, dtype=np.float32)
        return update_norm, None

    def cohort(self, round: int) -> npt.NDArray[np.int64]:
        """The clients selected for ``round`` (Poisson-sampled under user-level DP)."""
        return sample_cohort(
            seed=self.seed,
            round=round,
            num_clients=self.num_clients,
            clients_per_round=self.clients_per_round,
            poisson=self.user_dp is not None,
        )

    def _noise(self, round: int) -> NoiseSource:
        return make_noise(secure=self.secure_noise, seed=self.seed, path=("user", round))

    def _result(self, round: int, cohort: list[int], aggregate: Aggregate | None, **fields: object) -> RoundResult:
        """Apply ``aggregate`` (when there is one) and record the round."""
        update_norm, rejected_aggregate = (0.0, None) if aggregate is None else self._apply(aggregate.delta)
        return RoundResult(
            round=round,
            train_loss=float("nan") if aggregate is None else aggregate.train_loss,
            update_norm=update_norm,
            cohort=tuple(cohort),
            clip_norm=None if aggregate is None else aggregate.clip_norm,
            unclipped_fraction=None if aggregate is None else aggregate.unclipped_fraction,
            aggregate_rejected=rejected_aggregate,
            **fields,  # type: ignore[arg-type]
        )

    def _plain_result(
        self, round: int, cohort: list[int], exchange: Exchange, decode: Callable[..., ClientUpdate]
    ) -> RoundResult:
        """Check a plain round's replies, aggregate the accepted updates and record the round (under
        user-level DP the noised sum is released every round, whoever answered).

        ``decode(data, sender=, round=, expected=)`` turns one reply into its update or raises
        ``ProtocolError`` (malformed, replayed, forged, out of range): rejected and counted. A valid
        ``Decline`` is rejected too, counted under its reason; one reply per cohort member is used.
        """
        expected = set(cohort)
        accepted: list[ClientUpdate] = []
        rejected = 0
        declines: Counter[str] = Counter()
        for reply in exchange.replies:
            try:
                if _count_decline(declines, reply.data, sender=reply.sender, round=round, expected=expected):
                    expected.discard(reply.sender)
                    rejected += 1
                    continue
                update = decode(reply.data, sender=reply.sender, round=round, expected=expected)
            except ProtocolError:
                rejected += 1
                continue
            expected.discard(update.client_id)  # a second reply from the same client is a replay
            accepted.append(update)
        aggregate = self.aggregation.from_updates(accepted, round=round)
        return self._result(
            round,
            cohort,
            aggregate,
            num_clients=len(accepted),
            rejected_updates=rejected,
            bytes_up=exchange.bytes_up,
            bytes_down=exchange.bytes_down,
            declines=dict(declines),
            **_plain_counts(exchange, cohort, len(accepted)),
        )

    def run_round(
        self, round: int, transport: Transport, *, on_client_done: Callable[[int], None] | None = None
    ) -> RoundResult:
        """Run one round over ``transport`` and update the global adapter in place."""
        cohort = [int(c) for c in self.cohort(round)]
        if self.secagg is not None:
            return self._run_secure_round(round, cohort, transport, on_client_done)
        if self._compressed_plain:
            return self._run_compressed_round(round, cohort, transport, on_client_done)
        broadcast = GlobalModel(round=round, vector=self.global_vector).to_bytes()
        exchange = transport.exchange(
            dict.fromkeys(cohort, broadcast), round=round, stage="train", on_reply=on_client_done
        )
        return self._plain_result(round, cohort, exchange, self._validate)

    def _compression_stages(self) -> list[UploadStage]:
        c, d = self.compression, self.layout.dim
        stages: list[UploadStage] = []
        if c.rotation:
            stages.append(RotateStage(dim=d, seed=self._stage_seed))
        if c.sparsity > 0 and c.sparsify == "topk":
            stages.append(TopKStage(dim=self._rotated_dim, kept=self._kept))
        elif c.sparsity > 0:
            stages.append(SparsifyStage(dim=self._rotated_dim, kept=self._kept, seed=self._stage_seed))
        return stages

    def upload_pipeline(self) -> UploadPipeline:
        """This round's client upload stages.

        Under secure aggregation: [clip,] [rotate,] [sparsify,] append metrics, fixed point (the
        metrics are appended after rotation, so that only the delta is rotated). Plain rounds
        with compression: [rotate,] [sparsify or top-k,] [fixed point with one summand]; the
        loss and example count travel in the message header.
        """
        if self.secagg is None:
            stages = self._compression_stages()
            if self.compression.bits:
                stages.append(
                    FixedPointStage(
                        bits=self.compression.bits,
                        clip=self.compression.clip,
                        extra_clip=1.0,
                        dim=self._kept,
                        extra=0,
                        num_summands=1,  # the server decodes each plain upload on its own
                    )
                )
            return UploadPipeline(stages)
        assert self.codec is not None
        stages = []
        names = ["train_loss"]
        clip = self.upload_clip_norm()
        if clip is not None:
            stages.append(ClipStage(max_norm=clip, count_bit=self._count_bit))
            names.append("unclipped")
        stages.extend(self._compression_stages())
        plan = self.distributed
        if plan is None:
            stages.append(AppendMetricsStage(names=names))
        conditional = self.compression.conditional_rounding and clip is not None
        stages.append(
            FixedPointStage(
                bits=self.secagg.bits,
                clip=self._coordinate_range,
                extra_clip=self.secagg.loss_clip,
                dim=self._kept,
                extra=len(names) if plan is None else 0,
                num_summands=self.codec.num_summands,
                conditional_norm=clip if conditional else None,
                beta=_CONDITIONAL_BETA,
                noise_summands=0 if plan is None else plan.noise_summands,
            )
        )
        if plan is not None:  # each client's share of the noise, before the SecAgg+ masks
            stages.append(
                DistributedNoiseStage(
                    mechanism=plan.mechanism,
                    local_stddev=plan.local_stddev,
                    bits=self.secagg.bits,
                    dim=self._kept,
                    min_contributors=plan.min_contributors,
                    secure=self.secure_noise,
                )
            )
        return UploadPipeline(stages)

    def _decode_plain(self, raw: bytes, *, sender: int, round: int, expected: set[int]) -> ClientUpdate:
        """One client's compressed plain upload, decoded on its own, as the update it stands for."""
        message = EncodedUpdate.from_bytes(raw)
        if message.round != round:
            raise ProtocolError(f"update for round {message.round} received in round {round}")
        if message.client_id not in expected or message.client_id != sender:
            raise ProtocolError(f"an update claiming client {message.client_id} came from node {sender}")
        pipeline = self.upload_pipeline()
        last = pipeline.stages[-1] if pipeline.stages else None
        bits = last.bits if isinstance(last, FixedPointStage) else 0
        if message.bits != bits:
            raise ProtocolError(f"update coded at {message.bits} bits; this round's stages use {bits}")
        support = message.support.astype(np.int64) if message.support.size else None
        decoded = pipeline.decode_sum(
            Upload(values=message.values, support=support), StageContext(round=round, contributors=1)
        )
        update = ClientUpdate(
            round=round,
            client_id=message.client_id,
            num_examples=message.num_examples,
            train_loss=message.train_loss,
            delta=np.asarray(decoded.values, dtype=np.float32),
        )
        return validate_update(update.to_bytes(), round=round, expected=expected, dim=self.layout.dim)

    def _run_compressed_round(
        self, round: int, cohort: list[int], transport: Transport, on_client_done: Callable[[int], None] | None
    ) -> RoundResult:
        """A plain round whose uploads go through the compression stages; ``bytes_up`` counts the encodings."""
        broadcast = CompressedRoundRequest(
            round=round, vector=self.global_vector, stages=self.upload_pipeline().to_json()
        ).to_bytes()
        exchange = transport.exchange(
            dict.fromkeys(cohort, broadcast), round=round, stage="train", on_reply=on_client_done
        )
        return self._plain_result(round, cohort, exchange, self._decode_plain)

    def _run_secure_round(
        self,
        round: int,
        members: list[int],
        transport: Transport,
        on_client_done: Callable[[int], None] | None,
    ) -> RoundResult:
        """One round under SecAgg+: the server only ever holds the masked vectors and their sum."""
        assert self.secagg is not None and self.codec is not None
        if len(members) < 3:
            reason = f"a cohort of {len(members)} clients is too small for secure aggregation (needs 3)"
            nobody: _Participation = {"answered": 0, "unanswered": 0, "rejected_clients": 0, "seconds_waiting": 0.0}
            return self._finish_secure_round(round, members, None, (), 0, reason, 0, 0, nobody, {})
        degree = self.secagg.resolved_degree(len(members))
        secagg_server = SecAggServer(
            round=round,
            cohort=members,
            degree=degree,
            # Public; from the run's seed, so dropout patterns (and aborts) replay.
            graph_seed=generator(self.seed, "secagg-graph", round).bytes(16),
            threshold=self.secagg.resolved_threshold(len(members), clamp=True),
            bits=self.secagg.bits,
            dim=self._upload_dim,
            # Public but fresh per execution (OS CSPRNG): keys of a re-run round never repeat.
            session=os.urandom(16),
        )
        pipeline = self.upload_pipeline()
        stages_json = pipeline.to_json()
        declined: set[int] = set()
        declines: Counter[str] = Counter()
        refused_by_server: set[int] = set()
        silent: set[int] = set()
        waited = 0.0
        down = up = 0
        try:
            outbox = secagg_server.start()
            for index, stage in enumerate(SECAGG_STAGES):
                if index == 0:  # the opening message carries the model and the upload stages
                    messages = {
                        cid: SecureRoundRequest(
                            round=round, vector=self.global_vector, stages=stages_json, setup=setup
                        ).to_bytes()
                        for cid, setup in outbox.items()
                    }
                else:
                    messages = {cid: m for cid, m in outbox.items() if cid not in refused_by_server}
                exchange = transport.exchange(
                    messages, round=round, stage=stage, on_reply=on_client_done if index == 0 else None
                )
                down, up = down + exchange.bytes_down, up + exchange.bytes_up
                waited += exchange.seconds_waiting
                seen: set[int] = set()
                for reply in exchange.replies:
                    if reply.sender in seen or reply.sender not in messages:
                        continue  # one reply per addressee and stage; later ones are replays
                    seen.add(reply.sender)
                    try:
                        if index == 0 and _count_decline(
                            declines, reply.data, sender=reply.sender, round=round, expected=set(messages)
                        ):
                            declined.add(reply.sender)  # no usable update (e.g. not finite): out of the protocol
                            continue
                        secagg_server.receive(reply.data)
                    except ProtocolError:
                        refused_by_server.add(reply.sender)  # forged, altered or malformed: a dropout
                silent |= set(messages) - seen
                outbox = secagg_server.finish_stage()
        except ProtocolError as exc:  # SecAggAborted, or a stage the server cannot finish safely
            counts = _secure_counts(members, silent, declined | refused_by_server, waited)
            return self._finish_secure_round(
                round, members, None, (), len(declined), str(exc), down, up, counts, declines
            )
        assert secagg_server.result is not None
        counts = _secure_counts(members, silent, declined | refused_by_server, waited)
        return self._finish_secure_round(
            round,
            members,
            secagg_server.result,
            secagg_server.contributors,
            len(declined),
            None,
            down,
            up,
            counts,
            declines,
        )

    def _finish_secure_round(
        self,
        round: int,
        members: list[int],
        result: npt.NDArray[np.unsignedinteger] | None,
        contributors: tuple[int, ...],
        declined: int,
        abort_reason: str | None,
        bytes_down: int,
        bytes_up: int,
        counts: _Participation,
        declines: Mapping[str, int],
    ) -> RoundResult:
        d = self.layout.dim
        pipeline = self.upload_pipeline()
        total, metrics = np.zeros(d), {}
        if result is not None:
            try:  # a sum that the contributors' codes cannot add up to (wrapped or forged) is never used
                decoded = pipeline.decode_sum(
                    Upload(values=result), StageContext(round=round, contributors=len(contributors))
                )
                total, metrics = decoded.values, decoded.metrics
            except ProtocolError as exc:
                abort_reason, contributors = f"secure sum refused: {exc}", ()
        aggregate = self.aggregation.from_sum(
            total,
            contributors=len(contributors),
            loss_sum=float(metrics.get("train_loss", 0.0)),
            round=round,
            centred_count=float(metrics.get("unclipped", 0.0)),
            count_scale=0.5 / self._count_bit,
        )
        return self._result(
            round,
            members,
            aggregate,
            num_clients=len(contributors),
            rejected_updates=declined,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            dropped_clients=len(members) - len(contributors) - declined,
            aborted=abort_reason,
            declines=dict(declines),
            **counts,
        )


def _count_decline(declines: Counter[str], data: bytes, *, sender: int, round: int, expected: Collection[int]) -> bool:
    """Whether ``data`` is a :class:`Decline`; a valid one (this round, from its sender, one per
    client) is counted under its reason.

    Raises:
        ProtocolError: a decline that is malformed, of another round or client, or a repeat.
    """
    if message_kind(data) != Decline.KIND:
        return False
    decline = Decline.from_bytes(data)
    if decline.round != round or decline.client_id != sender or sender not in expected:
        raise ProtocolError(
            f"decline from {sender} claims client {decline.client_id}, round {decline.round} "
            f"(expected an unanswered cohort member in round {round})"
        )
    declines[decline.reason] += 1
    return True


def _secure_counts(members: list[int], silent: set[int], rejected: set[int], waited: float) -> _Participation:
    """Who answered every SecAgg+ stage they were sent, who was rejected, and the summed wait."""
    dropped = (silent - rejected) & set(members)
    return {
        "answered": len(members) - len(dropped),
        "unanswered": len(dropped),
        "rejected_clients": len(rejected & set(members)),
        "seconds_waiting": waited,
    }
