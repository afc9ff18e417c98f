"""Build an experiment from its config and run it round by round into a run directory."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt
import torch

from privfed.adapters.layout import AdapterLayout
from privfed.adapters.methods import wrap_model
from privfed.client.data import ExampleSet
from privfed.client.node import ClientNode
from privfed.client.policy import NodePolicy
from privfed.client.schedule import local_steps, sampling_rate_for
from privfed.client.trainer import ClientTrainer, SampleDP
from privfed.config import ExperimentConfig, validate_against_model
from privfed.data.files import dataset_spec_for, load_data
from privfed.data.records import Dataset
from privfed.data.tokenize import tokenize_texts
from privfed.errors import CheckpointError, ConfigError, ModelError, PrivacyBudgetExceeded
from privfed.evaluation import EvalMetrics, evaluate_vector
from privfed.experiments.privacy import PrivacyPlan, resolve_noise
from privfed.experiments.provenance import (
    apply_determinism,
    collect_provenance,
    fingerprint_arrays,
    fingerprint_rows,
    fingerprint_tensors,
)
from privfed.experiments.records import RoundMetrics, RunSummary
from privfed.experiments.run_dir import Checkpoint, RunDirectory
from privfed.experiments.split import IndexArray, split_data
from privfed.models.registry import get_model_spec, load_base_model
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.dpfedavg import AdaptiveClipping, DPFedAvgServer
from privfed.privacy.events import PrivacyEvent, SampledGaussianEvent, event_from_json
from privfed.privacy.ledger import PrivacyLedger
from privfed.rng import derive_seed, torch_rng
from privfed.server.server import FederatedServer, RoundResult
from privfed.server.strategies import FedAdam, Strategy, make_strategy
from privfed.tasks import Task, get_task
from privfed.tracking import open_tracker, require_tracker, round_scalars
from privfed.transport.base import Transport, make_transport

__all__ = ["Experiment", "build_experiment", "resume_experiment", "run_experiment"]


@dataclasses.dataclass(eq=False)
class Experiment:
    """Everything built from a config, before any round runs.

    Attributes:
        config: the validated config.
        dataset: the loaded dataset.
        train_indices / eval_indices: rows of ``dataset`` used for training / held-out evaluation.
        client_indices: per client, rows of ``dataset`` it holds.
        model: the PEFT-wrapped model (base frozen).
        layout: trainable-parameter layout of ``model``.
        initial_vector: float32[d], the adapter before training.
        task: the training objective.
        client_data / eval_data: tokenized examples.
        base_params: parameter count of the base model.
        fingerprints: SHA-256 content digests of what the run uses (``dataset_rows``,
            ``partition``, ``base_model``, ``initial_adapter``), for provenance.
    """

    config: ExperimentConfig
    dataset: Dataset
    train_indices: IndexArray
    eval_indices: IndexArray
    client_indices: list[IndexArray]
    model: Any
    layout: AdapterLayout
    initial_vector: npt.NDArray[np.float32]
    task: Task
    client_data: list[ExampleSet]
    eval_data: ExampleSet
    base_params: int
    fingerprints: dict[str, str] = dataclasses.field(default_factory=dict)


def _check_compatible(config: ExperimentConfig) -> None:
    model_spec = get_model_spec(config.model.name)
    data_spec = dataset_spec_for(config.data)
    if data_spec.modality != "text":
        raise ConfigError(
            f"data.name {config.data.name!r} is an image dataset; model.name {config.model.name!r} "
            "needs a text dataset (bbc_news, tweets, drug_reviews, fortunes)"
        )
    if model_spec.task == "classification" and data_spec.task != "classification":
        raise ConfigError(
            f"model.name {config.model.name!r} is a classifier but data.name {config.data.name!r} is a "
            "language-modelling corpus; use a causal LM (smollm2, tiny-llama) or a labelled dataset"
        )


def resolve_device(name: str) -> torch.device:
    """The torch device for ``model.device``; ``ConfigError`` for a GPU that is not there."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device = 'cuda', but torch sees no GPU here (torch.cuda.is_available() is False)")
    return torch.device(name)


@dataclasses.dataclass(eq=False)
class _BuiltModel:
    """A run's PEFT-wrapped model (base frozen), built from its config and number of classes alone."""

    model: Any
    layout: AdapterLayout
    tokenizer: Any
    task: Task
    base_params: int
    base_fingerprint: str


