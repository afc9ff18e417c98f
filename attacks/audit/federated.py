"""Auditing a federated run with canary clients (``privfed audit``).

One training run gives both empirical lower bounds of the issue:

- Canary clients (Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar,
  "One-shot Empirical Privacy Estimation for Federated Learning", ICLR 2024):
  a canary client ignores the broadcast and uploads a fixed random unit
  direction scaled to ``canary_norm`` (the clip norm C under user-level DP)
  in every round it is sampled. After training, the cosine between each
  canary direction and the final model delta is its score.
- Of ``num_canaries`` candidate directions, each is inserted (given a client
  slot) independently with probability 1/2, as in the one-run audit of
  Steinke, Nasr & Jagielski (NeurIPS 2023); guessing the top/bottom scored
  candidates gives a lower bound on ε at the run's δ
  (:func:`attacks.audit.best_one_run_bound`).
- The one-shot estimate compares the inserted canaries' cosines with those of
  ``num_unobserved`` never-inserted directions (free to draw), and the same
  scores give the membership metrics (AUC, TPR at 0.1%/1% FPR) of a
  white-box attacker who holds the final adapter.

Canaries take over the slots of real clients (ids ``0..k-1`` of the
population), so the population size, the sampling rate and hence the
accountant's ε are exactly those of the configured run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NotRequired, TypedDict, cast

import numpy as np
import numpy.typing as npt

from attacks.audit.bounds import best_one_run_bound, canary_cosines, canary_directions, one_shot_epsilon
from attacks.driver import ResultsFile, final_adapter, run_federation
from attacks.metrics import format_tpr, membership_metrics, plot_roc, save_scores
from attacks.provenance import attack_provenance, save_attack_config, settings_table, write_provenance
from privfed import (
    ClientUpdate,
    ConfigError,
    ExperimentConfig,
    GlobalModel,
    ProtocolError,
    RunDirectory,
)
from privfed.client import ExampleSet
from privfed.config import check_section, config_field, section_from_dict
from privfed.experiments import Experiment, sweep_config
from privfed.rng import generator
from privfed.transport import Exchange, Reply, Transport

__all__ = [
    "ONE_SHOT_KEY",
    "AuditRecord",
    "AuditSettings",
    "CanaryTransport",
    "audit_run",
    "audit_table",
    "audit_verdict",
    "canary_plan",
    "plot_audit",
    "read_audit_record",
    "run_audit",
    "score_canaries",
]

# The one-shot figure of Andrew et al. is an estimate (no confidence statement), not a bound. Result files
# written before it was renamed call it ``epsilon_lower_bound_one_shot``; ``read_audit_record`` maps it.
ONE_SHOT_KEY: Final = "epsilon_estimate_one_shot"
_OLD_ONE_SHOT_KEY = "epsilon_lower_bound_one_shot"
# Score files next to the results: ``<run dir>/audit_scores.npz`` per run, ``audit_scores.npz`` for all runs.
SCORES_FILE = "audit_scores.npz"

AuditRecord = TypedDict(
    "AuditRecord",
    {
        # Added by run_audit: the run's label ("inf" without privacy) and its accountant target.
        "run": NotRequired[str],
        "target_epsilon": NotRequired[float | None],
        "privacy_mode": NotRequired[str],
        "epsilon": float | None,
        "delta": NotRequired[float],
        "epsilon_lower_bound_one_run": float,
        "one_run_k": NotRequired[int],
        "epsilon_lower_bound_one_run_final_model": NotRequired[float],
        "epsilon_estimate_one_shot": float,
        "one_shot_mu": NotRequired[float],
        # The white-box canary test (every round's update), as in MembershipMetricsRecord.
        "auc": float,
        "tpr_at_0.1pct_fpr": float | None,
        "tpr_at_0.1pct_fpr_ci95": NotRequired[list[float] | None],
        "tpr_at_1pct_fpr": float | None,
        "tpr_at_1pct_fpr_ci95": NotRequired[list[float] | None],
        "min_resolvable_fpr": NotRequired[float],
        "balanced_accuracy": NotRequired[float],
        "num_members": NotRequired[int],
        "num_nonmembers": int,
        # The canary test against the final model alone.
        "final_model_auc": NotRequired[float],
        "final_model_tpr_at_0.1pct_fpr": NotRequired[float | None],
        "final_model_tpr_at_0.1pct_fpr_ci95": NotRequired[list[float] | None],
        "final_model_tpr_at_1pct_fpr": NotRequired[float | None],
        "final_model_tpr_at_1pct_fpr_ci95": NotRequired[list[float] | None],
        "final_model_min_resolvable_fpr": NotRequired[float],
        "num_canaries": NotRequired[int],
        "num_inserted": NotRequired[int],
        "mean_participations": NotRequired[float],
        "canary_norm": NotRequired[float],
        "final_eval_accuracy": float | None,
        "user_noise_multiplier": NotRequired[float | None],
        "rounds": NotRequired[int | None],
        "bound_violated": NotRequired[bool],
        "one_shot_above_accountant": NotRequired[bool],
        # Record-level black-box MIA (record_level_mia); absent when no real client took part.
        "record_loss_auc": NotRequired[float],
        "record_loss_tpr_at_0.1pct_fpr": NotRequired[float | None],
        "record_loss_tpr_at_0.1pct_fpr_ci95": NotRequired[list[float] | None],
        "record_loss_tpr_at_1pct_fpr": NotRequired[float | None],
        "record_loss_tpr_at_1pct_fpr_ci95": NotRequired[list[float] | None],
        "record_loss_min_resolvable_fpr": NotRequired[float],
        "record_reference_auc": NotRequired[float],
        "record_reference_tpr_at_0.1pct_fpr": NotRequired[float | None],
        "record_reference_tpr_at_0.1pct_fpr_ci95": NotRequired[list[float] | None],
        "record_reference_tpr_at_1pct_fpr": NotRequired[float | None],
        "record_reference_tpr_at_1pct_fpr_ci95": NotRequired[list[float] | None],
        "record_reference_min_resolvable_fpr": NotRequired[float],
        "record_num_members": NotRequired[int],
        "record_num_nonmembers": NotRequired[int],
    },
)
"""One audit: what :func:`audit_run` returns and, with ``run`` and ``target_epsilon`` in front, one record
of ``audit_results.json`` (in this key order). The required keys are those every result file holds; the
``NotRequired`` ones are missing from files written before they were added (:func:`read_audit_record` does
not invent them) and, for the ``record_*`` keys, when no real client took part. Functional syntax:
``tpr_at_0.1pct_fpr`` is not an identifier."""


@dataclasses.dataclass(frozen=True)
class AuditSettings:
    """``[audit]`` table.

    Attributes:
        epsilons: accountant targets to audit (``inf`` = privacy off), each a
            calibrated copy of the config (as ``privfed sweep`` makes them).
        num_canaries: candidate canary directions; each inserted with prob. 1/2.
        num_unobserved: extra never-inserted directions (one-shot null and MIA non-members).
        canary_norm: L2 norm of a canary upload; 0 = automatic: the clip norm C
            under user-level DP, otherwise the median norm of the real clients'
            updates in the first round (a canary as large as a typical client).
        confidence: of the one-run lower bound.
    """

    epsilons: tuple[float, ...] = config_field((math.inf, 8.0, 1.0))
    num_canaries: int = config_field(100, ge=2)
    num_unobserved: int = config_field(2000, ge=10)
    canary_norm: float = config_field(0.0, ge=0.0)
    confidence: float = config_field(0.95, gt=0.0, lt=1.0)
    max_record_examples: int = config_field(1500, ge=1)

    def __post_init__(self) -> None:
        check_section(self, prefix="audit")
        if not self.epsilons or any(not e > 0 for e in self.epsilons):
            raise ConfigError(
                f"audit.epsilons must be a non-empty list of values > 0 (inf = privacy off); got {list(self.epsilons)}"
            )

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AuditSettings:
        """Validate a TOML table (``"inf"`` allowed in ``epsilons``) with the config's field rules."""
        values = dict(raw)
        if isinstance(values.get("epsilons"), list):
            values["epsilons"] = [_inf(e) for e in values["epsilons"]]
        return section_from_dict(cls, values, prefix="audit")


