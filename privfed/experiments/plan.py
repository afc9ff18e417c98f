"""What a config will do, before it runs: the privacy plan and the keys that apply.

``privfed validate CONFIG`` prints both. The plan resolves the noise
multipliers exactly as a run does (:func:`privfed.experiments.privacy.resolve_noise`,
calibrating to a target epsilon where one is given) and projects the epsilon
the whole run spends per privacy unit at the configured delta. No model is
loaded: record-level DP needs each client's example count (its Poisson rate
and steps), so the dataset is loaded, split and partitioned as a run does it;
user-level DP needs only the config, except distributed DP
(``privacy.user.mechanism``), whose integer sensitivity and noise room depend on
the adapter's size: the base model is then loaded and wrapped (no training).

Nothing here imports torch, transformers or PEFT unless the adapter's size is needed;
the Opacus accountants (any DP level) import torch through Opacus' package.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from privfed.config import ExperimentConfig, config_to_dict

__all__ = [
    "LevelPlan",
    "PrivacyPlanReport",
    "adapter_dim",
    "applicable_config",
    "client_sizes",
    "format_plan",
    "privacy_plan",
]


@dataclasses.dataclass(frozen=True)
class LevelPlan:
    """One privacy level of a run, resolved.

    Attributes:
        level: ``"user"`` (DP-FedAvg) or ``"sample"`` (DP-SGD on each client).
        unit: the privacy unit the epsilon protects: ``"user"`` (a client's whole data) or ``"record"``.
        noise_multiplier: sigma, noise std over the clipping norm.
        calibrated: sigma was calibrated to ``target_epsilon`` (else given in the config).
        target_epsilon: the budget the ledger enforces, or ``None``.
        sample_rates: (smallest, largest) Poisson sampling rate: clients per round for
            ``user``, examples per step on a client for ``sample``.
        steps: (fewest, most) sampled-Gaussian steps over the whole run.
        epsilon: projected epsilon of the whole run at ``delta`` (for ``sample``, the
            worst client, as if it took part in every round).
        delta: the configured delta.
        mechanism: who adds the user-level noise: ``"central"`` (the server) or a distributed
            mechanism (each client its share, under SecAgg).
        distributed: for a distributed mechanism, the noise shares and codec room
            (:class:`~privfed.privacy.distributed.DistributedNoisePlan`).
    """

    level: str
    unit: str
    noise_multiplier: float
    calibrated: bool
    target_epsilon: float | None
    sample_rates: tuple[float, float]
    steps: tuple[int, int]
    epsilon: float
    delta: float
    mechanism: str = "central"
    distributed: Any = None


@dataclasses.dataclass(frozen=True)
class PrivacyPlanReport:
    """The privacy levels a config applies (empty when it is not private, with the reason)."""

    levels: tuple[LevelPlan, ...]
    not_private: str | None
    accountant: str
    client_sizes: tuple[int, ...] | None = None


def client_sizes(config: ExperimentConfig) -> list[int]:
    """Training examples per client, as a run splits and partitions them (no model is loaded).

    Raises:
        ConfigError: the partition is impossible for this data.
        DataError: the data cannot be loaded.
    """
    from privfed.data.files import load_data
    from privfed.experiments.split import split_data

    _, _, parts = split_data(config, load_data(config.data))
    return [len(part) for part in parts]


def adapter_dim(config: ExperimentConfig) -> int:
    """Trainable adapter parameters of ``config``'s model and adapter (the base model is loaded, not trained)."""
    from privfed.adapters.layout import AdapterLayout
    from privfed.adapters.methods import wrap_model
    from privfed.data.files import load_data
    from privfed.models.registry import get_model_spec, load_base_model

    spec = get_model_spec(config.model.name)
    labels = load_data(config.data).num_classes if spec.task == "classification" else None
    loaded = load_base_model(config.model.name, num_labels=labels, init_seed=0)
    return AdapterLayout.from_model(wrap_model(loaded.model, config.adapter, spec)).dim


def privacy_plan(
    config: ExperimentConfig, *, sizes: Sequence[int] | None = None, dim: int | None = None
) -> PrivacyPlanReport:
    """Resolve sigma, sampling rates, steps and projected epsilon for every level ``config`` applies.

    Args:
        sizes: examples per client (:func:`client_sizes` is called when record-level DP needs them).
        dim: trainable adapter parameters (:func:`adapter_dim` is called when distributed DP needs it).
    """
    from privfed.client.schedule import local_steps, sampling_rate_for
    from privfed.experiments.privacy import resolve_noise
    from privfed.privacy.accountants import compute_epsilon
    from privfed.privacy.events import SampledGaussianEvent

    p = config.privacy
    if not (p.sample_level or p.user_level):
        reason = "privacy.mode = 'none': no DP noise is added, so no epsilon bounds what the updates reveal"
        if config.secagg.enabled:
            reason += " (secure aggregation hides each client's update from the server, but is not DP)"
        return PrivacyPlanReport((), reason, p.accountant, None if sizes is None else tuple(sizes))
    if p.sample_level and sizes is None:
        sizes = client_sizes(config)
    distributed = p.user_level and p.user.mechanism != "central"
    if distributed and dim is None:
        dim = adapter_dim(config)
    resolved = resolve_noise(config, client_sizes=sizes or [], adapter_dim=dim)
    rounds = config.server.rounds
    levels: list[LevelPlan] = []

    def epsilon(sigma: float, rate: float, steps: int, scope: Literal["sample", "user"]) -> float:
        event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=rate, steps=steps, scope=scope)
        return compute_epsilon([event], delta=p.delta, accountant=p.accountant)

    if resolved.user_noise_multiplier is not None:
        sigma, rate = resolved.user_noise_multiplier, resolved.user_sample_rate
        levels.append(
            LevelPlan(
                level="user",
                unit="user",
                noise_multiplier=sigma,
                calibrated=p.user.noise_multiplier == 0,
                target_epsilon=p.user.target_epsilon or None,
                sample_rates=(rate, rate),
                steps=(rounds, rounds),
                epsilon=compute_epsilon([resolved.user_event(steps=rounds)], delta=p.delta, accountant=p.accountant),
                delta=p.delta,
                mechanism=p.user.mechanism,
                distributed=resolved.user_distributed,
            )
        )
    if resolved.sample_noise_multiplier is not None:
        assert sizes is not None
        sigma = resolved.sample_noise_multiplier
        shapes = sorted({(sampling_rate_for(config.client, n), rounds * local_steps(config.client, n)) for n in sizes})
        rates = [q for q, _ in shapes]
        steps = [s for _, s in shapes]
        levels.append(
            LevelPlan(
                level="sample",
                unit="record",
                noise_multiplier=sigma,
                calibrated=p.sample.noise_multiplier == 0,
                target_epsilon=p.sample.target_epsilon or None,
                sample_rates=(min(rates), max(rates)),
                steps=(min(steps), max(steps)),
                epsilon=max(epsilon(sigma, q, s, "sample") for q, s in shapes),
                delta=p.delta,
            )
        )
    return PrivacyPlanReport(tuple(levels), None, p.accountant, None if sizes is None else tuple(sizes))