def _build_model(config: ExperimentConfig, *, num_classes: int) -> _BuiltModel:
    """The model, tokenizer and task of ``config``; ``num_classes`` sizes a classifier's head.

    Needs no data: a Flower node training on its own file builds the run's model from the
    run's class count (seeded exactly as :func:`build_experiment` does).
    """
    seed = config.seed
    spec = get_model_spec(config.model.name)
    device = resolve_device(config.model.device)  # before the (slow) load
    loaded = load_base_model(
        config.model.name,
        num_labels=num_classes if spec.task == "classification" else None,
        init_seed=derive_seed(seed, "model-init"),
    )
    validate_against_model(config, loaded.model)
    base_params = sum(int(param.numel()) for param in loaded.model.parameters())
    base_fingerprint = fingerprint_tensors(loaded.model.state_dict().items())
    with torch_rng(derive_seed(seed, "adapter-init")):
        model = wrap_model(loaded.model, config.adapter, spec)
    model.to(device)
    return _BuiltModel(
        model=model,
        layout=AdapterLayout.from_model(model),
        tokenizer=loaded.tokenizer,
        task=get_task(spec.task),
        base_params=base_params,
        base_fingerprint=base_fingerprint,
    )


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Load data and model, split, partition and tokenize, as ``config`` says.

    Raises:
        ConfigError: if model and dataset do not fit together or the partition is impossible.
    """
    _check_compatible(config)
    apply_determinism(device=config.model.device)
    dataset = load_data(config.data)
    assert dataset.texts is not None
    train, held, client_indices = split_data(config, dataset)
    built = _build_model(config, num_classes=dataset.num_classes)
    model, layout = built.model, built.layout

    tokens = tokenize_texts(built.tokenizer, dataset.texts, max_length=config.model.max_length)

    def examples(rows: IndexArray) -> ExampleSet:
        return ExampleSet(tokens=tokens.take(rows), labels=dataset.labels[rows])

    initial_vector = layout.flatten(model)
    fingerprints = {
        "dataset_rows": fingerprint_rows(
            texts=dataset.texts, labels=dataset.labels, rows=np.concatenate([train, held])
        ),
        "partition": fingerprint_arrays(client_indices),
        "base_model": built.base_fingerprint,
        "initial_adapter": fingerprint_arrays([initial_vector]),
    }
    return Experiment(
        config=config,
        dataset=dataset,
        train_indices=train,
        eval_indices=held,
        client_indices=client_indices,
        model=model,
        layout=layout,
        initial_vector=initial_vector,
        task=built.task,
        client_data=[examples(rows) for rows in client_indices],
        eval_data=examples(held),
        base_params=built.base_params,
        fingerprints=fingerprints,
    )


class _Progress:
    """Round and client progress on stderr (tqdm), silent when ``quiet``."""

    def __init__(self, *, total_rounds: int, start_round: int, clients_per_round: int, quiet: bool) -> None:
        from tqdm.auto import tqdm

        self.quiet = quiet
        self.clients_per_round = clients_per_round
        self._tqdm = tqdm
        self.rounds = tqdm(
            total=total_rounds, initial=start_round, desc="rounds", unit="round", disable=quiet, file=sys.stderr
        )
        self.clients: Any = None

    def start_round(self, round: int) -> None:
        self.clients = self._tqdm(
            total=self.clients_per_round,
            desc=f"round {round} clients",
            unit="client",
            leave=False,
            disable=self.quiet,
            file=sys.stderr,
        )

    def client_done(self, client_id: int) -> None:
        if self.clients is not None:
            self.clients.update(1)

    def end_round(self, record: RoundMetrics) -> None:
        if self.clients is not None:
            self.clients.close()
        postfix: dict[str, float | None] = {"loss": record["train_loss"]}
        if record.get("eval_accuracy") is not None:
            postfix["eval_acc"] = record["eval_accuracy"]
        shown = {k: f"{v:.4f}" for k, v in postfix.items() if isinstance(v, float)}
        # The epsilon spent so far (the ledger's, at the configured delta), per privacy unit.
        for key, label in (("epsilon_user", "ε_user"), ("epsilon_sample_max", "ε_record")):
            value = record.get(key)
            if isinstance(value, (int, float)):
                shown[label] = f"{value:.3g}"
        self.rounds.set_postfix(shown)
        self.rounds.update(1)

    def close(self) -> None:
        self.rounds.close()


def _evaluate(exp: Experiment, vector: npt.NDArray[np.float32]) -> EvalMetrics:
    return evaluate_vector(
        model=exp.model,
        layout=exp.layout,
        task=exp.task,
        vector=vector,
        data=exp.eval_data,
        batch_size=exp.config.eval.batch_size,
    )


def _save(
    run_dir: RunDirectory,
    round: int,
    server: FederatedServer,
    strategy: Strategy,
    state: dict[str, Any],
    ledger: PrivacyLedger,
    user_dp: DPFedAvgServer | None,
) -> None:
    state["ledger"] = ledger.to_json()
    state["user_clip_norm"] = None if user_dp is None else user_dp.clip_norm
    arrays = {"global": server.global_vector}
    arrays.update({f"strategy.{k}": v for k, v in strategy.state_arrays().items()})
    run_dir.save_checkpoint(Checkpoint(round=round, arrays=arrays, state=state))


class _RoundExtras(TypedDict, total=False):
    """The keys of a :class:`RoundMetrics` that only some rounds have, in the order they are written."""

    eval_perplexity: float
    epsilon_user: float
    clip_norm: float | None
    unclipped_fraction: float | None
    epsilon_sample_max: float
    client_record_epsilon_max: float
    declines: dict[str, int]


def _round_extras(
    ledger: PrivacyLedger,
    plan: PrivacyPlan,
    result: RoundResult,
    evaluation: EvalMetrics | None,
    client_epsilon: float | None = None,
) -> _RoundExtras:
    out: _RoundExtras = {}
    if evaluation is not None and "eval_perplexity" in evaluation:
        out["eval_perplexity"] = evaluation["eval_perplexity"]
    if plan.user_noise_multiplier is not None:
        out["epsilon_user"] = ledger.epsilon_user()
        out["clip_norm"] = result.clip_norm
        out["unclipped_fraction"] = result.unclipped_fraction
    if plan.sample_noise_multiplier is not None:
        out["epsilon_sample_max"] = ledger.epsilon_sample_max()
    if client_epsilon is not None:
        out["client_record_epsilon_max"] = client_epsilon
    if result.declines:
        out["declines"] = dict(sorted(result.declines.items()))
    return out


def _honest_node_policy(dp: _Privacy, config: ExperimentConfig) -> NodePolicy:
    """What the config says, as each in-process node's own policy: an honest server never meets a refusal."""
    p = config.privacy
    return NodePolicy.honest(
        pipeline=dp.server.upload_pipeline() if dp.server.distributed is not None else None,
        sample_dp=dp.trainer.dp,
        max_record_epsilon=(p.sample.target_epsilon or None) if p.sample_level else None,
        record_delta=p.delta,
        accountant=p.accountant,
    )


