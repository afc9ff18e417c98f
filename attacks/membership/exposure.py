"""Canary exposure for language models (Carlini, Liu, Erlingsson, Kos, Song,
"The Secret Sharer", USENIX Security 2019).

Random secrets ("my secret code is 482913") are inserted into one client's
training data, some once and some many times; after federated training, each
secret's log-perplexity is ranked among candidates of the same format that
were never inserted. ``exposure = log2(#candidates + 1) - log2(rank)``: 0-1
bits means the model did not single the secret out, ``log2(n+1)`` means it
ranks first. ``privfed``'s public API only: the canaried corpus is registered
as a dataset of its own and the run is an ordinary ``run_experiment``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import numpy.typing as npt

from attacks.driver import ResultsFile, final_adapter, run_federation
from attacks.metrics import save_scores
from attacks.provenance import (
    RESULT_FILES,
    attack_provenance,
    config_digest,
    save_attack_config,
    settings_digest,
    settings_table,
)
from privfed import (
    ConfigError,
    Dataset,
    ExperimentConfig,
    PrivfedError,
    build_experiment,
    load_base_model,
    load_dataset,
    register_dataset,
)
from privfed.config import check_section, config_field, replace_path, section_from_dict
from privfed.data import DatasetSpec
from privfed.experiments import Provenance
from privfed.rng import generator

__all__ = ["ExposureRecord", "SecretExposure", "SecretSharerSettings", "exposure", "log_perplexities", "run_exposure"]


def exposure(secret_score: float, candidate_scores: npt.ArrayLike) -> float:
    """Exposure in bits of a secret with log-perplexity ``secret_score`` among candidates.

    rank = 1 + #candidates strictly more likely + half the ties; exposure =
    log2(n + 1) - log2(rank) (Carlini et al. 2019, Def. 3, estimated by rank
    among ``n`` sampled candidates).
    """
    c = np.asarray(candidate_scores, dtype=np.float64).reshape(-1)
    if c.size == 0 or not np.all(np.isfinite(c)) or not np.isfinite(secret_score):
        raise ValueError("need finite scores and at least one candidate")
    rank = 1.0 + float(np.sum(c < secret_score)) + 0.5 * float(np.sum(c == secret_score))
    return float(np.log2(c.size + 1) - np.log2(rank))


def log_perplexities(
    model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64
) -> npt.NDArray[np.float64]:
    """Summed next-token negative log-likelihood (nats) of each text under ``model``."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start : start + batch_size]), return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
            target = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
            out.extend((nll * mask).sum(dim=1).double().tolist())
    return np.asarray(out, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class SecretSharerSettings:
    """How many secrets, how often each is inserted, and how many candidates rank them."""

    template: str = config_field("my secret code is {:06d}", text=True)
    space: int = config_field(1_000_000, ge=11)
    repeats: tuple[int, ...] = config_field((1, 1, 4, 4, 16, 16))
    candidates: int = config_field(2000, ge=10)
    max_base_examples: int = config_field(0, ge=0)  # > 0: a seeded random subset of the corpus (secrets kept)

    def __post_init__(self) -> None:
        check_section(self, prefix="exposure")
        if not self.repeats or min(self.repeats) < 1:
            raise ConfigError(f"exposure.repeats must be a non-empty list of counts >= 1; got {list(self.repeats)}")
        if self.candidates >= self.space:
            raise ConfigError(f"exposure.candidates must be below exposure.space ({self.space}); got {self.candidates}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> SecretSharerSettings:
        """Validate an ``[exposure]`` TOML table with the config's field rules."""
        return section_from_dict(cls, raw, prefix="exposure")


def _canaried(base_name: str, settings: SecretSharerSettings, seed: int) -> tuple[str, list[int]]:
    base = load_dataset(base_name)
    if base.texts is None or base.groups is None:
        raise ConfigError(f"exposure needs a text dataset with natural client groups; {base_name!r} is not")
    rng = generator(seed, "exposure", "secrets")
    values = [int(v) for v in rng.choice(settings.space, size=len(settings.repeats), replace=False)]
    group = str(base.groups[0])  # every copy goes to the client that holds this group
    label = int(base.labels[0])
    keep = np.arange(len(base.labels))
    if 0 < settings.max_base_examples < len(keep):
        keep = np.sort(rng.choice(len(keep), size=settings.max_base_examples, replace=False))
        keep = np.union1d(keep, np.flatnonzero(base.groups == group)[:1])  # the secrets' group stays present
    texts = [settings.template.format(v) for v, r in zip(values, settings.repeats, strict=True) for _ in range(r)]
    digest = hashlib.sha256(("\n".join(texts) + base_name + str(keep.size)).encode()).hexdigest()[:10]
    name = f"{base_name}+secrets-{digest}"
    dataset = Dataset(
        name=name,
        modality="text",
        labels=np.concatenate([base.labels[keep], np.full(len(texts), label, dtype=np.int64)]),
        label_names=base.label_names,
        source=base.source + " + inserted random secrets",
        license=base.license,
        groups=np.concatenate([base.groups[keep], np.array([group] * len(texts))]),
        texts=tuple(base.texts[i] for i in keep) + tuple(texts),
    )
    with contextlib.suppress(PrivfedError):  # registered earlier in this process, same content
        register_dataset(DatasetSpec(name, "text", "language_modeling", lambda: dataset, "canaried corpus"))
    return name, values


class SecretExposure(TypedDict):
    """One inserted secret in ``exposure_results.json`` (in this key order)."""

    secret: str
    #: Copies inserted into the corpus, and how many of them the training split holds.
    inserted: int
    copies_in_training: int
    #: Bits, between 0 and ``max_exposure``.
    exposure_before: float
    exposure_after: float


class ExposureRecord(TypedDict):
    """``exposure_results.json``, and what :func:`run_exposure` returns (in this key order)."""

    privacy_mode: str
    epsilon_user: float | None
    epsilon_sample_max: float | None
    #: Never-inserted candidates each secret is ranked among, and ``log2(candidates + 1)``.
    candidates: int
    max_exposure: float
    final_eval_perplexity: float | None
    secrets: list[SecretExposure]
    provenance: Provenance


RESULT_FILE = RESULT_FILES["exposure"]
SCORES_FILE = "exposure_scores.npz"


def _record_key(record: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """What identifies an exposure record: the digests of its settings and of its experiment config."""
    fingerprints = (record.get("provenance") or {}).get("fingerprints") or {}
    return fingerprints.get("attack_settings"), fingerprints.get("experiment_config")


def run_exposure(
    config: ExperimentConfig, settings: SecretSharerSettings, out: Path, *, quiet: bool = True
) -> ExposureRecord:
    """Insert secrets, train ``config`` federated into ``out/run``, and report each secret's exposure.

    Writes ``out/exposure_results.json``: per secret its value, how many copies
    landed in training (the held-out split may take some), and its exposure
    before and after training; and ``out/exposure_scores.npz`` (views ``before``
    and ``after``: the log-perplexities of the secrets, label True, then of the
    candidates, label False; :func:`attacks.metrics.save_scores`), from which
    every exposure recomputes. The record's ``provenance`` key is the attack's provenance
    (:mod:`attacks.provenance`); the config it was run from is saved as ``exposure.toml``
    (``privfed attack exposure exposure.toml`` re-runs it).

    Re-runs (:mod:`attacks.driver`): the federation in ``out/run`` is reused when finished with the
    same config, resumed when interrupted, and replaced when it holds another config; a result file
    whose record has the same settings and config (and whose scores are saved) is returned as it is.
    """
    name, values = _canaried(config.data.name, settings, config.seed)
    cfg = replace_path(config, "data.name", name)
    out.mkdir(parents=True, exist_ok=True)
    table = settings_table(settings)
    save_attack_config(out, kind="exposure", table=table, config=config)
    results = ResultsFile(out / RESULT_FILE, key=_record_key, one=True)
    done = results.finished((settings_digest(table), config_digest(config)))
    if done is not None and (out / SCORES_FILE).exists():
        if not quiet:
            print(f"privfed attack exposure: {out / RESULT_FILE} is finished for these settings; reused")
        return cast(ExposureRecord, done)

    def rerun(path: Path) -> None:
        print(f"privfed attack exposure: rerunning {path} (it holds a run of other settings)", file=sys.stderr)

    summary = run_federation(cfg, out / "run", quiet=quiet, other_config="replace", on_rerun=rerun)
    # A run its privacy budget stopped early is scored as it stands (its last checkpoint).
    final = final_adapter(out / "run", summary, what=f"the exposure run in {out / 'run'}", any_checkpoint=True)
    exp = build_experiment(cfg)
    train_texts = [exp.dataset.texts[i] for i in exp.train_indices] if exp.dataset.texts else []
    tokenizer = load_base_model(config.model.name, init_seed=0).tokenizer
    rng = generator(config.seed, "exposure", "candidates")
    taken = set(values)
    pool = [int(v) for v in rng.choice(settings.space, size=settings.candidates + len(values), replace=False)]
    candidates = [settings.template.format(v) for v in pool if v not in taken][: settings.candidates]
    secrets = [settings.template.format(v) for v in values]
    scores = {}
    for stage, vector in (("before", exp.initial_vector), ("after", final)):
        exp.layout.load_into(exp.model, vector)
        scores[stage] = (
            log_perplexities(exp.model, tokenizer, secrets),
            log_perplexities(exp.model, tokenizer, candidates),
        )
    results_per_secret: list[SecretExposure] = [
        {
            "secret": secrets[j],
            "inserted": repeats,
            "copies_in_training": sum(t == secrets[j] for t in train_texts),
            "exposure_before": exposure(scores["before"][0][j], scores["before"][1]),
            "exposure_after": exposure(scores["after"][0][j], scores["after"][1]),
        }
        for j, repeats in enumerate(settings.repeats)
    ]
    record: ExposureRecord = {
        "privacy_mode": cfg.privacy.mode,
        "epsilon_user": summary.get("epsilon_user"),
        "epsilon_sample_max": summary.get("epsilon_sample_max"),
        "candidates": len(candidates),
        "max_exposure": float(np.log2(len(candidates) + 1)),
        "final_eval_perplexity": summary.get("final_eval_perplexity"),
        "secrets": results_per_secret,
        "provenance": attack_provenance(
            out, device=config.model.device, table=table, config=config, run_dirs=[out / "run"]
        ),
    }
    views = {
        stage: (
            np.concatenate([secret_scores, candidate_scores]),
            np.concatenate([np.ones(len(secret_scores), bool), np.zeros(len(candidate_scores), bool)]),
        )
        for stage, (secret_scores, candidate_scores) in scores.items()
    }
    save_scores(out / SCORES_FILE, views)  # before the record: a record on disk always has its scores
    results.add(record)
    return record