def _inf(value: Any) -> Any:
    """``"inf"`` (TOML has no other spelling in a list of numbers older configs used) as ``math.inf``."""
    return math.inf if isinstance(value, str) and value.strip().lower() in ("inf", "+inf", "infinity") else value


class CanaryTransport:
    """Wraps a transport: canary client ids answer with their fixed direction.

    Also remembers the first broadcast, i.e. the initial global adapter.
    """

    def __init__(
        self,
        inner: Transport,
        canaries: Mapping[int, npt.NDArray[np.float32]],
        *,
        norm: float | None,
        num_examples: int = 1,
    ) -> None:
        self.inner = inner
        self.num_examples = num_examples
        self.norm = norm  # None: the median real update norm of the first round with real clients
        self.directions = {int(k): np.asarray(v, dtype=np.float32) for k, v in canaries.items()}
        self.canaries = self.directions
        self.initial: npt.NDArray[np.float32] | None = None
        self.participations = dict.fromkeys(self.canaries, 0)
        self.real_participants: set[int] = set()
        self.broadcasts: list[npt.NDArray[np.float32]] = []

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        if stage != "train":
            raise ProtocolError("canary clients answer plain rounds only (the audit does not run under SecAgg)")
        if not messages:
            return self.inner.exchange(messages, round=round, stage=stage, on_reply=on_reply)
        message = GlobalModel.from_bytes(next(iter(messages.values())))
        if self.initial is None:
            self.initial = message.vector.copy()
        self.broadcasts.append(message.vector.copy())
        real = {c: m for c, m in messages.items() if c not in self.canaries}
        self.real_participants.update(int(c) for c in real)
        fake = [c for c in messages if c in self.canaries]
        inner = self.inner.exchange(real, round=round, stage=stage, on_reply=on_reply)
        replies = list(inner.replies)
        if self.norm is None and replies:
            norms = [float(np.linalg.norm(ClientUpdate.from_bytes(r.data).delta)) for r in replies]
            self.norm = float(np.median(norms))
        for c in fake:
            self.participations[c] += 1
            replies.append(
                Reply(
                    sender=c,
                    data=ClientUpdate(
                        round=message.round,
                        client_id=c,
                        num_examples=self.num_examples,
                        train_loss=float("nan"),
                        delta=self.directions[c] * np.float32(self.norm or 0.0),
                    ).to_bytes(),
                )
            )
            if on_reply is not None:
                on_reply(c)
        return Exchange(
            replies=tuple(replies),
            bytes_down=inner.bytes_down + sum(len(messages[c]) for c in fake),
            bytes_up=inner.bytes_up + sum(len(r.data) for r in replies[len(inner.replies) :]),
        )


