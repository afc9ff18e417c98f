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

Two threat models are scored on the same federations (Carlini et al.'s
protocol is unchanged; only the model queried differs):

- ``final_model``: black-box queries to the released global adapter. A
  server running secure aggregation sees the sum of every round's updates;
  the last of them gives it this model, so the view is a lower bound on
  what that server can learn about a record.
- ``client_update``: white-box access to one client's upload, as an
  honest-but-curious server without secure aggregation holds it: each
  example is scored under the local model of the client that holds it,
  ``broadcast + delta`` of that client's last upload, and calibrated against
  the same client's local models in the shadow federations.

Client-level membership (``unit = "client"``: was this client in the
federation?) draws the balanced keep matrix over clients instead of
examples; an OUT client never answers the server (it is not part of that
federation), and a client's score is the mean of its examples' record scores
(:func:`attacks.membership.scores.client_scores`).

Each variant (e.g. LoRA, FFA-LoRA, full fine-tuning) is a copy of the config
with dotted overrides; finished federations are reused, unfinished ones are
rerun from scratch (the half-data hook is not recorded in the run directory,
so ``privfed run --resume`` cannot continue them).
"""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from attacks.driver import ResultsFile, final_adapter, run_federation
from attacks.membership.scores import (
    client_scores,
    lira_offline,
    lira_online,
    logit_confidence,
    loss_score,
    reference_score,
    rmia_scores,
)
from attacks.metrics import format_tpr, membership_metrics, plot_roc, save_scores
from attacks.provenance import attack_provenance, save_attack_config, settings_table, write_provenance
from privfed import ConfigError, ExperimentConfig, GlobalModel
from privfed.client import ExampleSet
from privfed.config import check_section, config_field, replace_paths, section_from_dict
from privfed.errors import ProtocolError
from privfed.experiments import Experiment, atomic_write_bytes, atomic_write_text, build_experiment
from privfed.rng import generator
from privfed.server import validate_update
from privfed.transport import Exchange, Transport

__all__ = [
    "ATTACKS",
    "VIEWS",
    "LocalModelTransport",
    "MembershipSettings",
    "Variant",
    "balanced_keep",
    "keep_half",
    "membership_table",
    "per_example_log_likelihoods",
    "run_membership",
    "run_variant",
    "score_targets",
]

_F64 = npt.NDArray[np.float64]
ATTACKS = ("loss", "reference", "lira_offline", "lira_online", "rmia")
VIEWS = ("final_model", "client_update")
Unit = Literal["record", "client"]
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCORES_FILE = "membership_scores.npz"


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
        unit: ``record`` (was this example trained on?) or ``client`` (was
            this client in the federation? the keep matrix is over clients).
        variants: the configurations compared; empty = the config as it is,
            named by its adapter method. In TOML: ``[[membership.variants]]``
            with ``name`` and a ``set`` table of dotted keys.
    """

    num_models: int = config_field(8, ge=4)
    population: int = config_field(500, ge=10)
    rmia_gamma: float = config_field(2.0, gt=0.0)
    unit: str = config_field("record", choices=lambda: ("record", "client"))
    variants: tuple[Variant, ...] = ()

    def __post_init__(self) -> None:
        check_section(self, prefix="membership")
        if self.num_models % 2:
            raise ConfigError(f"membership.num_models must be even (each example is IN half); got {self.num_models}")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names) or any(not _NAME.match(n) for n in names):
            raise ConfigError(f"membership.variants need unique names of letters, digits, '_', '.', '-'; got {names}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> MembershipSettings:
        """Validate a TOML table with the config's field rules; ``variants`` is a list of tables."""
        values = dict(raw)
        items = values.pop("variants", [])
        if not isinstance(items, list):
            raise ConfigError(f"membership.variants must be a list of tables; got {items!r}")
        variants = []
        for item in items:
            if not isinstance(item, Mapping) or set(item) - {"name", "set"} or "name" not in item:
                raise ConfigError(
                    f"membership.variants entries need a 'name' and an optional 'set' table; got {item!r}"
                )
            overrides = item.get("set", {})
            if not isinstance(overrides, Mapping):
                raise ConfigError(f"membership.variants[{item['name']!r}].set must be a table of dotted keys")
            variants.append(Variant(str(item["name"]), dict(overrides)))
        return dataclasses.replace(section_from_dict(cls, values, prefix="membership"), variants=tuple(variants))

    def resolved_variants(self, config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
        """``(name, config)`` per variant, overrides applied and validated."""
        variants = self.variants or (Variant(config.adapter.method),)
        out = []
        for variant in variants:
            try:
                cfg = replace_paths(config, variant.overrides)
            except ConfigError as exc:
                raise ConfigError(f"membership variant {variant.name!r}: {exc}") from None
            if self.unit == "client" and cfg.privacy.user_level:
                # DP-FedAvg divides by the expected cohort of all N clients and adapts its clip
                # to the fraction unclipped: with half of them absent it is another mechanism.
                raise ConfigError(
                    f"membership.unit = 'client' with user-level DP (variant {variant.name!r}) would halve "
                    "every DP-FedAvg step (absent clients still count in the expected cohort); not supported"
                )
            if self.unit == "client" and cfg.secagg.enabled:
                raise ConfigError(
                    f"membership.unit = 'client' leaves clients out in the plain transport; variant {variant.name!r} "
                    "enables secure aggregation"
                )
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
            out.append(-exp.task.per_example_loss(exp.model, batch).detach().cpu().double().numpy())
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


class LocalModelTransport:
    """Wraps the plain transport as an honest-but-curious server sees it.

    Remembers every client's latest local model (the broadcast it trained
    from plus its uploaded delta): the ``client_update`` view. Clients in
    ``absent`` are not part of this federation: they are left out of every
    cohort and never train (client-level membership).
    """

    def __init__(self, inner: Transport, absent: frozenset[int] = frozenset()) -> None:
        self.inner = inner
        self.absent = absent
        self.local_models: dict[int, npt.NDArray[np.float32]] = {}

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        present = {c: m for c, m in messages.items() if c not in self.absent}
        result = self.inner.exchange(present, round=round, stage=stage, on_reply=on_reply)
        if stage != "train" or not present:
            return result
        message = GlobalModel.from_bytes(next(iter(present.values())))
        expected = set(present)
        for reply in result.replies:
            try:  # what the server rejects never enters this view either
                update = validate_update(reply.data, round=message.round, expected=expected, dim=message.vector.size)
            except ProtocolError:
                continue
            if update.client_id != reply.sender:
                continue
            expected.discard(update.client_id)
            self.local_models[update.client_id] = message.vector + update.delta
        return result


@dataclasses.dataclass(frozen=True)
class FederationStats:
    """Log-likelihoods one federation gives (``NaN`` where a client never uploaded).

    Attributes:
        pool / population: ``[n]`` / ``[m]`` under the final global adapter.
        client_pool: ``[n]``, each pool example under the latest local model
            of the client holding it; ``None`` when not observed (secure
            aggregation hides it, or client-level membership).
        client_population: ``[clients, m]``, the population under each client's local model.
        accuracy: the federation's final held-out accuracy.
    """

    pool: _F64
    population: _F64
    client_pool: _F64 | None
    client_population: _F64 | None
    accuracy: float


def _client_view(
    probe: Experiment, local_models: Mapping[int, npt.NDArray[np.float32]], population: ExampleSet
) -> tuple[_F64, _F64]:
    pools, pops = [], []
    for c, data in enumerate(probe.client_data):
        local = local_models.get(c)
        if local is None:  # never selected in this federation
            pools.append(np.full(len(data), np.nan))
            pops.append(np.full(len(population), np.nan))
            continue
        vector = probe.layout.check_vector(local)
        pools.append(per_example_log_likelihoods(probe, vector, data))
        pops.append(per_example_log_likelihoods(probe, vector, population))
    return np.concatenate(pools), np.stack(pops)


def _train_model(
    probe: Experiment,
    keep: npt.NDArray[np.bool_],
    out: Path,
    population: ExampleSet,
    *,
    unit: Unit,
    quiet: bool,
) -> FederationStats:
    """Train (or reuse) one federation on its half of the pool (``unit = record``) or of the clients.

    A finished federation of the same config (its ``name``, a label, may differ) is reused when its
    statistics still load; anything else in ``out`` is trained again from scratch (the half-data
    hook is not recorded in the run directory, so an interrupted one cannot be resumed).
    """
    stats_path = out / "stats.npz"
    client_view = unit == "record" and not probe.config.secagg.enabled
    reused: list[FederationStats] = []

    def reusable(summary: dict[str, Any]) -> bool:
        accuracy = float(summary["final_eval_accuracy"])
        stats = _load_stats(stats_path, keep, len(population), client_view=client_view, accuracy=accuracy)
        reused.extend([stats] if stats is not None else [])
        return stats is not None

    def rerun(path: Path) -> None:
        print(f"privfed attack membership: rerunning {path} (unfinished or other settings)", file=sys.stderr)

    recorder: list[LocalModelTransport] = []

    def wrap(inner: Transport) -> Transport:
        absent = frozenset(int(c) for c in np.flatnonzero(~keep)) if unit == "client" else frozenset()
        recorder.append(LocalModelTransport(inner, absent))
        return recorder[-1]

    summary = run_federation(
        probe.config,
        out,
        quiet=quiet,
        other_config="replace",
        ignore_name=True,
        reuse=reusable,
        resume=False,
        experiment_hook=(lambda exp: keep_half(exp, keep)) if unit == "record" else None,
        # Secure-aggregation rounds never go through a wrapped transport: the server sees only the sum.
        transport_hook=None if probe.config.secagg.enabled else wrap,
        on_rerun=rerun,
    )
    if reused:
        return reused[0]
    final = probe.layout.check_vector(final_adapter(out, summary, what=f"federation {out}"))
    pool = _pool_log_likelihoods(probe, final)
    pop = per_example_log_likelihoods(probe, final, population)
    arrays = {"pool": pool, "population": pop, "keep": keep}
    if recorder:  # which clients the server heard from (absent ones never train)
        arrays["uploaded"] = np.isin(np.arange(len(probe.client_data)), list(recorder[0].local_models))
    client_pool = client_pop = None
    if client_view:
        client_pool, client_pop = _client_view(probe, recorder[0].local_models, population)
        arrays |= {"client_pool": client_pool, "client_population": client_pop}
    _save_npz(stats_path, arrays)
    return FederationStats(pool, pop, client_pool, client_pop, float(summary["final_eval_accuracy"]))


def _save_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())  # a killed run never leaves half a file that looks finished


def _load_stats(
    path: Path, keep: npt.NDArray[np.bool_], population_size: int, *, client_view: bool, accuracy: float
) -> FederationStats | None:
    """The stored statistics of a finished federation, or ``None`` if missing, unreadable or for other settings."""
    try:
        with np.load(path) as saved:
            if not (np.array_equal(saved["keep"], keep) and saved["population"].shape == (population_size,)):
                return None
            has_view = client_view and "client_pool" in saved.files
            if client_view and not has_view:
                print(
                    f"privfed attack membership: reusing {path.parent} without the client_update view "
                    "(trained before it was recorded; delete the directory to measure it)",
                    file=sys.stderr,
                )
            return FederationStats(
                pool=saved["pool"],
                population=saved["population"],
                client_pool=saved["client_pool"] if has_view else None,
                client_population=saved["client_population"] if has_view else None,
                accuracy=accuracy,
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _client_update_scores(
    stats: Sequence[FederationStats],
    base_pool: _F64,
    keep: npt.NDArray[np.bool_],
    client_of: npt.NDArray[np.int64],
    *,
    task: str,
    rmia_gamma: float,
) -> tuple[dict[str, _F64], npt.NDArray[np.bool_], int] | None:
    """The ``client_update`` view: each client's examples scored against that client's local models.

    Clients that did not upload in every federation are left out. Returns
    ``(scores, members, clients scored)``, or ``None`` if nothing was observed.
    """
    if any(s.client_pool is None or s.client_population is None for s in stats):
        return None
    pool = np.stack([s.client_pool for s in stats if s.client_pool is not None])
    pops = np.stack([s.client_population for s in stats if s.client_population is not None])
    parts: dict[str, list[_F64]] = {a: [] for a in ATTACKS}
    member_parts, scored = [], 0
    for c in range(pops.shape[1]):
        rows = np.flatnonzero(client_of == c)
        if rows.size == 0 or not (np.isfinite(pool[:, rows]).all() and np.isfinite(pops[:, c]).all()):
            continue
        scores, members = score_targets(
            pool[:, rows], pops[:, c], base_pool[rows], keep[:, rows], task=task, rmia_gamma=rmia_gamma
        )
        for a in ATTACKS:
            parts[a].append(scores[a])
        member_parts.append(members)
        scored += 1
    if not scored:
        return None
    return {a: np.concatenate(v) for a, v in parts.items()}, np.concatenate(member_parts), scored


def _per_client(scores: Mapping[str, _F64], num_models: int, client_of: npt.NDArray[np.int64]) -> dict[str, _F64]:
    """Record scores ``[M * n]`` (target-major) -> client scores ``[M * clients]``.

    A client's score is the mean of its examples' scores.
    """
    out = {}
    for attack, values in scores.items():
        rows = values.reshape(num_models, -1)
        out[attack] = np.concatenate([client_scores(row, client_of)[1] for row in rows])
    return out


def _metrics(prefix: str, scores: Mapping[str, _F64], members: npt.NDArray[np.bool_]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for attack, values in scores.items():
        for key, value in membership_metrics(values, members).to_dict().items():
            record[f"{prefix}{attack}_{key}"] = value
    return record


def run_variant(
    name: str, config: ExperimentConfig, settings: MembershipSettings, out: Path, *, quiet: bool = True
) -> tuple[dict[str, Any], dict[str, _F64], npt.NDArray[np.bool_]]:
    """Train the ``num_models`` federations of one variant into ``out`` and score them.

    Returns the record (metrics per attack and view, utility), the scores of
    the ``final_model`` view and its membership labels (per record, or per
    client with ``settings.unit == "client"``). Metrics of the
    ``client_update`` view are the record's ``client_update_<attack>_...`` keys.
    """
    out.mkdir(parents=True, exist_ok=True)
    probe = build_experiment(config)
    sizes = [len(d) for d in probe.client_data]
    n = sum(sizes)
    client_of = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    units = n if settings.unit == "record" else len(sizes)
    path = ("keep",) if settings.unit == "record" else ("keep", "client")
    keep = balanced_keep(settings.num_models, units, generator(config.seed, "membership", *path))
    if settings.unit == "client" and not keep.any(axis=1).all():
        raise ConfigError(f"with {len(sizes)} clients some federation holds no client; use more clients")
    example_keep = keep if settings.unit == "record" else keep[:, client_of]
    population = _population(probe, settings.population, config.seed)
    base_pool = _pool_log_likelihoods(probe, probe.initial_vector)
    stats = []
    for m in range(settings.num_models):
        if not quiet:
            print(f"[{name}] federation {m + 1}/{settings.num_models}", file=sys.stderr)
        stats.append(
            _train_model(
                probe,
                keep[m],
                out / f"model-{m}",
                population,
                unit="client" if settings.unit == "client" else "record",
                quiet=quiet,
            )
        )
    pool_matrix = np.stack([s.pool for s in stats])
    pop_matrix = np.stack([s.population for s in stats])
    task = probe.task.name
    scores, members = score_targets(
        pool_matrix, pop_matrix, base_pool, example_keep, task=task, rmia_gamma=settings.rmia_gamma
    )
    if settings.unit == "client":
        scores, members = _per_client(scores, settings.num_models, client_of), keep.reshape(-1).copy()
    accuracies = [s.accuracy for s in stats]
    record: dict[str, Any] = {
        "variant": name,
        "unit": settings.unit,
        "adapter_method": config.adapter.method,
        "privacy_mode": config.privacy.mode,
        "trainable_params": probe.layout.dim,
        "num_models": settings.num_models,
        "num_clients": len(sizes),
        "pool_examples": n,
        "num_members": int(members.sum()),
        "num_nonmembers": int((~members).sum()),
        "eval_accuracy_mean": float(np.mean(accuracies)),
        "eval_accuracy_std": float(np.std(accuracies)),
        # Held-out loss minus training loss, averaged over the federations: the overfitting MIA feeds on.
        "generalization_gap": float(np.mean(pool_matrix[example_keep]) - np.mean(pop_matrix)),
    }
    record.update(_metrics("", scores, members))
    title = f"{name}, {settings.unit}-level: {settings.num_models} federations, each target in turn"
    plot_roc({a: (scores[a], members) for a in ATTACKS}, out / "roc.png", title=title)
    arrays = {"members": members, **scores}
    client = _client_update_scores(stats, base_pool, example_keep, client_of, task=task, rmia_gamma=settings.rmia_gamma)
    if client is not None:
        client_scores_, client_members, scored = client
        record["client_update_clients"] = scored
        record.update(_metrics("client_update_", client_scores_, client_members))
        plot_roc(
            {a: (client_scores_[a], client_members) for a in ATTACKS},
            out / "roc_client_update.png",
            title=f"{name}: one client's update (white-box)",
        )
        arrays |= {f"client_update_{a}": v for a, v in client_scores_.items()}
        arrays["client_update_members"] = client_members
    _save_npz(out / "scores.npz", arrays)
    return record, scores, members


def membership_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table, one row per variant and view; a TPR at an FPR below 1/non-members shows as ``n/a``."""
    head = "| variant | unit | view | trainable params | eval accuracy | non-members | " + " | ".join(
        f"{a} AUC / TPR@0.1% / TPR@1%" for a in ATTACKS
    )
    lines = [head + " |", "|" + "---|" * (6 + len(ATTACKS))]
    for r in records:
        for view, prefix in zip(VIEWS, ("", "client_update_"), strict=True):
            if f"{prefix}loss_auc" not in r:
                continue
            cells = [
                r["variant"],
                r.get("unit", "record"),
                view,
                f"{r['trainable_params']:,}",
                f"{100 * r['eval_accuracy_mean']:.1f}% ± {100 * r['eval_accuracy_std']:.1f}",
                str(r.get(f"{prefix}loss_num_nonmembers", "?")),
            ]
            for a in ATTACKS:
                auc, low, one = (r[f"{prefix}{a}_{m}"] for m in ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr"))
                cells.append(f"{auc:.3f} / {format_tpr(low, digits=4)} / {format_tpr(one)}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_membership(
    config: ExperimentConfig, settings: MembershipSettings, out: Path, *, quiet: bool = True
) -> list[dict[str, Any]]:
    """Run every variant into ``out/<variant>/``; writes ``membership_results.json``/``.md``, ``membership.png``
    and ``membership_scores.npz`` (``<variant>.<attack>`` and ``<variant>.client_update_<attack>`` views, see
    :func:`attacks.metrics.save_scores`), from which every AUC/TPR of the results recomputes.

    ``membership.png``: the log-log ROC of online LiRA per variant, for the
    final model and, where recorded, one client's update.

    Also writes the config it was run from as ``membership.toml`` (``privfed attack membership
    membership.toml`` re-runs it) and ``provenance.json`` (:mod:`attacks.provenance`; the result
    file stays a list of records).
    """
    out.mkdir(parents=True, exist_ok=True)
    table = settings_table(settings)
    save_attack_config(out, kind="membership", table=table, config=config)
    run_dirs = []
    # Variants are recomputed from their federations' saved statistics (cheap), so none is skipped.
    results = ResultsFile(out / "membership_results.json", key=lambda r: r["variant"], indent=2, newline=True)
    curves = {}
    all_views: dict[str, tuple[_F64, npt.NDArray[np.bool_]]] = {}
    for name, cfg in settings.resolved_variants(config):
        record, scores, members = run_variant(name, cfg, settings, out / name, quiet=quiet)
        run_dirs += [out / name / f"model-{m}" for m in range(settings.num_models)]
        results.add(record)
        all_views |= {f"{name}.{a}": (v, members) for a, v in scores.items()}
        curves[f"{name} (acc {100 * record['eval_accuracy_mean']:.1f}%)"] = (scores["lira_online"], members)
        with np.load(out / name / "scores.npz") as saved:
            for a in ATTACKS:
                if f"client_update_{a}" in saved.files:
                    all_views[f"{name}.client_update_{a}"] = (
                        np.asarray(saved[f"client_update_{a}"]),
                        np.asarray(saved["client_update_members"]),
                    )
            if "client_update_lira_online" in saved.files:
                curves[f"{name}, one client's update"] = (
                    saved["client_update_lira_online"],
                    saved["client_update_members"],
                )
    records = results.close()
    atomic_write_text(out / "membership_results.md", membership_table(records))
    save_scores(out / SCORES_FILE, all_views)  # every AUC/TPR of membership_results.json recomputes from these
    plot_roc(curves, out / "membership.png", title="online LiRA, shadow federations")
    write_provenance(
        out, attack_provenance(out, device=config.model.device, table=table, config=config, run_dirs=run_dirs)
    )
    return records
