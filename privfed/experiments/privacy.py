"""A run's noise multipliers, resolved from its config (calibrated where a target epsilon is given).

Needs only the config, each client's example count (record-level DP) and the adapter's
size (distributed DP), never a model, so a run (:func:`privfed.experiments.runner.resolve_privacy`)
and ``privfed validate`` (:mod:`privfed.experiments.plan`) resolve the same sigmas.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from privfed.client.schedule import local_steps, sampling_rate_for
from privfed.errors import ConfigError
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.calibrate import calibrate, calibrate_noise_multiplier
from privfed.privacy.distributed import DistributedNoisePlan, distributed_plan
from privfed.privacy.events import PrivacyEvent, SampledGaussianEvent

if TYPE_CHECKING:
    from privfed.config import ExperimentConfig

__all__ = ["PrivacyPlan", "resolve_noise"]


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
    """Noise multipliers resolved from the config (calibrated when a target epsilon is given)."""

    sample_noise_multiplier: float | None
    user_noise_multiplier: float | None
    user_sample_rate: float
    # privacy.user.mechanism distributed_gaussian / skellam: the clients' noise shares and codec room.
    user_distributed: DistributedNoisePlan | None = None

    def user_event(self, *, steps: int, round: int = 0) -> PrivacyEvent:
        """The user-level ledger event of ``steps`` rounds (central: a sampled Gaussian)."""
        if self.user_distributed is not None:
            return self.user_distributed.event(steps=steps, round=round)
        assert self.user_noise_multiplier is not None
        return SampledGaussianEvent(
            noise_multiplier=self.user_noise_multiplier,
            sample_rate=self.user_sample_rate,
            steps=steps,
            scope="user",
            round=round,
        )


def resolve_noise(config: ExperimentConfig, *, client_sizes: Sequence[int], adapter_dim: int | None) -> PrivacyPlan:
    """Check the privacy config against the data and calibrate noise multipliers.

    Record-level sigma is calibrated so that every client stays within its
    target even if it takes part in every round; user-level sigma for
    ``rounds`` Poisson-sampled rounds at rate ``clients_per_round / num_clients``.

    Args:
        client_sizes: training examples per client (read only for record-level DP).
        adapter_dim: trainable adapter parameters (read only for distributed DP).

    Raises:
        ConfigError: delta too large for the smallest client, or no sigma meets the target.
    """
    p = config.privacy
    rounds = config.server.rounds
    user_rate = config.server.clients_per_round / config.partition.num_clients
    sample_sigma = user_sigma = None
    if p.sample_level:
        sizes = list(client_sizes)
        if p.delta >= 1 / min(sizes):
            raise ConfigError(
                f"privacy.delta must be < 1/(smallest client's examples) = {1 / min(sizes):g} for record-level DP; "
                f"got {p.delta:g}"
            )
        shapes = {(sampling_rate_for(config.client, n), local_steps(config.client, n)) for n in sizes}
        if p.sample.noise_multiplier > 0:
            sample_sigma = p.sample.noise_multiplier
        else:

            def worst(sigma: float) -> float:
                return max(
                    compute_epsilon(
                        [SampledGaussianEvent(noise_multiplier=sigma, sample_rate=q, steps=rounds * s, scope="sample")],
                        delta=p.delta,
                        accountant=p.accountant,
                    )
                    for q, s in shapes
                )

            sample_sigma = calibrate(target_epsilon=p.sample.target_epsilon, epsilon_of=worst)
    if p.user_level and p.user.mechanism != "central":
        if adapter_dim is None:
            raise ValueError(f"privacy.user.mechanism = {p.user.mechanism!r} needs the adapter's size (adapter_dim)")
        dim = adapter_dim

        def plan_for(sigma: float) -> DistributedNoisePlan:
            return distributed_plan(
                mechanism=p.user.mechanism,
                noise_multiplier=sigma,
                clip_norm=p.user.clip_norm,
                dim=dim,
                secagg=config.secagg,
                compression=config.compression,
                num_clients=config.partition.num_clients,
                clients_per_round=config.server.clients_per_round,
            )

        refused: list[ConfigError] = []

        def distributed_epsilon(sigma: float) -> float:
            try:
                event = plan_for(sigma).event(steps=rounds)
            except ConfigError as exc:  # too much noise for secagg.bits: no use
                refused.append(exc)
                return float("inf")
            return compute_epsilon([event], delta=p.delta, accountant=p.accountant)

        try:
            user_sigma = p.user.noise_multiplier or calibrate(
                target_epsilon=p.user.target_epsilon, epsilon_of=distributed_epsilon
            )
        except ConfigError:
            if not refused:
                raise
            # The search failed because the plan refused the noise it needed: say why, not only "no sigma".
            raise ConfigError(
                f"privacy.user.target_epsilon = {p.user.target_epsilon:g} cannot be calibrated: {refused[-1]}"
            ) from None
        return PrivacyPlan(sample_sigma, user_sigma, user_rate, plan_for(user_sigma))
    if p.user_level:
        user_sigma = p.user.noise_multiplier or calibrate_noise_multiplier(
            target_epsilon=p.user.target_epsilon,
            delta=p.delta,
            sample_rate=user_rate,
            steps=rounds,
            accountant=p.accountant,
        )
    return PrivacyPlan(sample_sigma, user_sigma, user_rate)