def audit_run(
    config: ExperimentConfig,
    settings: AuditSettings,
    out: Path,
    *,
    quiet: bool = True,
    audit_delta: float | None = None,
) -> AuditRecord:
    """Run ``config`` once with canaries into ``out`` and score them; returns the record.

    ``audit_delta``: the delta of the lower bounds (default ``config.privacy.delta``;
    a sweep bounds its non-private run at the DP runs' delta).
    """
    if config.secagg.enabled:
        raise ConfigError("privfed audit runs without secure aggregation (the final model is what it audits)")
    included, _ = canary_plan(
        config.seed, num_canaries=settings.num_canaries, num_unobserved=settings.num_unobserved, dim=None
    )
    if included.sum() > config.partition.num_clients // 2:
        raise ConfigError(
            f"{int(included.sum())} inserted canaries need at least twice as many clients; "
            f"partition.num_clients is {config.partition.num_clients}"
        )
    holder: dict[str, CanaryTransport] = {}
    privacy_on = config.privacy.mode in ("user", "both")
    norm: float | None = settings.canary_norm or (config.privacy.user.clip_norm if privacy_on else None)

    def hook(inner: Transport) -> Transport:
        canaries = dict(zip(slots, inserted, strict=True))
        return holder.setdefault("t", CanaryTransport(inner, canaries, norm=norm, num_examples=typical))

    # Directions need the adapter dimension: one dry build tells it.
    from privfed import build_experiment

    probe = build_experiment(config)
    dim = probe.layout.dim
    # FedAvg weights by examples: a canary weighs as much as a typical client.
    typical = max(1, round(float(np.mean([len(d) for d in probe.client_data]))))
    _, directions = canary_plan(
        config.seed, num_canaries=settings.num_canaries, num_unobserved=settings.num_unobserved, dim=dim
    )
    inserted = directions[: settings.num_canaries][included]
    slots = list(range(int(included.sum())))
    # The canary transport's state (initial adapter, broadcasts) is not in the run directory:
    # whatever is in ``out`` is replaced and the run starts afresh.
    summary = run_federation(config, out, quiet=quiet, reuse=False, resume=False, transport_hook=hook)
    transport = holder["t"]
    assert transport.initial is not None
    final = final_adapter(out, summary, what=f"the audited run in {out}")
    return score_canaries(
        config,
        settings,
        out=out,
        probe=probe,
        included=included,
        directions=directions,
        initial=transport.initial,
        broadcasts=transport.broadcasts,
        final=final,
        participations=transport.participations,
        real_participants=transport.real_participants,
        canary_norm=transport.norm or 0.0,
        summary=summary,
        metrics=RunDirectory(out).read_metrics(),
        audit_delta=audit_delta,
    )