def _update_applied(result: RoundResult) -> bool:
    """Whether any client's update reached the global adapter this round.

    Not when every reply was rejected or dropped, secure aggregation aborted, or
    the server refused a non-finite aggregate (under user-level DP the round's
    noise may still have been applied: that is no client update).
    """
    rejected = getattr(result, "aggregate_rejected", None)  # added to RoundResult by the same issue
    return result.num_clients > 0 and result.aborted is None and rejected is None


def _no_update_warnings(records: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """Rounds in which no client update was applied, and the summary's warnings about them."""
    rounds = [int(r["round"]) for r in records if not r.get("update_applied", True)]
    if not rounds:
        return rounds, []
    if len(rounds) == len(records):
        return rounds, [
            f"NO round applied a client update (all {len(records)} rounds: every update rejected, "
            "secure aggregation aborted or the aggregate refused): the adapter is not trained; "
            "see rejected_updates / secagg_aborted / aggregate_rejected in metrics.jsonl"
        ]
    shown = ", ".join(str(r) for r in rounds[:10]) + (", ..." if len(rounds) > 10 else "")
    return rounds, [f"{len(rounds)} of {len(records)} rounds applied no client update (rounds {shown})"]


def _round_record(
    result: RoundResult,
    evaluation: EvalMetrics | None,
    extras: _RoundExtras,
    *,
    seconds: float,
    seconds_train: float,
    seconds_eval: float,
) -> RoundMetrics:
    return {
        "round": result.round,
        "train_loss": result.train_loss,
        "eval_loss": None if evaluation is None else evaluation["eval_loss"],
        "eval_accuracy": None if evaluation is None else evaluation["eval_accuracy"],
        "num_clients": result.num_clients,
        "rejected_updates": result.rejected_updates,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "update_norm": result.update_norm,
        "dropped_clients": result.dropped_clients,
        "secagg_aborted": result.aborted,
        "aggregate_rejected": getattr(result, "aggregate_rejected", None),
        "update_applied": _update_applied(result),
        # Who took part: sampled = answered + dropped; rejected are answering clients none of
        # whose replies was accepted; the wait for the slowest node, summed over the exchanges.
        "clients_sampled": len(result.cohort),
        "clients_answered": result.answered,
        "clients_dropped": result.unanswered,
        "clients_rejected": result.rejected_clients,
        "seconds_waiting_slowest": result.seconds_waiting,
        **extras,
        "seconds": seconds,
        "seconds_train": seconds_train,
        "seconds_eval": seconds_eval,
    }


class _SummaryExtras(TypedDict, total=False):
    """The keys of a :class:`RunSummary` that only some runs have, in the order they are written."""

    initial_eval_perplexity: float | None
    majority_class_rate: float
    final_eval_perplexity: float | None


class _Stopped(TypedDict, total=False):
    stopped: str


def _summary(
    exp: Experiment,
    records: list[dict[str, Any]],
    state: dict[str, Any],
    ledger: PrivacyLedger,
    plan: PrivacyPlan,
    *,
    completed: bool,
    stopped: str | None = None,
) -> RunSummary:
    config = exp.config
    evaluated = [r for r in records if r.get("eval_loss") is not None]
    final = evaluated[-1] if evaluated else {}
    initial = state.get("initial_eval", {})  # a checkpoint's may hold null for a non-finite number
    extras: _SummaryExtras = {}
    if "eval_perplexity" in initial:
        extras["initial_eval_perplexity"] = initial["eval_perplexity"]
    if exp.task.name == "classification":
        extras["majority_class_rate"] = exp.dataset.majority_class_rate(exp.eval_indices)
    if "eval_perplexity" in final:
        extras["final_eval_perplexity"] = final["eval_perplexity"]
    bytes_up_total = sum(int(r["bytes_up"]) for r in records)
    no_update, warnings = _no_update_warnings(records)
    # Uplink per client that took part in a round (accepted, rejected/declined or dropped mid-SecAgg),
    # against the whole base model in float32 (issue 16).
    client_rounds = sum(
        int(r["num_clients"]) + int(r.get("rejected_updates", 0)) + int(r.get("dropped_clients", 0)) for r in records
    )
    per_client = bytes_up_total / client_rounds if client_rounds else None
    tail: _Stopped = {} if stopped is None else {"stopped": stopped}
    summary: RunSummary = {
        "name": config.name,
        "seed": config.seed,
        "model": config.model.name,
        "dataset": config.data.name,
        "adapter_method": config.adapter.method,
        "strategy": config.server.strategy,
        "rounds": len(records),
        "num_clients_total": config.partition.num_clients,
        "clients_per_round": config.server.clients_per_round,
        "train_examples": len(exp.train_indices),
        "eval_examples": len(exp.eval_indices),
        "trainable_params": exp.layout.dim,
        "base_params": exp.base_params,
        "bytes_up_total": bytes_up_total,
        "bytes_down_total": sum(int(r["bytes_down"]) for r in records),
        "rejected_updates_total": sum(int(r.get("rejected_updates", 0)) for r in records),
        "secagg": config.secagg.enabled,
        "dropped_clients_total": sum(int(r.get("dropped_clients", 0)) for r in records),
        "secagg_aborted_rounds": sum(1 for r in records if r.get("secagg_aborted")),
        "final_eval_loss": final.get("eval_loss"),
        "final_eval_accuracy": final.get("eval_accuracy"),
        "seconds_total": sum(float(r.get("seconds", 0.0)) for r in records),
        "initial_eval_loss": initial.get("eval_loss"),
        "initial_eval_accuracy": initial.get("eval_accuracy"),
        **extras,
        "privacy_mode": config.privacy.mode,
        "delta": config.privacy.delta,
        "sample_noise_multiplier": plan.sample_noise_multiplier,
        "user_noise_multiplier": plan.user_noise_multiplier,
        "epsilon_user": ledger.epsilon_user() if plan.user_noise_multiplier is not None else None,
        "epsilon_sample_max": ledger.epsilon_sample_max() if plan.sample_noise_multiplier is not None else None,
        "rounds_without_update": len(no_update),
        "aggregate_rejected_rounds": sum(1 for r in records if r.get("aggregate_rejected")),
        "trained": bool(records) and len(no_update) < len(records),
        "warnings": warnings,
        "uplink_bytes_per_client_round": per_client,
        "uplink_ratio_vs_fp32_model": (
            per_client / (4 * exp.base_params) if per_client is not None and exp.base_params else None
        ),
        "provenance": collect_provenance(device=config.model.device, fingerprints=exp.fingerprints),
        "completed": completed,
        **tail,
    }
    return summary


def resolve_privacy(exp: Experiment) -> PrivacyPlan:
    """Check the privacy config against the data and calibrate noise multipliers
    (:func:`privfed.experiments.privacy.resolve_noise` on ``exp``'s client sizes and adapter size)."""
    return resolve_noise(exp.config, client_sizes=[len(d) for d in exp.client_data], adapter_dim=exp.layout.dim)


def _planned_events(
    exp: Experiment, plan: PrivacyPlan, cohort: npt.NDArray[np.int64], round: int, trainer: ClientTrainer
) -> list[PrivacyEvent]:
    events: list[PrivacyEvent] = []
    if plan.user_noise_multiplier is not None:
        events.append(plan.user_event(steps=1, round=round))
    if plan.sample_noise_multiplier is not None:
        for client in cohort:
            n = len(exp.client_data[int(client)])
            events.append(
                SampledGaussianEvent(
                    noise_multiplier=plan.sample_noise_multiplier,
                    sample_rate=sampling_rate_for(exp.config.client, n),
                    steps=trainer.steps_for(n),
                    scope="sample",
                    subject=int(client),
                    round=round,
                )
            )
    return events


@dataclasses.dataclass(eq=False)
class _Privacy:
    """What a run needs for DP, resolved and checked before its run directory is created."""

    plan: PrivacyPlan
    ledger: PrivacyLedger
    user_dp: DPFedAvgServer | None
    trainer: ClientTrainer
    server: FederatedServer


def _sample_dp(config: ExperimentConfig, *, noise_multiplier: float) -> SampleDP:
    """The DP-SGD settings of ``config`` with the run's record-level noise multiplier (as resolved)."""
    p = config.privacy
    return SampleDP(
        noise_multiplier=noise_multiplier,
        max_grad_norm=p.sample.max_grad_norm,
        secure_noise=p.secure_noise,
        seed=config.seed,
        grad_sample_mode=p.sample.grad_sample_mode,
    )


def _prepare_privacy(exp: Experiment) -> _Privacy:
    """Resolve noise multipliers, build the ledger, DP-FedAvg, the (DP-)trainer and the server.

    Everything here that can fail does so before a run directory is written
    (``ConfigError``), so a failed start leaves nothing that blocks a rerun.
    """
    config = exp.config
    privacy = config.privacy
    try:
        plan = resolve_privacy(exp)
        _preflight_accounting(exp, plan)
    except (OverflowError, ValueError, ZeroDivisionError, FloatingPointError) as exc:
        if isinstance(exc, ConfigError):
            raise
        p = privacy
        levels = [("sample", p.sample_level, p.sample.noise_multiplier, p.sample.target_epsilon)]
        levels.append(("user", p.user_level, p.user.noise_multiplier, p.user.target_epsilon))
        given = ", ".join(
            f"privacy.{name}.noise_multiplier = {sigma:g}, privacy.{name}.target_epsilon = {target:g}"
            for name, on, sigma, target in levels
            if on
        )
        raise ConfigError(
            f"privacy: the accountant cannot compute epsilon for this config ({given}): "
            f"{type(exc).__name__}: {exc}; use a noise multiplier and target of sensible size"
        ) from None
    ledger = PrivacyLedger(
        delta=privacy.delta,
        accountant=privacy.accountant,
        user_budget=(privacy.user.target_epsilon or None) if privacy.user_level else None,
        sample_budget=(privacy.sample.target_epsilon or None) if privacy.sample_level else None,
    )
    user_dp = None
    if plan.user_noise_multiplier is not None:
        u = privacy.user
        expected = config.server.clients_per_round
        adaptive = (
            AdaptiveClipping(
                target_quantile=u.target_quantile,
                learning_rate=u.clip_learning_rate,
                count_stddev=u.count_stddev or expected / 20,
            )
            if u.adaptive_clipping
            else None
        )
        try:
            user_dp = DPFedAvgServer(
                noise_multiplier=plan.user_noise_multiplier,
                clip_norm=u.clip_norm,
                expected_clients=expected,
                adaptive=adaptive,
            )
        except ValueError as exc:
            raise ConfigError(
                f"privacy.user.count_stddev: {exc}; raise it above noise_multiplier / 2 "
                f"({plan.user_noise_multiplier / 2:.3g}) or use larger cohorts"
            ) from None
    sample_dp = (
        _sample_dp(config, noise_multiplier=plan.sample_noise_multiplier)
        if plan.sample_noise_multiplier is not None
        else None
    )
    trainer = ClientTrainer(model=exp.model, layout=exp.layout, task=exp.task, config=config.client, dp=sample_dp)
    trainer.check_private_training(exp.client_data[0])
    server = FederatedServer(
        layout=exp.layout,
        global_vector=exp.initial_vector,
        strategy=make_strategy(config.server),
        num_clients=config.partition.num_clients,
        clients_per_round=config.server.clients_per_round,
        seed=config.seed,
        weighting=config.server.weighting,
        secagg=config.secagg,
        user_dp=user_dp,
        secure_noise=privacy.secure_noise,
        compression=config.compression,
        user_mechanism=privacy.user.mechanism if plan.user_noise_multiplier is not None else "central",
    )
    return _Privacy(plan=plan, ledger=ledger, user_dp=user_dp, trainer=trainer, server=server)


def _preflight_accounting(exp: Experiment, plan: PrivacyPlan) -> None:
    """Compute the epsilon a full run would spend, so that an accountant failure (e.g. an
    overflow at ``noise_multiplier = 1e308``) happens before anything is written, not in round 1."""
    config = exp.config
    p = config.privacy
    rounds = config.server.rounds
    events: list[PrivacyEvent] = []
    if plan.user_noise_multiplier is not None:
        events.append(plan.user_event(steps=rounds))
    if plan.sample_noise_multiplier is not None:
        sizes = {len(d) for d in exp.client_data}
        shapes = {(sampling_rate_for(config.client, n), local_steps(config.client, n)) for n in sizes}
        events += [
            SampledGaussianEvent(
                noise_multiplier=plan.sample_noise_multiplier, sample_rate=q, steps=rounds * s, scope="sample"
            )
            for q, s in sorted(shapes)
        ]
    for event in events:
        compute_epsilon([event], delta=p.delta, accountant=p.accountant)


def _restore(
    exp: Experiment, dp: _Privacy, run_dir: RunDirectory, checkpoint: Checkpoint, server: FederatedServer
) -> None:
    """Load ``checkpoint`` into ``server``, ``dp.ledger`` and ``dp.user_dp`` after checking it fits this run.

    :meth:`RunDirectory.load_checkpoint` has verified the digest, the schema and
    ``metrics.jsonl``; here the checkpoint must also match the built experiment:
    the adapter layout, the privacy ledger (exactly the events of rounds
    ``1..round``, recomputed from the config; never defaulted), the clip norm and
    the server optimizer's state (float32[d] arrays, the keys the strategy keeps).

    Raises:
        CheckpointError: one line naming the first mismatch.
    """
    state, arrays, last = checkpoint.state, checkpoint.arrays, checkpoint.round
    if state["layout_fingerprint"] != exp.layout.fingerprint():
        raise CheckpointError("checkpoint was written for a different adapter layout")
    try:
        vector = exp.layout.check_vector(arrays["global"])
    except ModelError as exc:
        raise CheckpointError(f"checkpoint 'global' array: {exc}") from None

    expected = [e for r in range(1, last + 1) for e in _planned_events(exp, dp.plan, server.cohort(r), r, dp.trainer)]
    try:
        found = [event_from_json(raw) for raw in state["ledger"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint ledger holds an invalid event: {exc}") from None
    if found != expected:
        index = next((i for i, (a, b) in enumerate(zip(found, expected, strict=False)) if a != b), None)
        where = f"first difference at event {index}" if index is not None else "one is a prefix of the other"
        raise CheckpointError(
            f"checkpoint ledger does not match the privacy events of rounds 1..{last}: {len(found)} events found, "
            f"{len(expected)} expected ({where}); privacy accounting cannot be resumed from it"
        )
    dp.ledger.load_json(state["ledger"])

    clip = state["user_clip_norm"]
    if (dp.user_dp is None) != (clip is None):
        want = "null (no user-level DP)" if dp.user_dp is None else "a number (user-level DP is on)"
        raise CheckpointError(f"checkpoint user_clip_norm must be {want}; got {clip!r}")
    if dp.user_dp is not None:
        user = exp.config.privacy.user
        if not user.adaptive_clipping and float(clip) != float(user.clip_norm):
            raise CheckpointError(
                f"checkpoint user_clip_norm {clip!r} differs from privacy.user.clip_norm = {user.clip_norm!r} "
                "(clipping is not adaptive)"
            )
        dp.user_dp.clip_norm = float(clip)

    saved = {k[len("strategy.") :]: v for k, v in arrays.items() if k.startswith("strategy.")}
    dim = exp.layout.dim
    for name, value in saved.items():
        if value.shape != (dim,):
            raise CheckpointError(
                f"checkpoint array 'strategy.{name}' has shape {value.shape}; the server optimizer's state "
                f"is per coordinate, ({dim},)"
            )
    try:
        server.strategy.load_state_arrays(saved)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint server optimizer state is incomplete or invalid: {exc!r}") from None
    kept = server.strategy.state_arrays()
    if set(kept) != set(saved):
        raise CheckpointError(
            f"checkpoint server optimizer state holds {sorted(saved)}; "
            f"{exp.config.server.strategy} keeps {sorted(kept)}"
        )
    if isinstance(server.strategy, FedAdam) and server.strategy.v is not None and (server.strategy.v < 0).any():
        raise CheckpointError("checkpoint FedAdam second moment 'strategy.v' has negative values")
    server.global_vector = vector.copy()


def _execute(
    exp: Experiment,
    dp: _Privacy,
    run_dir: RunDirectory,
    *,
    checkpoint: Checkpoint | None,
    quiet: bool,
    stop_after_round: int | None,
    transport_hook: Callable[[Transport], Transport] | None = None,
    initial_eval: EvalMetrics | None = None,
) -> RunSummary:
    config = exp.config
    plan, ledger, user_dp, trainer = dp.plan, dp.ledger, dp.user_dp, dp.trainer
    server = dp.server
    strategy = server.strategy
    if checkpoint is None:
        start_round = 0
        state: dict[str, Any] = {
            "layout_fingerprint": exp.layout.fingerprint(),
            "config_sha256": run_dir.config_digest(),
            "initial_eval": _evaluate(exp, exp.initial_vector) if initial_eval is None else initial_eval,
        }
        run_dir.truncate_metrics(0)
    else:
        _restore(exp, dp, run_dir, checkpoint, server)
        state = checkpoint.state
        start_round = checkpoint.round
        run_dir.truncate_metrics(start_round)
    tracker = open_tracker(config, run_dir.path, start_round=start_round)  # a copy of metrics; the run dir rules

    policy = _honest_node_policy(dp, config)
    nodes = [
        ClientNode(client_id=i, trainer=trainer, data=data, seed=config.seed, policy=policy)
        for i, data in enumerate(exp.client_data)
    ]
    if checkpoint is not None:  # each node's ledger resumes from the server's record of its client
        for node in nodes:
            if node.record_ledger is not None:
                mine = [e for e in ledger.events if e.scope == "sample" and e.subject == node.client_id]
                node.record_ledger.load_json(json.dumps([e.to_json() for e in mine]))
    transport = make_transport(config.transport.kind, nodes=nodes, config=config)
    close = getattr(transport, "close", None)  # a distributed engine holds processes (and a hook may wrap it)
    client_epsilon = getattr(transport, "client_record_epsilon_max", None)  # what Flower nodes report
    if transport_hook is not None:
        transport = transport_hook(transport)
    total = config.server.rounds
    last = total if stop_after_round is None else min(total, stop_after_round)
    progress = _Progress(
        total_rounds=total, start_round=start_round, clients_per_round=config.server.clients_per_round, quiet=quiet
    )
    try:
        for round in range(start_round + 1, last + 1):
            planned = _planned_events(exp, plan, server.cohort(round), round, trainer)
            try:
                ledger.check(planned)
            except PrivacyBudgetExceeded as exc:
                _save(run_dir, round - 1, server, strategy, state, ledger, user_dp)
                summary = _summary(
                    exp, run_dir.read_metrics(), state, ledger, plan, completed=False, stopped=f"privacy budget: {exc}"
                )
                run_dir.write_summary(summary)
                tracker.log_run(summary, config)
                raise
            progress.start_round(round)
            started = time.perf_counter()
            result = server.run_round(round, transport, on_client_done=progress.client_done)
            ledger.record(planned)
            trained = time.perf_counter()
            evaluation = None
            if round % config.eval.every == 0 or round == total:
                evaluation = _evaluate(exp, server.global_vector)
            finished = time.perf_counter()
            record = _round_record(
                result,
                evaluation,
                _round_extras(ledger, plan, result, evaluation, client_epsilon() if callable(client_epsilon) else None),
                seconds=finished - started,
                seconds_train=trained - started,
                seconds_eval=finished - trained,
            )
            run_dir.append_metrics(record)
            tracker.log_round(round, round_scalars(record))
            # With noise from the OS CSPRNG a round cannot be re-run after a crash (its release
            # could not be reproduced), so such runs checkpoint every round.
            every = 1 if _private(config) and config.privacy.secure_noise else config.run.checkpoint_every
            if round % every == 0 or round == last:
                _save(run_dir, round, server, strategy, state, ledger, user_dp)
            progress.end_round(record)
    except BaseException:
        tracker.close()
        raise
    finally:
        progress.close()
        if callable(close):
            close()

    records = run_dir.read_metrics()
    summary = _summary(exp, records, state, ledger, plan, completed=len(records) >= total)
    if summary["completed"]:
        exp.layout.load_into(exp.model, server.global_vector)
        exp.model.save_pretrained(str(run_dir.adapter_dir))
    run_dir.write_summary(summary)
    if summary["completed"]:
        tracker.log_run(summary, config)
    tracker.close()
    return summary


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    quiet: bool = False,
    stop_after_round: int | None = None,
    transport_hook: Callable[[Transport], Transport] | None = None,
    experiment_hook: Callable[[Experiment], Experiment] | None = None,
) -> RunSummary:
    """Run ``config`` into a new run directory ``out_dir``; returns the summary (``summary.json``).

    Args:
        stop_after_round: stop (with a checkpoint) after this round, as if
            interrupted; ``privfed run --resume`` continues from there.
        transport_hook: wraps the simulation transport, e.g. to add the canary
            clients of a privacy audit (``attacks.audit``); secure aggregation
            rounds bypass it.
        experiment_hook: edits the built experiment before any round, e.g. to
            keep a random half of every client's examples (shadow federations
            of a membership attack, ``attacks.membership.shadow``). The run
            directory does not record it, so ``--resume`` of such a run is the
            caller's job (the shadow driver reruns unfinished runs instead).
    """
    run_dir = RunDirectory(out_dir)
    run_dir.check_new()  # before the expensive build
    require_tracker(config)  # a missing optional package fails here, before anything is built or written
    exp = build_experiment(config)
    if experiment_hook is not None:
        exp = experiment_hook(exp)
    dp = _prepare_privacy(exp)
    initial_eval = _evaluate(exp, exp.initial_vector)  # can fail too: before anything is written
    run_dir.create(config)
    return _execute(
        exp,
        dp,
        run_dir,
        checkpoint=None,
        quiet=quiet,
        stop_after_round=stop_after_round,
        transport_hook=transport_hook,
        initial_eval=initial_eval,
    )


def _private(config: ExperimentConfig) -> bool:
    return config.privacy.mode != "none"


def _check_resumable(run_dir: RunDirectory, config: ExperimentConfig, checkpoint: Checkpoint | None) -> None:
    """``CheckpointError`` where resuming would release rounds the ledger does not charge.

    Metric lines without a checkpoint mean the ledger of rounds already released is gone
    (a deleted checkpoint used to restart the run from round 1 and report a smaller epsilon).
    Under ``secure_noise`` the noise of rounds after the last checkpoint cannot be drawn again,
    so re-running them would release them twice while charging them once.
    """
    records = run_dir.read_metrics()
    done = 0 if checkpoint is None else checkpoint.round
    if checkpoint is None and records:
        raise CheckpointError(
            f"{run_dir.path} holds {len(records)} round(s) of metrics but no checkpoint: the privacy ledger "
            "of rounds already released is gone, so resuming would under-report epsilon; start the run "
            "again in a new directory"
        )
    after = sorted({int(r["round"]) for r in records if isinstance(r.get("round"), int) and r["round"] > done})
    if after and _private(config) and config.privacy.secure_noise:
        raise CheckpointError(
            f"{run_dir.path}: round(s) {', '.join(map(str, after))} were released after the last checkpoint "
            f"(round {done}) with noise from the OS CSPRNG, which cannot be drawn again: resuming would release "
            "them twice and charge them once; start the run again in a new directory"
        )


def resume_experiment(out_dir: str | Path, *, quiet: bool = False, stop_after_round: int | None = None) -> RunSummary:
    """Continue the run in ``out_dir`` from its last checkpoint; returns the summary.

    A resumed run draws exactly the randomness an uninterrupted one would
    (every draw is keyed by seed, round and client), so it ends with the same metrics.
    """
    run_dir = RunDirectory(out_dir)
    config = run_dir.load_config()
    require_tracker(config)
    checkpoint = run_dir.load_checkpoint()
    _check_resumable(run_dir, config, checkpoint)
    exp = build_experiment(config)
    return _execute(
        exp, _prepare_privacy(exp), run_dir, checkpoint=checkpoint, quiet=quiet, stop_after_round=stop_after_round
    )
