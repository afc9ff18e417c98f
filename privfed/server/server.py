"""Round orchestration: sample a cohort, broadcast, validate replies, aggregate."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from privfed.adapters.layout import AdapterLayout
from privfed.compression.quantize import FixedPointCodec
from privfed.config import SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy.dpfedavg import DPFedAvgServer
from privfed.privacy.noise import NoiseSource, make_noise
from privfed.rng import generator
from privfed.secagg.driver import DropoutPlan
from privfed.secagg.graph import neighbour_graph
from privfed.secagg.server import SecAggServer
from privfed.server.strategies import Strategy
from privfed.transport.base import SecureExchange, SecureTransport, Transport
from privfed.transport.messages import ClientUpdate, GlobalModel

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


def check_strategy_composes(strategy: Strategy, *, user_dp: bool, secure: bool) -> None:
    """``ConfigError`` unless ``strategy`` can run when DP-FedAvg or secure summation makes its aggregate.

    Under user-level DP the aggregate is DP-FedAvg's noised mean of clipped deltas,
    and under secure aggregation the server holds only the sum of the updates: in
    both, ``strategy.aggregate`` (which needs every individual update) cannot run, and
    only ``strategy.apply`` does. That is faithful only for a strategy whose
    ``aggregate`` *is* the (weighted) mean, which it declares with a class attribute
    ``aggregates_mean = True`` (FedAvg, FedAdam). A robust aggregator (trimmed mean,
    median, Krum) would be silently replaced by the mean, so it is refused.
    """
    if not (user_dp or secure) or getattr(strategy, "aggregates_mean", False) is True:
        return
    mode = " and ".join(m for m, on in (("user-level DP", user_dp), ("secure aggregation", secure)) if on)
    raise ConfigError(
        f"server.strategy {type(strategy).__name__} cannot run under {mode}: the server only gets a "
        "(noised) sum of the updates, so its aggregate() would be replaced by the mean; use a mean-based "
        "strategy (fedavg, fedadam), or set aggregates_mean = True on a strategy whose aggregate is the mean"
    )


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
        self.codec: FixedPointCodec | None = None
        self._rounding_slack = 0.0
        self._count_bit = 0.5
        if self.secagg is not None:
            # The loss rides along as one extra coordinate with its own range.
            # Extra coordinates: the local loss, and (user-level DP) the "unclipped" bit.
            extra = 2 if user_dp is not None else 1
            clip = np.full(layout.dim + extra, self.secagg.clip, dtype=np.float64)
            clip[layout.dim :] = self.secagg.loss_clip
            # Poisson cohorts (user-level DP) can exceed clients_per_round: leave room for everyone.
            summands = num_clients if user_dp is not None else clients_per_round
            self.codec = FixedPointCodec(bits=self.secagg.bits, clip=clip, num_summands=summands)
            self._upload_dim = layout.dim + extra
            if user_dp is not None:
                self._plan_rounding(user_dp)

    def _plan_rounding(self, user_dp: DPFedAvgServer) -> None:
        """Keep the user-level DP sensitivities true *after* stochastic rounding (issue: rounding adds
        up to one quantization step per coordinate, up to sqrt(d) / scale in L2 norm).

        Clients clip their delta to ``C - slack`` (``slack`` bounds the rounding error's L2
        norm over the delta coordinates), so the decoded delta has norm below C; and they send
        the centred unclipped bit as ``+-(1/2 - step)``, so the decoded bit stays within 1/2.
        """
        assert self.codec is not None
        d = self.layout.dim
        step = np.broadcast_to(self.codec.rounding_error_bound(), (self._upload_dim,))
        self._rounding_slack = float(np.linalg.norm(step[:d]))
        self._count_bit = 0.5 - float(step[d + 1])
        assert self.secagg is not None
        if self._rounding_slack >= user_dp.clip_norm:
            raise ConfigError(
                f"secagg.bits = {self.secagg.bits} leaves a rounding error of up to {self._rounding_slack:.3g} "
                f"(L2, over {d} coordinates, with room for {self.codec.num_summands} summands), not below "
                f"privacy.user.clip_norm ({user_dp.clip_norm:g}): every update would be clipped to zero; "
                "raise secagg.bits or lower secagg.clip"
            )
        if self._count_bit <= 0:
            raise ConfigError(
                f"secagg.bits = {self.secagg.bits} is too few for the unclipped count with secagg.loss_clip = "
                f"{self.secagg.loss_clip:g} and {self.codec.num_summands} summands; raise secagg.bits or lower "
                "secagg.loss_clip"
            )

    def upload_clip_norm(self) -> float | None:
        """The L2 bound clients clip their delta to before encoding (user-level DP under SecAgg), else ``None``.

        ``C - slack`` so that the decoded delta, rounding included, has norm at most C.
        """
        if self.user_dp is None or self.secagg is None:
            return None
        return max(self.user_dp.clip_norm - self._rounding_slack, 0.0)

    def _validate(self, raw: bytes, *, round: int, expected: set[int]) -> ClientUpdate:
        return validate_update(raw, round=round, expected=expected, dim=self.layout.dim)

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

    def run_round(
        self, round: int, transport: Transport, *, on_client_done: Callable[[int], None] | None = None
    ) -> RoundResult:
        """Run one round and update the global adapter in place."""
        cohort = self.cohort(round)
        broadcast = GlobalModel(round=round, vector=self.global_vector).to_bytes()
        if self.secagg is not None:
            return self._run_secure_round(round, cohort, broadcast, transport, on_client_done)
        exchange = transport.exchange(
            broadcast=broadcast, cohort=[int(c) for c in cohort], on_client_done=on_client_done
        )
        expected = {int(c) for c in cohort}
        accepted: list[ClientUpdate] = []
        rejected = 0
        for raw in exchange.uploads:
            try:
                update = self._validate(raw, round=round, expected=expected)
            except ProtocolError:
                rejected += 1
                continue
            expected.discard(update.client_id)  # a second reply from the same client is a replay
            accepted.append(update)
        update_norm = 0.0
        train_loss = float("nan")
        dp_result = None
        rejected_aggregate = None
        if self.user_dp is not None:
            # The noised sum is released every round, whoever answered.
            deltas = np.stack([u.delta for u in accepted]) if accepted else np.zeros((0, self.layout.dim), np.float32)
            dp_result = self.user_dp.aggregate(deltas, noise=self._noise(round))
            update_norm, rejected_aggregate = self._apply(dp_result.mean_delta)
            losses = np.array([u.train_loss for u in accepted])
            if np.isfinite(losses).any():
                train_loss = float(np.mean(losses[np.isfinite(losses)]))
        elif accepted:
            deltas = np.stack([u.delta for u in accepted])
            counts = np.array([u.num_examples for u in accepted], dtype=np.float64)
            weights = counts if self.weighting == "examples" else np.ones_like(counts)
            aggregate = self.strategy.aggregate(deltas, weights=weights)
            update_norm, rejected_aggregate = self._apply(aggregate)
            losses = np.array([u.train_loss for u in accepted])
            finite = np.isfinite(losses)
            if finite.any():
                train_loss = float(np.average(losses[finite], weights=weights[finite]))
        return RoundResult(
            round=round,
            num_clients=len(accepted),
            rejected_updates=rejected,
            train_loss=train_loss,
            bytes_up=exchange.bytes_up,
            bytes_down=exchange.bytes_down,
            update_norm=update_norm,
            cohort=tuple(int(c) for c in cohort),
            clip_norm=None if dp_result is None else dp_result.clip_norm,
            unclipped_fraction=None if dp_result is None else dp_result.unclipped_fraction,
            aggregate_rejected=rejected_aggregate,
        )

    def _run_secure_round(
        self,
        round: int,
        cohort: npt.NDArray[np.int64],
        broadcast: bytes,
        transport: Transport,
        on_client_done: Callable[[int], None] | None,
    ) -> RoundResult:
        """One round under SecAgg+: the server only ever holds the masked vectors and their sum."""
        assert self.secagg is not None and self.codec is not None
        if not isinstance(transport, SecureTransport):
            raise ProtocolError(f"{type(transport).__name__} cannot run secure aggregation")
        members = [int(c) for c in cohort]
        if len(members) < 3:
            exchange = SecureExchange(
                None, (), 0, f"a cohort of {len(members)} clients is too small for secure aggregation (needs 3)", 0, 0
            )
            return self._finish_secure_round(round, members, exchange)
        degree = self.secagg.resolved_degree(len(members))
        graph = neighbour_graph(members, degree=degree, rng=generator(self.seed, "secagg-graph", round))
        secagg_server = SecAggServer(
            round=round,
            neighbours=graph,
            threshold=self.secagg.resolved_threshold(len(members), clamp=True),  # Poisson cohorts vary
            bits=self.secagg.bits,
            dim=self._upload_dim,
            session=generator(self.seed, "secagg-session", round).bytes(16),  # public, per round
        )
        dropouts = DropoutPlan.random(
            members, rate=self.secagg.dropout_rate, rng=generator(self.seed, "secagg-dropout", round)
        )
        exchange = transport.secure_exchange(
            broadcast=broadcast,
            server=secagg_server,
            codec=self.codec,
            dropouts=dropouts,
            clip_norm=self.upload_clip_norm(),
            count_bit=self._count_bit,
            on_client_done=on_client_done,
        )
        return self._finish_secure_round(round, members, exchange)

    def _finish_secure_round(self, round: int, members: list[int], exchange: SecureExchange) -> RoundResult:
        assert self.codec is not None
        contributors = len(exchange.contributors)
        update_norm, train_loss = 0.0, float("nan")
        dp_result = None
        rejected_aggregate = None
        d = self.layout.dim
        if self.user_dp is not None:
            # Clients clipped before masking (to C - rounding slack); the server noises the secure sum.
            sums = self.codec.decode_sum(exchange.result) if exchange.result is not None else np.zeros(d + 2)
            dp_result = self.user_dp.from_sums(
                clipped_sum=sums[:d],
                centred_count=float(sums[d + 1]),
                count_scale=0.5 / self._count_bit,
                noise=self._noise(round),
            )
            if contributors:
                train_loss = float(sums[d] / contributors)
            update_norm, rejected_aggregate = self._apply(dp_result.mean_delta)
        elif exchange.result is not None and contributors:
            mean = self.codec.decode_sum(exchange.result) / contributors
            train_loss = float(mean[d])
            update_norm, rejected_aggregate = self._apply(mean[:d])
        return RoundResult(
            round=round,
            num_clients=contributors,
            rejected_updates=exchange.rejected,
            train_loss=train_loss,
            bytes_up=exchange.bytes_up,
            bytes_down=exchange.bytes_down,
            update_norm=update_norm,
            dropped_clients=len(members) - contributors - exchange.rejected,
            aborted=exchange.abort_reason,
            cohort=tuple(members),
            clip_norm=None if dp_result is None else dp_result.clip_norm,
            unclipped_fraction=None if dp_result is None else dp_result.unclipped_fraction,
            aggregate_rejected=rejected_aggregate,
        )