def canary_plan(
    seed: int, *, num_canaries: int, num_unobserved: int, dim: int | None
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float32]]:
    """The audit's secret draw from ``seed``: which candidates are inserted, and every direction.

    Returns ``included: bool[num_canaries]`` (each with probability 1/2) and ``directions:
    float32[num_canaries + num_unobserved, dim]`` (candidates first, then the never-inserted ones;
    empty ``[0, 0]`` when ``dim`` is ``None``). Both come from ``generator(seed, "audit", "canaries")``
    in this order, so candidate ``i`` is the same direction whatever ``num_unobserved`` is
    (:func:`attacks.audit.deployment.canary_direction` draws it alone on a canary node).
    """
    rng = generator(seed, "audit", "canaries")
    included = rng.random(num_canaries) < 0.5
    if dim is None:
        return included, np.zeros((0, 0), dtype=np.float32)
    return included, canary_directions(dim, num_canaries + num_unobserved, rng)


def score_canaries(
    config: ExperimentConfig,
    settings: AuditSettings,
    *,
    out: Path,
    probe: Experiment,
    included: npt.NDArray[np.bool_],
    directions: npt.NDArray[np.float32],
    initial: npt.NDArray[np.float32],
    broadcasts: Sequence[npt.NDArray[np.float32]],
    final: npt.NDArray[np.float32],
    participations: Mapping[int, int],
    real_participants: Collection[int],
    canary_norm: float,
    summary: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    audit_delta: float | None = None,
) -> AuditRecord:
    """The audit record of one run from what its canaries' auditor holds; writes the score files into ``out``.

    Args:
        included: bool[num_canaries], the inserted candidates; ``directions``: float32[num_canaries +
            num_unobserved, dim] (:func:`canary_plan`).
        initial: float32[dim], the global adapter before round 1; ``broadcasts``: the global adapter
            sent in each round, in order (round 1 first); ``final``: the adapter after the last round.
        participations: per canary client id, the rounds it was sampled in.
        real_participants: the real clients sampled in at least one round (record-level members).
        canary_norm: the L2 norm of a canary upload.
        summary, metrics: the run's ``summary.json`` and ``metrics.jsonl`` records.
        audit_delta: the delta of the lower bounds (default ``config.privacy.delta``).
    """
    privacy_on = config.privacy.mode in ("user", "both")
    final = np.asarray(final, dtype=np.float32)
    candidates, extra = directions[: settings.num_canaries], directions[settings.num_canaries :]
    delta = final.astype(np.float64) - np.asarray(initial, dtype=np.float64)
    scores = canary_cosines(candidates, delta)
    null_scores = canary_cosines(extra, delta)
    rounds = np.diff(np.stack([*broadcasts, final]).astype(np.float64), axis=0)
    norm = canary_norm
    white = whitebox_scores(directions, rounds, config, summary, metrics, norm)
    white_in, white_null = white[: settings.num_canaries], white[settings.num_canaries :]
    delta_run = config.privacy.delta if audit_delta is None else audit_delta
    conf = settings.confidence
    one_run, k = best_one_run_bound(white_in, included, delta=delta_run, confidence=conf, positive_only=True)
    one_run_final, _ = best_one_run_bound(scores, included, delta=delta_run, confidence=conf, positive_only=True)
    one_shot = one_shot_epsilon(
        observed_cosines=scores[included],
        unobserved_cosines=np.concatenate([scores[~included], null_scores]),
        delta=delta_run,
    )
    members = np.concatenate([np.ones(int(included.sum()), bool), np.zeros(int((~included).sum()) + len(extra), bool)])
    all_scores = np.concatenate([white_in[included], white_in[~included], white_null])
    final_scores = np.concatenate([scores[included], scores[~included], null_scores])
    mia = membership_metrics(all_scores, members).to_dict()
    final_mia = membership_metrics(final_scores, members).to_dict()
    views: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]] = {
        "whitebox": (all_scores, members),
        "final_model": (final_scores, members),
    }
    epsilon = summary.get("epsilon_user") if privacy_on else None
    # The one-run bound holds with 95% confidence for any correct DP implementation, so
    # exceeding the accountant is reported as a bug; the one-shot figure is an estimate
    # (Andrew et al.), which may exceed it by sampling error and is only flagged.
    violated = epsilon is not None and one_run > float(epsilon) + 1e-9
    record: AuditRecord = {
        "privacy_mode": config.privacy.mode,
        "epsilon": epsilon,
        "delta": delta_run,
        "epsilon_lower_bound_one_run": one_run,
        "one_run_k": k,
        "epsilon_lower_bound_one_run_final_model": one_run_final,
        ONE_SHOT_KEY: one_shot.epsilon,
        "one_shot_mu": one_shot.mu,
        "auc": mia["auc"],
        "tpr_at_0.1pct_fpr": mia["tpr_at_0.1pct_fpr"],
        "tpr_at_0.1pct_fpr_ci95": mia["tpr_at_0.1pct_fpr_ci95"],
        "tpr_at_1pct_fpr": mia["tpr_at_1pct_fpr"],
        "tpr_at_1pct_fpr_ci95": mia["tpr_at_1pct_fpr_ci95"],
        "min_resolvable_fpr": mia["min_resolvable_fpr"],
        "balanced_accuracy": mia["balanced_accuracy"],
        "num_members": mia["num_members"],
        "num_nonmembers": mia["num_nonmembers"],
        "final_model_auc": final_mia["auc"],
        "final_model_tpr_at_0.1pct_fpr": final_mia["tpr_at_0.1pct_fpr"],
        "final_model_tpr_at_0.1pct_fpr_ci95": final_mia["tpr_at_0.1pct_fpr_ci95"],
        "final_model_tpr_at_1pct_fpr": final_mia["tpr_at_1pct_fpr"],
        "final_model_tpr_at_1pct_fpr_ci95": final_mia["tpr_at_1pct_fpr_ci95"],
        "final_model_min_resolvable_fpr": final_mia["min_resolvable_fpr"],
        "num_canaries": settings.num_canaries,
        "num_inserted": int(included.sum()),
        "mean_participations": float(np.mean(list(participations.values()) or [0])),
        "canary_norm": norm,
        "final_eval_accuracy": summary.get("final_eval_accuracy"),
        "user_noise_multiplier": summary.get("user_noise_multiplier"),
        "rounds": summary.get("rounds"),
        "bound_violated": bool(violated),
        "one_shot_above_accountant": bool(epsilon is not None and one_shot.epsilon > float(epsilon)),
    }
    if violated:
        print(
            f"privfed audit: BUG: empirical lower bound {one_run:.3f} exceeds the accountant's epsilon {epsilon:.3f} "
            f"in {out}; the accounting or the implementation is wrong",
            file=sys.stderr,
        )
    record_mia, record_views = record_level_mia(
        probe, final, real_participants, max_examples=settings.max_record_examples, seed=config.seed
    )
    record.update(cast(AuditRecord, record_mia))  # the record_* keys
    views.update(record_views)
    np.savez(out / "canary_scores.npz", scores=scores, included=included, null_scores=null_scores)
    save_scores(out / SCORES_FILE, views)  # every AUC/TPR of the record recomputes from these
    curves = {"white-box (per round)": (all_scores, members), "final model cosine": (final_scores, members)}
    plot_roc(curves, out / "canary_roc.png", title=f"canaries, accountant eps={epsilon}")
    return record


