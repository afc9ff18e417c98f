"""Record-level membership inference with shadow federations (``privfed attack membership``).

The evaluation protocol of Carlini, Chien, Nasr, Song, Terzis, Tramèr
("Membership Inference Attacks From First Principles", IEEE S&P 2022), with
federations in place of single models:

- The *pool* is the config's training split as partitioned among its clients.
  ``M`` federations are trained from the same config, each on a random half
  of every client's examples, drawn so that every example is IN exactly
  ``M/2`` of them (the balanced ``keep`` matrix of the reference code's
  ``train.py``).
- Each federation in turn is the *target*; the other ``M - 1`` are its shadow
  (reference) federations. One set of ``M`` runs so gives ``M * n`` scored
  (target, example) pairs, half of them members: enough non-members for a
  TPR at 0.1% FPR with a pool of a thousand examples.
- Scores of a pair (higher = member): LOSS (Yeom et al. 2018); reference
  calibration against the initial adapter, i.e. the frozen base model, a
  free reference; LiRA online and offline with a fixed (pooled) variance;
  RMIA (Zarifzadeh et al. 2024) with the other federations as reference
  models and held-out examples, never trained on, as the population ``z``.
- Statistic: the logit-scaled confidence ``log p / (1 - p)`` of the true
  label for classifiers, the mean token log-likelihood for causal LMs.

Each variant (e.g. LoRA, FFA-LoRA, full fine-tuning) is a copy of the config
with dotted overrides; finished federations are reused, unfinished ones are
rerun from scratch (the half-data hook is not recorded in the run directory,
so ``privfed run --resume`` cannot continue them).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from attacks._tables import table_values
from attacks.membership.scores import (
    lira_offline,
    lira_online,
    logit_confidence,
    loss_score,
    reference_score,
    rmia_scores,
)
from attacks.metrics import membership_metrics, plot_roc
from privfed import ConfigError, ExperimentConfig, RunDirectory, run_experiment
from privfed.client import ExampleSet
from privfed.config import replace_path
from privfed.experiments import Experiment, build_experiment
from privfed.rng import generator

__all__ = [
    "ATTACKS",
    "MembershipSettings",
    "Variant",
    "balanced_keep",
    "keep_half",
    "per_example_log_likelihoods",
    "run_membership",
    "run_variant",
    "score_targets",
]

_F64 = npt.NDArray[np.float64]
ATTACKS = ("loss", "reference", "lira_offline", "lira_online", "rmia")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One column of the comparison: a name and dotted config overrides."""

    name: str
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MembershipSettings:
    """``[membership]`` table.

    Attributes:
        num_models: federations per variant (even, >= 4); each example is IN half of them.
        population: held-out examples used as RMIA's population ``z``.
        rmia_gamma: RMIA's likelihood-ratio threshold (the paper's gamma).
        variants: the configurations compared; empty = the config as it is,
            named by its adapter method. In TOML: ``[[membership.variants]]``
            with ``name`` and a ``set`` table of dotted keys.
    """

    num_models: int = 8
    population: int = 500
    rmia_gamma: float = 2.0
    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        if self.num_models < 4 or self.num_models % 2:
            raise ConfigError("membership.num_models must be an even number >= 4")
        if self.population < 10:
            raise ConfigError("membership.population must be >= 10")
        if not (np.isfinite(self.rmia_gamma) and self.rmia_gamma > 0):
            raise ConfigError("membership.rmia_gamma must be a finite number > 0")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or any(not _NAME.match(n) for n in names):
            raise ConfigError(f"membership.variants need unique names of letters, digits, '_', '.', '-' (got {names})")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MembershipSettings:
        """Validate a TOML table."""
        values = table_values(cls, raw, "membership")
        variants = []
        for item in values.pop("variants", []):
            if not isinstance(item, Mapping) or set(item) - {"name", "set"} or "name" not in item:
                raise ConfigError("membership.variants entries need a 'name' and an optional 'set' table")
            overrides = item.get("set", {})
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"membership.variants[{item['name']!r}].set must be a table of dotted keys")
            variants.append(Variant(str(item["name"]), dict(overrides)))
        try:
            return cls(**values, variants=tuple(variants))
        except TypeError as exc:
            raise ConfigError(f"membership: {exc}") from None

    def resolved_variants(self, config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
        """``(name, config)`` per variant, overrides applied and validated."""
        if not self.variants:
            return [(config.adapter.method, config)]
        out = []
        for variant in self.variants:
            cfg = config
            for dotted, value in variant.overrides.items():
                cfg = replace_path(cfg, dotted, value)
            out.append((variant.name, cfg))
        return out


def balanced_keep(num_models: int, n: int, rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """``[num_models, n]`` membership matrix with every column holding exactly ``num_models // 2`` Trues.

    As the LiRA reference code draws it: each example ranks the models by a
    uniform draw and is IN the lower half.
    """
    order = rng.random((num_models, n)).argsort(axis=0).argsort(axis=0)
    return np.asarray(order < num_models // 2, dtype=bool)


def keep_half(exp: Experiment, keep: npt.NDArray[np.bool_]) -> Experiment:
    """``exp`` with each client holding only its pool examples where ``keep`` is True.

    The pool is the clients' data in client order (``np.concatenate(exp.client_indices)``).
    """
    sizes = [len(rows) for rows in exp.client_indices]
    if keep.shape != (sum(sizes),):
        raise ValueError(f"keep has shape {keep.shape}, the pool holds {sum(sizes)} examples")
    bounds = np.cumsum([0, *sizes])
    indices, data = [], []
    for c, rows in enumerate(exp.client_indices):
        kept = np.flatnonzero(keep[bounds[c] : bounds[c + 1]]).astype(np.int64)
        if kept.size == 0:
            raise ConfigError(f"client {c} keeps none of its {len(rows)} examples; give clients more data")
        indices.append(rows[kept])
        data.append(exp.client_data[c].subset(kept))
    return dataclasses.replace(exp, client_indices=indices, client_data=data)


def per_example_log_likelihoods(
    exp: Experiment, vector: npt.NDArray[np.float32], data: ExampleSet, *, batch_size: int = 128
) -> _F64:
    """``-loss`` of every example of ``data`` under the model holding ``vector`` (eval mode, no grad).

    Classifiers: ``log p(label | x)``; causal LMs: the mean token log-likelihood.
    """
    import torch

    exp.layout.load_into(exp.model, vector)
    exp.model.eval()
    out = []
    with torch.no_grad():
        for batch in data.sequential_batches(batch_size):
            out.append(-exp.task.per_example_loss(exp.model, batch).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _statistic(log_likelihood: _F64, task: str) -> _F64:
    # LiRA's Gaussian statistic: logit-scaled confidence for classifiers; an LM's
    # mean token log-likelihood is already roughly Gaussian.
    if task == "classification":
        return logit_confidence(np.minimum(log_likelihood, -1e-12), log_input=True)
    return log_likelihood


def score_targets(
    pool: _F64,
    population: _F64,
    base_pool: _F64,
    keep: npt.NDArray[np.bool_],
    *,
    task: str,
    rmia_gamma: float = 2.0,
) -> tuple[dict[str, _F64], npt.NDArray[np.bool_]]:
    """Every model as target against the others: ``({attack: scores [M * n]}, is_member [M * n])``.

    Args:
        pool: ``[M, n]`` log-likelihoods of the pool examples under each model.
        population: ``[M, m]`` log-likelihoods of never-trained examples (RMIA's ``z``).
        base_pool: ``[n]`` log-likelihoods under the initial adapter (the reference score's reference).
        keep: ``[M, n]``, True where the example trained model ``M``.
        task: ``classification`` or ``causal_lm`` (chooses the LiRA statistic).
    """
    num_models, n = pool.shape
    if keep.shape != pool.shape or population.shape[0] != num_models or base_pool.shape != (n,):
        raise ValueError(
            f"shapes: pool {pool.shape}, keep {keep.shape}, population {population.shape}, base {base_pool.shape}"
        )
    stats = _statistic(pool, task)
    # RMIA compares probabilities; in log space they never underflow.
    scores: dict[str, list[_F64]] = {a: [] for a in ATTACKS}
    for t in range(num_models):
        others = np.array([m for m in range(num_models) if m != t])
        in_stats = np.where(keep[others], stats[others], np.nan)
        out_stats = np.where(~keep[others], stats[others], np.nan)
        scores["loss"].append(loss_score(-pool[t]))
        scores["reference"].append(reference_score(pool[t], base_pool))
        scores["lira_offline"].append(lira_offline(stats[t], out_stats))
        scores["lira_online"].append(lira_online(stats[t], in_stats, out_stats))
        scores["rmia"].append(
            rmia_scores(pool[t], pool[others], population[t], population[others], gamma=rmia_gamma, log_probs=True)
        )
    return {a: np.concatenate(v) for a, v in scores.items()}, keep.reshape(-1).copy()


def _population(exp: Experiment, size: int, seed: int) -> ExampleSet:
    held = exp.eval_data
    take = generator(seed, "membership", "population").choice(len(held), min(size, len(held)), replace=False)
    return held.subset(np.sort(take).astype(np.int64))


def _pool_log_likelihoods(probe: Experiment, vector: npt.NDArray[np.float32]) -> _F64:
    return np.concatenate([per_example_log_likelihoods(probe, vector, data) for data in probe.client_data])


def _train_model(
    probe: Experiment,
    keep: npt.NDArray[np.bool_],
    out: Path,
    population: ExampleSet,
    *,
    quiet: bool,
) -> tuple[_F64, _F64, float]:
    """Train (or reuse) one federation on its half; its (pool, population) log-likelihoods and accuracy."""
    stats_path = out / "stats.npz"
    run = RunDirectory(out)
    finished = run.read_summary() if (out / RunDirectory.SUMMARY).exists() else {}
    if stats_path.exists() and finished.get("completed"):
        with np.load(stats_path) as saved:
            if np.array_equal(saved["keep"], keep):
                return saved["pool"], saved["population"], float(finished["final_eval_accuracy"])
    if out.exists():
        print(f"privfed attack membership: rerunning unfinished {out}", file=sys.stderr)
        shutil.rmtree(out)
    summary = run_experiment(probe.config, out, quiet=quiet, experiment_hook=lambda exp: keep_half(exp, keep))
    checkpoint = run.load_checkpoint()
    if checkpoint is None or not summary.get("completed"):
        raise ConfigError(f"federation {out} did not finish ({summary.get('stopped', 'no checkpoint')})")
    final = probe.layout.check_vector(checkpoint.arrays["global"])
    pool = _pool_log_likelihoods(probe, final)
    pop = per_example_log_likelihoods(probe, final, population)
    np.savez(stats_path, pool=pool, population=pop, keep=keep)
    return pool, pop, float(summary["final_eval_accuracy"])


def run_variant(
    name: str, config: ExperimentConfig, settings: MembershipSettings, out: Path, *, quiet: bool = True
) -> tuple[dict[str, Any], dict[str, _F64], npt.NDArray[np.bool_]]:
    """Train the ``num_models`` federations of one variant into ``out`` and score them.

    Returns the record (metrics per attack, utility), the scores and the membership labels.
    """
    out.mkdir(parents=True, exist_ok=True)
    probe = build_experiment(config)
    n = sum(len(d) for d in probe.client_data)
    keep = balanced_keep(settings.num_models, n, generator(config.seed, "membership", "keep"))
    population = _population(probe, settings.population, config.seed)
    base_pool = _pool_log_likelihoods(probe, probe.initial_vector)
    pools, pops, accuracies = [], [], []
    for m in range(settings.num_models):
        if not quiet:
            print(f"[{name}] federation {m + 1}/{settings.num_models}", file=sys.stderr)
        pool, pop, accuracy = _train_model(probe, keep[m], out / f"model-{m}", population, quiet=quiet)
        pools.append(pool)
        pops.append(pop)
        accuracies.append(accuracy)
    pool_matrix, pop_matrix = np.stack(pools), np.stack(pops)
    scores, members = score_targets(
        pool_matrix, pop_matrix, base_pool, keep, task=probe.task.name, rmia_gamma=settings.rmia_gamma
    )
    record: dict[str, Any] = {
        "variant": name,
        "adapter_method": config.adapter.method,
        "trainable_params": probe.layout.dim,
        "num_models": settings.num_models,
        "pool_examples": n,
        "num_members": int(members.sum()),
        "num_nonmembers": int((~members).sum()),
        "eval_accuracy_mean": float(np.mean(accuracies)),
        "eval_accuracy_std": float(np.std(accuracies)),
        # Held-out loss minus training loss, averaged over the federations: the overfitting MIA feeds on.
        "generalization_gap": float(np.mean(pool_matrix[keep]) - np.mean(pop_matrix)),
    }
    for attack, values in scores.items():
        for key, value in membership_metrics(values, members).to_dict().items():
            record[f"{attack}_{key}"] = value
    plot_roc(
        {a: (scores[a], members) for a in ATTACKS},
        out / "roc.png",
        title=f"{name}: {settings.num_models} federations, each target in turn",
    )
    np.savez(out / "scores.npz", members=members, **scores)  # type: ignore[arg-type]
    return record, scores, members


def _markdown(records: Sequence[Mapping[str, Any]]) -> str:
    head = "| variant | trainable params | eval accuracy | " + " | ".join(
        f"{a} AUC / TPR@0.1% / TPR@1%" for a in ATTACKS
    )
    lines = [head + " |", "|" + "---|" * (3 + len(ATTACKS))]
    for r in records:
        cells = [
            r["variant"],
            f"{r['trainable_params']:,}",
            f"{100 * r['eval_accuracy_mean']:.1f}% ± {100 * r['eval_accuracy_std']:.1f}",
        ]
        for a in ATTACKS:
            cells.append(f"{r[f'{a}_auc']:.3f} / {r[f'{a}_tpr_at_0.1pct_fpr']:.4f} / {r[f'{a}_tpr_at_1pct_fpr']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_membership(
    config: ExperimentConfig, settings: MembershipSettings, out: Path, *, quiet: bool = True
) -> list[dict[str, Any]]:
    """Run every variant into ``out/<variant>/``; writes ``membership_results.json``/``.md`` and ``membership.png``.

    ``membership.png``: the log-log ROC of online LiRA, the strongest attack here, per variant.
    """
    out.mkdir(parents=True, exist_ok=True)
    records, curves = [], {}
    for name, cfg in settings.resolved_variants(config):
        record, scores, members = run_variant(name, cfg, settings, out / name, quiet=quiet)
        records.append(record)
        curves[f"{name} (acc {100 * record['eval_accuracy_mean']:.1f}%)"] = (scores["lira_online"], members)
        (out / "membership_results.json").write_text(json.dumps(records, indent=2) + "\n")
    (out / "membership_results.md").write_text(_markdown(records))
    plot_roc(curves, out / "membership.png", title="online LiRA, shadow federations")
    return records