def _span(low: float, high: float, fmt: str = ".4g") -> str:
    return f"{low:{fmt}}" if low == high else f"{low:{fmt}} to {high:{fmt}}"


def format_plan(report: PrivacyPlanReport, config: ExperimentConfig) -> list[str]:
    """The plan as short lines (without comment markers)."""
    lines = [
        f"privacy plan ({report.accountant} accountant, delta = {config.privacy.delta:g})"
        if report.levels
        else "privacy plan"
    ]
    if report.not_private is not None:
        lines.append(f"  not private: {report.not_private}")
    for level in report.levels:
        source = (
            f"calibrated to target epsilon {level.target_epsilon:g}"
            if level.calibrated and level.target_epsilon is not None
            else "given"
        )
        budget = "" if level.calibrated or level.target_epsilon is None else f"; budget {level.target_epsilon:g}"
        if level.level == "user" and level.distributed is not None:
            s, plan = config.server, level.distributed
            name = "discrete Gaussian" if level.mechanism == "distributed_gaussian" else "Skellam"
            lines.append(
                f"  user level (distributed DP-FedAvg: each client adds {name} noise under SecAgg, privacy unit: "
                f"user): sigma = {level.noise_multiplier:.4g} ({source}{budget}); clip norm "
                f"{config.privacy.user.clip_norm:g}; client sampling rate q = {s.clients_per_round}/"
                f"{config.partition.num_clients} = {level.sample_rates[0]:.4g} (Poisson); {level.steps[0]} steps "
                f"(rounds); projected epsilon = {level.epsilon:.4g} at delta = {level.delta:g} for the whole run "
                "(RDP accountant)"
            )
            lines.append(
                f"    noise shares: each client adds std {plan.local_stddev:.4g} (integer units) to {plan.dim} "
                f"coordinates; the accountant credits {plan.shares} shares, so a round decodes only with >= "
                f"{plan.min_contributors} contributors (provisioned for secagg.dropout_rate = "
                f"{config.secagg.dropout_rate:g}); sensitivity {plan.l2_sensitivity:.4g} integer units; "
                f"{config.secagg.bits}-bit modulus with room for {plan.max_contributors} clients' codes + "
                f"{plan.noise_summands} code ranges of noise; the server never adds noise nor sees a noiseless sum"
            )
        elif level.level == "user":
            s = config.server
            lines.append(
                f"  user level (DP-FedAvg, privacy unit: user): sigma = {level.noise_multiplier:.4g} "
                f"({source}{budget}); clip norm {config.privacy.user.clip_norm:g}"
                f"{' (adaptive)' if config.privacy.user.adaptive_clipping else ''}; client sampling rate "
                f"q = {s.clients_per_round}/{config.partition.num_clients} = {level.sample_rates[0]:.4g} (Poisson); "
                f"{level.steps[0]} steps (rounds); projected epsilon = {level.epsilon:.4g} at delta = {level.delta:g} "
                "for the whole run"
            )
        else:
            sizes = report.client_sizes or ()
            lines.append(
                f"  record level (DP-SGD, privacy unit: record): sigma = {level.noise_multiplier:.4g} "
                f"({source}{budget}); max grad norm {config.privacy.sample.max_grad_norm:g}; per-client Poisson rate "
                f"q = {_span(*level.sample_rates)} ({len(sizes)} clients holding {_span(min(sizes), max(sizes), 'd')} "
                f"examples); {_span(*level.steps, 'd')} steps over {config.server.rounds} rounds; projected "
                f"epsilon <= {level.epsilon:.4g} at delta = {level.delta:g} for the whole run (worst client, "
                "taking part in every round)"
            )
    return lines