def whitebox_scores(
    directions: npt.NDArray[np.float32],
    round_deltas: npt.NDArray[np.float64],
    config: ExperimentConfig,
    summary: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    canary_norm: float,
) -> npt.NDArray[np.float64]:
    """The server's view: every round's global update, not just the final model.

    Under user-level DP-FedAvg with FedAvg on the server, round t's update is
    ``eta/E * (sum of clipped deltas + N(0, (sigma C_t)^2 I))``; a canary
    client adds ``eta/E * min(norm, C_t) * u`` when Poisson-sampled (rate
    ``q = E/N``). Projected on ``u`` and scaled to noise units, each round is
    a mixture ``(1-q) N(0,1) + q N(mu_t, 1)`` against ``N(0,1)``, with
    ``mu_t = min(norm, C_t) / (sigma C_t)``; the score is the sum over rounds
    of the exact log-likelihood ratios (the Neyman-Pearson test for one
    canary, ignoring the other clients' tiny projections on a random
    direction). Without DP (or with a non-linear server optimizer or adaptive
    noise split) the score is the sum over rounds of the cosines.
    """
    deltas32 = np.ascontiguousarray(round_deltas.T, dtype=np.float32)
    proj = np.concatenate(  # [canaries, rounds], in chunks to bound memory
        [directions[i : i + 512] @ deltas32 for i in range(0, len(directions), 512)]
    ).astype(np.float64)
    sigma = summary.get("user_noise_multiplier")
    adaptive = config.privacy.user.adaptive_clipping
    if not sigma or adaptive or config.server.strategy != "fedavg" or config.privacy.mode not in ("user", "both"):
        # Per-round cosines: rounds with a large common update do not drown the others.
        norms = np.maximum(np.linalg.norm(round_deltas, axis=1), 1e-30)
        return np.asarray((proj / norms).sum(axis=1), dtype=np.float64)
    expected = float(config.server.clients_per_round)
    q = expected / config.partition.num_clients
    eta = config.server.learning_rate
    clips = [float(r.get("clip_norm") or config.privacy.user.clip_norm) for r in metrics]
    total = np.zeros(proj.shape[0])
    # log P(not sampled): -inf when every client takes part (q = 1), which logaddexp handles exactly
    log_absent = math.log1p(-q) if q < 1 else -math.inf
    for t in range(proj.shape[1]):
        c = clips[t] if t < len(clips) else config.privacy.user.clip_norm
        unit = eta * float(sigma) * c / expected
        mu = min(canary_norm, c) / (float(sigma) * c)
        s = proj[:, t] / unit
        total += np.logaddexp(log_absent, math.log(q) + mu * s - mu * mu / 2)
    return total


