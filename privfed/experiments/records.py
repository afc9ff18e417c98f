"""The records a run writes: one ``metrics.jsonl`` line per round and ``summary.json``.

Both are ``TypedDict``\\ s, so they stay plain JSON objects that users index by key
(``summary["final_eval_accuracy"]``) while a type checker knows every key and its type.
Keys marked ``NotRequired`` appear only under the condition their comment names; every
other key is always there. A float that is not finite (NaN, inf) is written as ``null``.
``tests/unit/test_records.py`` checks that what a run writes has exactly these keys.
"""

# No ``from __future__ import annotations`` here: on Python 3.11 a TypedDict sees
# ``NotRequired`` only in evaluated annotations (``__optional_keys__`` would be empty).
from typing import NotRequired, TypedDict

from privfed.experiments.provenance import Provenance

__all__ = ["RoundMetrics", "RunSummary"]


class RoundMetrics(TypedDict):
    """One line of ``metrics.jsonl``: what round ``round`` did (written in this key order)."""

    round: int
    train_loss: float
    #: Held-out metrics; ``None`` in rounds without evaluation (``eval.every``).
    eval_loss: float | None
    eval_accuracy: float | None
    num_clients: int
    rejected_updates: int
    bytes_up: int
    bytes_down: int
    update_norm: float
    dropped_clients: int
    secagg_aborted: str | None
    aggregate_rejected: str | None
    update_applied: bool
    clients_sampled: int
    clients_answered: int
    clients_dropped: int
    clients_rejected: int
    seconds_waiting_slowest: float
    #: Rounds with evaluation of a language model: exp(eval_loss).
    eval_perplexity: NotRequired[float]
    #: User-level DP: epsilon spent so far, the clip bound used, the noised unclipped fraction.
    epsilon_user: NotRequired[float]
    clip_norm: NotRequired[float | None]
    unclipped_fraction: NotRequired[float | None]
    #: Record-level DP: the largest epsilon any client has spent so far.
    epsilon_sample_max: NotRequired[float]
    #: Flower nodes with a record-level ledger (node-local policy): the largest epsilon a node reported.
    client_record_epsilon_max: NotRequired[float]
    #: Rounds in which some node declined: how many declined, by the one-line reason each gave
    #: (``""``: none given). Declines are counted in ``rejected_updates`` too.
    declines: NotRequired[dict[str, int]]
    seconds: float
    seconds_train: float
    seconds_eval: float


class RunSummary(TypedDict):
    """``summary.json``, and what :func:`privfed.run_experiment` returns (in this key order)."""

    name: str
    seed: int
    model: str
    dataset: str
    adapter_method: str
    strategy: str
    #: Rounds run (metrics lines), not ``server.rounds``.
    rounds: int
    num_clients_total: int
    clients_per_round: int
    train_examples: int
    eval_examples: int
    trainable_params: int
    base_params: int
    bytes_up_total: int
    bytes_down_total: int
    rejected_updates_total: int
    secagg: bool
    dropped_clients_total: int
    secagg_aborted_rounds: int
    #: Of the last evaluated round; ``None`` when no round was evaluated.
    final_eval_loss: float | None
    final_eval_accuracy: float | None
    seconds_total: float
    #: The adapter before training.
    initial_eval_loss: float | None
    initial_eval_accuracy: float | None
    #: Language models only.
    initial_eval_perplexity: NotRequired[float | None]
    #: Classification only: the accuracy of always predicting the most common eval label.
    majority_class_rate: NotRequired[float]
    #: Language models only, when a round was evaluated.
    final_eval_perplexity: NotRequired[float | None]
    privacy_mode: str
    delta: float
    sample_noise_multiplier: float | None
    user_noise_multiplier: float | None
    epsilon_user: float | None
    epsilon_sample_max: float | None
    rounds_without_update: int
    aggregate_rejected_rounds: int
    trained: bool
    warnings: list[str]
    uplink_bytes_per_client_round: float | None
    uplink_ratio_vs_fp32_model: float | None
    provenance: Provenance
    #: Whether all ``server.rounds`` rounds ran.
    completed: bool
    #: Why the run stopped early (the privacy budget), when it did.
    stopped: NotRequired[str]