# Keys that only some values of a sibling key use.
_PARTITION_KEYS = {"iid": set(), "natural": set(), "dirichlet": {"alpha"}, "shards": {"shards_per_client"}}
_PARTITION_SPECIFIC = {"alpha", "shards_per_client"}


def applicable_config(config: ExperimentConfig) -> dict[str, Any]:
    """The resolved config without the keys this config does not use.

    No ``[privacy.user]`` when the mode is ``sample``, no FedAdam betas with
    ``fedavg``, no secagg settings when it is off, no LoRA rank for prompt tuning, ...
    The result is a valid config mapping for the same experiment: a left-out key
    falls back to its default, which this config does not use either.
    """
    raw = copy.deepcopy(config_to_dict(config))
    data = raw["data"]
    if not config.data.user_data:
        for key in ("path", "text_column", "label_column", "client_column"):
            del data[key]
    else:
        if not config.data.path:
            del data["path"]
        if not config.data.client_column:
            del data["client_column"]
    for name, _ in config.adapter.other_method_configs:  # tables of adapter methods not selected
        del raw["adapter"][name]
    for name, _ in config.server.other_strategy_configs:
        del raw["server"][name]
    partition = raw["partition"]
    if config.partition.method in _PARTITION_KEYS:
        for key in _PARTITION_SPECIFIC - _PARTITION_KEYS[config.partition.method]:
            del partition[key]
    if config.client.local_steps > 0:
        del raw["client"]["local_epochs"]
    if not config.secagg.enabled:
        raw["secagg"] = {"enabled": False}
    privacy = raw["privacy"]
    p = config.privacy
    if not (p.sample_level or p.user_level):
        raw["privacy"] = {"mode": p.mode}
    else:
        if not p.sample_level:
            del privacy["sample"]
        if not p.user_level:
            del privacy["user"]
        elif not p.user.adaptive_clipping:
            for key in ("target_quantile", "clip_learning_rate", "count_stddev"):
                del privacy["user"][key]
    return raw