def record_level_mia(
    exp: Experiment,
    final: npt.NDArray[np.float32],
    real_participants: Collection[int],
    *,
    max_examples: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]]]:
    """Black-box record membership against the final adapter.

    Members: training examples of real clients that took part in at least one
    round; non-members: the held-out evaluation examples (same distribution).
    Scores: LOSS (Yeom et al. 2018) and the reference score against the
    initial adapter (for LoRA: the frozen base model plus the untrained head;
    Carlini et al. 2021 / Watson et al. 2022 difficulty calibration).
    Returns the metrics and the ``record_loss`` / ``record_reference`` scores with their labels.
    """
    from attacks.membership import loss_score, per_example_log_likelihoods, reference_score

    def losses(vector: npt.NDArray[np.float32], data: ExampleSet) -> npt.NDArray[np.float64]:
        return -per_example_log_likelihoods(exp, vector, data)

    rng = generator(seed, "audit", "record-level")
    participants = sorted(int(c) for c in real_participants)
    if not participants:
        return {}, {}
    pool = [(c, i) for c in participants for i in range(len(exp.client_data[c]))]
    take = rng.choice(len(pool), size=min(max_examples, len(pool)), replace=False)
    members_by_client: dict[int, list[int]] = {}
    for j in sorted(take):
        c, i = pool[j]
        members_by_client.setdefault(c, []).append(i)
    subsets = [exp.client_data[c].subset(np.asarray(idx, dtype=np.int64)) for c, idx in members_by_client.items()]
    held = exp.eval_data.subset(np.sort(rng.choice(len(exp.eval_data), min(max_examples, len(exp.eval_data)), False)))
    initial = exp.initial_vector
    member_final = np.concatenate([losses(final, s) for s in subsets])
    member_init = np.concatenate([losses(initial, s) for s in subsets])
    held_final = losses(final, held)
    held_init = losses(initial, held)
    labels = np.concatenate([np.ones(len(member_final), bool), np.zeros(len(held_final), bool)])
    losses_final = np.concatenate([member_final, held_final])
    losses_init = np.concatenate([member_init, held_init])
    loss_scores = loss_score(losses_final)
    ref_scores = reference_score(-losses_final, -losses_init)
    out: dict[str, Any] = {}
    for name, values in (("record_loss", loss_scores), ("record_reference", ref_scores)):
        metrics = membership_metrics(values, labels).to_dict()
        # Each view's own smallest resolvable FPR beside its TPRs, as attacks.results writes and checks.
        out |= {f"{name}_{k}": v for k, v in metrics.items() if k.startswith(("auc", "tpr_", "min_resolvable_fpr"))}
    out |= {"record_num_members": int(labels.sum()), "record_num_nonmembers": int((~labels).sum())}
    return out, {"record_loss": (loss_scores, labels), "record_reference": (ref_scores, labels)}


def _label(epsilon: float) -> str:
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def read_audit_record(record: Mapping[str, Any]) -> AuditRecord:
    """An audit record as this version writes it, from a result file of any version (a new dict).

    Files written before the rename hold the one-shot estimate as ``epsilon_lower_bound_one_shot``; it is
    moved to ``epsilon_estimate_one_shot`` (a file holding both keeps the new one). Keys the file lacks stay
    missing (the ``NotRequired`` keys of :data:`AuditRecord`).
    """
    has_new = ONE_SHOT_KEY in record
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key != _OLD_ONE_SHOT_KEY:
            out[key] = value
        elif not has_new:
            out[ONE_SHOT_KEY] = value  # where the old key stood
    return cast(AuditRecord, out)


def audit_verdict(record: Mapping[str, Any]) -> str:
    """One line: the one-run empirical lower bound against the accountant's epsilon, ``OK`` or ``VIOLATED``.

    ``OK`` when the bound is at most the accountant's epsilon (1e-9 slack for the bisection), ``VIOLATED``
    otherwise; without an accountant (privacy off) there is nothing to violate and the line says so.
    """
    r = read_audit_record(record)
    bound = float(r["epsilon_lower_bound_one_run"])
    run = r.get("run", "?")
    estimate = r.get(ONE_SHOT_KEY)
    tail = "" if estimate is None else f" (one-shot estimate {float(estimate):.3f}, not a bound)"
    accountant = r.get("epsilon")
    if accountant is None:
        return f"audit {run}: empirical lower bound {bound:.3f}, no accountant epsilon (privacy off): n/a{tail}"
    eps = float(accountant)
    verdict = "OK" if bound <= eps + 1e-9 else "VIOLATED"
    sign = "<=" if verdict == "OK" else ">"
    return f"audit {run}: empirical lower bound {bound:.3f} {sign} accountant epsilon {eps:.3f}: {verdict}{tail}"


def audit_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of audit records (old files too); the one-shot column is labelled an estimate.

    A TPR whose FPR is below ``1 / num_nonmembers`` shows as ``n/a``.
    """
    head = (
        "| run | accountant ε | one-run lower bound ε (95%) | one-shot ε estimate (not a bound) | canary AUC "
        "| TPR @ 0.1% FPR [95% CI] | TPR @ 1% FPR [95% CI] | accuracy |"
    )
    lines = [head, "|" + "---|" * 8]
    for raw in records:
        r = read_audit_record(raw)

        def tpr(key: str, r: Mapping[str, Any] = r) -> str:
            cell = format_tpr(r.get(key), num_nonmembers=r.get("num_nonmembers"))
            ci = r.get(f"{key}_ci95")
            return cell if ci is None else f"{cell} [{ci[0]:.3f}, {ci[1]:.3f}]"

        eps = r.get("epsilon")
        acc = r.get("final_eval_accuracy")
        cells = [
            str(r.get("run")),
            "—" if eps is None else f"{float(eps):.2f}",
            f"{float(r['epsilon_lower_bound_one_run']):.2f}",
            f"{float(r[ONE_SHOT_KEY]):.2f}",
            f"{float(r['auc']):.3f}",
            tpr("tpr_at_0.1pct_fpr"),
            tpr("tpr_at_1pct_fpr"),
            "—" if acc is None else f"{100 * float(acc):.1f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _collect_scores(out: Path, labels: Sequence[str]) -> None:
    """``out/audit_scores.npz``: every run's views as ``<run>.<view>`` (runs without a score file are skipped)."""
    from attacks.metrics import load_scores

    views: dict[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]] = {}
    for label in labels:
        path = out / f"eps-{label}" / SCORES_FILE
        if path.exists():
            views |= {f"{label}.{view}": pair for view, pair in load_scores(path).items()}
    if views:
        save_scores(out / SCORES_FILE, views)


def run_audit(
    config: ExperimentConfig, settings: AuditSettings, out: Path, *, quiet: bool = True
) -> list[dict[str, Any]]:
    """Audit ``config`` at every ``settings.epsilons`` into ``out/eps-<value>/``.

    Finished runs are reused (their record is kept in ``audit_results.json``);
    writes ``audit_results.json`` and ``audit.png``, the config it was run from as
    ``audit.toml`` (``privfed audit audit.toml`` re-runs it) and ``provenance.json``
    (:mod:`attacks.provenance`; the result file stays a list of records).
    """
    out.mkdir(parents=True, exist_ok=True)
    table = settings_table(settings)
    save_attack_config(out, kind="audit", table=table, config=config)
    results = ResultsFile(out / "audit_results.json", key=lambda r: r["run"], read=read_audit_record)
    for k, eps in enumerate(settings.epsilons, start=1):
        label = _label(eps)
        done = results.finished(label)
        reused = " (finished; reused)" if done is not None else ""
        print(f"point {k}/{len(settings.epsilons)}: ε={label}, seed={config.seed}{reused}", flush=True)
        if done is not None:
            results.add(done)
            continue
        cfg = sweep_config(config, eps)
        target = None if math.isinf(eps) else eps
        result = audit_run(cfg, settings, out / f"eps-{label}", quiet=quiet, audit_delta=config.privacy.delta)
        record = {"run": label, "target_epsilon": target, **result}
        results.add(record)
        if not quiet:
            print(json.dumps(record))
    records = results.close()  # drops records of epsilons no longer asked for
    _collect_scores(out, [str(r["run"]) for r in records])
    run_dirs = [out / f"eps-{r['run']}" for r in records]
    write_provenance(
        out, attack_provenance(out, device=config.model.device, table=table, config=config, run_dirs=run_dirs)
    )
    plot_audit(records, out / "audit.png")
    for record in records:
        print(audit_verdict(record))
    return records


def plot_audit(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Accountant ε next to the one-run lower bound and the one-shot estimate, and AUC / TPR@FPR, per run.

    Written with :mod:`privfed.plotting` (PNG, PDF and SVG). A TPR that is not resolvable
    (``None``) is left out of its line.
    """
    from privfed.plotting import epsilon_label, figure, place_legend, save

    records = [read_audit_record(r) for r in records]
    labels = ["no DP" if str(r["run"]) in ("inf", "none") else f"ε = {r['run']}" for r in records]
    deltas = {r.get("delta") for r in records if r.get("delta") is not None}
    delta = deltas.pop() if len(deltas) == 1 else None
    x = np.arange(len(records))
    fig, (ax, bx) = figure(nrows=2, width=6.0, height=5.0)
    acc = [r["epsilon"] if r["epsilon"] is not None else np.nan for r in records]
    ax.bar(x - 0.25, acc, 0.25, label="accountant ε")
    ax.bar(x, [r["epsilon_lower_bound_one_run"] for r in records], 0.25, label="one-run lower bound (95%)")
    ax.bar(x + 0.25, [r[ONE_SHOT_KEY] for r in records], 0.25, label="one-shot estimate (not a bound)")
    ax.set_xticks(x, labels)
    ax.set_ylabel(epsilon_label(unit="user", delta=delta))
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("ε: accountant vs audit, per target")
    place_legend(ax)
    bx.plot(x, [r["auc"] for r in records], "o-", label="AUC")

    def tprs(key: str) -> list[float]:
        return [np.nan if r.get(key) is None else float(r[key]) for r in records]

    bx.plot(x, tprs("tpr_at_1pct_fpr"), "s-", label="TPR @ 1% FPR")
    bx.plot(x, tprs("tpr_at_0.1pct_fpr"), "^-", label="TPR @ 0.1% FPR")
    bx.set_xticks(x, labels)
    bx.set_ylim(0, 1.02)
    bx.set_ylabel("canary AUC / TPR")
    bx.set_title("canary membership (white-box score over every round)")
    place_legend(bx)
    save(fig, path)
