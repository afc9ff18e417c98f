"""The inversion experiment: attack success against update type and defences.

``privfed attack inversion CONFIG.toml --out DIR`` reads an ``[inversion]``
table (see ``configs/inversion.toml``), runs one attack per configuration and
writes, in ``DIR``:

- ``inversion_results.json``: a list of records, one per configuration
  (``modality``, ``target``, ``rank``, ``batch_size``, ``noise_multiplier``,
  ``secagg_clients``, ``quant_bits``, and ``token_f1``/``rouge1``/``rouge2``
  for text or ``psnr_db``/``ssim``/``label_accuracy`` for images), rewritten
  atomically after every record so an interrupted sweep resumes where it
  stopped (finished records are kept, keyed by their configuration);
- ``inversion_results.csv`` and ``inversion_results.md``;
- ``inversion.toml`` (the sweep as run; ``privfed reproduce DIR`` re-runs it) and
  ``provenance.json`` (:mod:`attacks.provenance`);
- ``image_reconstructions.png`` (originals over reconstructions) and
  ``inversion_vs_defence.png`` (recovery against batch size, DP noise,
  SecAgg cohort and quantization bits).

``design = "axes"`` varies one knob at a time from the baseline (the first
value of every list); ``design = "grid"`` runs the full product.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attacks.driver import ResultsFile
from attacks.inversion.text import Target, text_span_attack
from attacks.inversion.victim import TextBatch, TextVictim
from attacks.metrics import rouge_scores, token_recovery
from attacks.provenance import attack_provenance, save_attack_config, settings_table, write_provenance
from privfed import ConfigError, load_dataset
from privfed.config import check_section, config_field, read_config_file, section_from_dict
from privfed.experiments import atomic_write_text
from privfed.rng import generator

__all__ = [
    "ImageSweep",
    "InversionSweep",
    "TextSweep",
    "load_inversion_config",
    "run_inversion_sweep",
    "text_records",
]

KEY_FIELDS = ("modality", "target", "rank", "batch_size", "noise_multiplier", "secagg_clients", "quant_bits", "trial")


_TARGETS = ("full", "lora", "ffa_lora")


@dataclasses.dataclass(frozen=True)
class TextSweep:
    """Text side: which model, data and grid (``[inversion.text]``)."""

    model: str = config_field("minilm", text=True)
    dataset: str = config_field("tweets", text=True)
    max_length: int = config_field(32, ge=8, le=512)
    targets: tuple[str, ...] = config_field(_TARGETS)
    ranks: tuple[int, ...] = config_field((8, 4, 64))
    batch_sizes: tuple[int, ...] = config_field((1, 4, 16))
    noise_multipliers: tuple[float, ...] = config_field((0.0, 0.1, 1.0))
    secagg_clients: tuple[int, ...] = config_field((1, 8))
    quant_bits: tuple[int, ...] = config_field((0, 16, 8))
    clip_norm: float = config_field(1.0, gt=0.0)
    learning_rate: float = config_field(0.1, gt=0.0)
    trials: int = config_field(1, ge=1)

    def __post_init__(self) -> None:
        check_section(self, prefix="inversion.text")
        _check_grid(self, "inversion.text")
        _check_list("inversion.text.targets", self.targets, lambda t: t in _TARGETS, f"each one of {_TARGETS}")
        _check_list("inversion.text.ranks", self.ranks, lambda r: 1 <= r <= 1024, "integers 1..1024")


@dataclasses.dataclass(frozen=True)
class ImageSweep:
    """Image side: which vision model and attack on sklearn digits (``[inversion.image]``)."""

    model: str = config_field("digits_cnn", text=True)
    attack: str = config_field("inverting_gradients", choices=lambda: ("dlg", "inverting_gradients"))
    batch_sizes: tuple[int, ...] = config_field((1, 4))
    noise_multipliers: tuple[float, ...] = config_field((0.0, 0.1, 1.0))
    secagg_clients: tuple[int, ...] = config_field((1, 8))
    quant_bits: tuple[int, ...] = config_field((0, 16, 8))
    clip_norm: float = config_field(1.0, gt=0.0)
    learning_rate: float = config_field(0.1, gt=0.0)
    steps: int = config_field(300, ge=1)
    restarts: int = config_field(2, ge=1)
    trials: int = config_field(1, ge=1)

    def __post_init__(self) -> None:
        check_section(self, prefix="inversion.image")
        _check_grid(self, "inversion.image")


@dataclasses.dataclass(frozen=True)
class InversionSweep:
    """The whole sweep (``[inversion]`` table)."""

    seed: int = config_field(0, ge=0, lt=2**63)
    design: str = config_field("axes", choices=lambda: ("axes", "grid"))
    modalities: tuple[str, ...] = config_field(("text", "image"))
    text: TextSweep = dataclasses.field(default_factory=TextSweep)
    image: ImageSweep = dataclasses.field(default_factory=ImageSweep)

    def __post_init__(self) -> None:
        check_section(self, prefix="inversion")
        modalities = ("text", "image")
        _check_list("inversion.modalities", self.modalities, lambda m: m in modalities, f"each one of {modalities}")


def _check_list(path: str, values: Sequence[Any], ok: Callable[[Any], bool], allowed: str) -> None:
    """A list-valued setting: non-empty, every item allowed (one-line ``ConfigError`` otherwise)."""
    if not values or not all(ok(v) for v in values):
        raise ConfigError(f"{path} must be a non-empty list of {allowed}; got {list(values)}")


def _check_grid(side: TextSweep | ImageSweep, where: str) -> None:
    _check_list(f"{where}.batch_sizes", side.batch_sizes, lambda b: 1 <= b <= 256, "integers 1..256")
    _check_list(f"{where}.noise_multipliers", side.noise_multipliers, lambda z: z >= 0, "numbers >= 0")
    _check_list(f"{where}.secagg_clients", side.secagg_clients, lambda n: 1 <= n <= 64, "integers 1..64")
    _check_list(f"{where}.quant_bits", side.quant_bits, lambda b: b == 0 or 8 <= b <= 62, "0 (float) or 8..62")


def load_inversion_config(path: str | Path) -> InversionSweep:
    """Read and validate the ``[inversion]`` table of a TOML file with the config's field rules.

    Raises:
        ConfigError: unreadable file, unknown keys, or values out of range (one line naming the key).
    """
    raw = read_config_file(path)  # one-line ConfigError: missing, not UTF-8, not TOML, too deep, empty
    table = raw.get("inversion")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: needs an [inversion] table")
    return section_from_dict(InversionSweep, table, prefix="inversion")


def _points(
    design: str, batch_sizes: Sequence[int], noises: Sequence[float], cohorts: Sequence[int], bits: Sequence[int]
) -> list[tuple[int, float, int, int]]:
    """(batch_size, noise, secagg_clients, quant_bits) points of the design."""
    if design == "grid":
        return list(itertools.product(batch_sizes, noises, cohorts, bits))
    base = (batch_sizes[0], noises[0], cohorts[0], bits[0])
    points = [(b, base[1], base[2], base[3]) for b in batch_sizes]
    points += [(base[0], z, base[2], base[3]) for z in noises[1:]]
    points += [(base[0], base[1], c, base[3]) for c in cohorts[1:]]
    points += [(base[0], base[1], base[2], q) for q in bits[1:]]
    return list(dict.fromkeys(points))


def new_record(
    modality: str, target: str, rank: int, batch_size: int, noise: float, cohort: int, bits: int, trial: int
) -> dict[str, Any]:
    """A result record holding just its configuration (the ``KEY_FIELDS``)."""
    values = (modality, target, rank, batch_size, float(noise), cohort, bits, trial)
    return dict(zip(KEY_FIELDS, values, strict=True))


def _key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record[k] for k in KEY_FIELDS)


def _rng(seed: int, *path: int | str) -> np.random.Generator:
    """The sweep's generator for one purpose: :func:`privfed.rng.generator` under ``"inversion"``."""
    return generator(seed, "inversion", *path)


def _best_match(reference: str, predictions: Sequence[str]) -> str:
    return max(predictions, key=lambda p: rouge_scores([reference], [p])["rouge1"])


def _chance_f1(truth: Sequence[int], prior: Counter[int]) -> float:
    """F1 of an attacker who ignores the update and guesses the most frequent public tokens."""
    guess = [t for t, _ in prior.most_common(len(truth))]
    return token_recovery(truth, guess).f1


def text_records(sweep: InversionSweep, done: Mapping[Hashable, dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Run (or reuse from ``done``) every text configuration; yields records in order."""
    cfg = sweep.text
    data = load_dataset(cfg.dataset)
    if data.texts is None:
        raise ConfigError(f"inversion.text.dataset {cfg.dataset!r} is not a text dataset")
    victim = TextVictim(cfg.model, num_labels=data.num_classes, max_length=cfg.max_length, seed=sweep.seed)
    order = _rng(sweep.seed, "text-order").permutation(len(data.texts))
    # Public prior for the chance baseline: texts never used as client batches.
    prior: Counter[int] = Counter()
    for i in order[-2000:]:
        prior.update(victim.tokenize([data.texts[i]], [0]).content_tokens(victim.special_ids))
    variants: list[tuple[Target, int]] = []
    for target in cfg.targets:
        if target == "full":
            variants.append(("full", 0))
        else:
            variants += [(target, r) for r in cfg.ranks]  # type: ignore[misc]
    points = _points(sweep.design, cfg.batch_sizes, cfg.noise_multipliers, cfg.secagg_clients, cfg.quant_bits)
    for target, rank in variants:
        model: Any = None
        for trial in range(cfg.trials):
            for batch_size, noise, cohort, bits in points:
                record = new_record("text", target, rank, batch_size, noise, cohort, bits, trial)
                if _key(record) in done:
                    yield done[_key(record)]
                    continue
                if model is None:
                    model = victim.model(target, rank)
                start = time.perf_counter()
                # Client c of trial t always holds the same texts, whatever else varies.
                batches: list[TextBatch] = []
                for c in range(cohort):
                    offset = (trial * 64 + c) * 16
                    rows = order[offset : offset + batch_size]
                    batches.append(victim.tokenize([data.texts[i] for i in rows], data.labels[rows].tolist()))
                observation = victim.observe(
                    model,
                    batches,
                    learning_rate=cfg.learning_rate,
                    noise_multiplier=noise,
                    clip_norm=cfg.clip_norm,
                    quant_bits=bits,
                    rng=_rng(sweep.seed, "text-noise", target, rank, batch_size, str(noise), cohort, bits, trial),
                )
                truth = batches[0].content_tokens(victim.special_ids)
                result = text_span_attack(
                    observation,
                    model,
                    target=target,
                    max_positions=int(batches[0].input_ids.shape[1]),
                    batch_size=batch_size * cohort,
                    guesses=len(truth) + batch_size * 2,  # told the token count (incl. [CLS]/[SEP])
                    exclude_tokens=[victim.tokenizer.pad_token_id],
                )
                special = set(victim.special_ids)
                recovered = [t for t in result.tokens if t not in special]
                scores = token_recovery(truth, recovered)
                references = [
                    victim.decode(ids[mask.astype(bool)].tolist())
                    for ids, mask in zip(batches[0].input_ids, batches[0].attention_mask, strict=True)
                ]
                predictions = [victim.decode(seq) for seq in result.sequences] or [""]
                # Each reference is scored against its best-matching reconstructed sequence.
                best = [_best_match(ref, predictions) for ref in references]
                rouge = rouge_scores(references, best)
                record.update(
                    token_precision=scores.precision,
                    token_recall=scores.recall,
                    token_f1=scores.f1,
                    rouge1=rouge["rouge1"],
                    rouge2=rouge["rouge2"],
                    chance_token_f1=_chance_f1(truth, prior),
                    num_tokens=len(truth),
                    span_rank=result.span_rank,
                    span_saturated=result.saturated,
                    example_reference=references[0],
                    example_reconstruction=best[0],
                    seconds=round(time.perf_counter() - start, 2),
                )
                yield record


COLUMNS = (
    "modality",
    "target",
    "rank",
    "batch_size",
    "noise_multiplier",
    "secagg_clients",
    "quant_bits",
    "trial",
    "token_f1",
    "rouge1",
    "rouge2",
    "chance_token_f1",
    "psnr_db",
    "ssim",
    "label_accuracy",
    "chance_psnr_db",
)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def write_tables(records: Sequence[Mapping[str, Any]], out: Path) -> None:
    """``inversion_results.csv`` and ``.md`` (one row per record, the main columns)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    for r in records:
        writer.writerow([_fmt(r.get(c)) for c in COLUMNS])
    atomic_write_text(out / "inversion_results.csv", buffer.getvalue())
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in records]
    atomic_write_text(out / "inversion_results.md", "\n".join(lines) + "\n")


def plot_defence_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One panel per knob (batch size, noise, SecAgg cohort, bits): text token F1 and image PSNR/50 dB.

    Written with :mod:`privfed.plotting` (PNG, PDF and SVG), one legend beside the last panel.
    """
    from privfed.plotting import figure, save

    knobs = (
        ("batch_size", "batch size"),
        ("noise_multiplier", "DP noise multiplier σ"),
        ("secagg_clients", "clients in the SecAgg sum"),
        ("quant_bits", "upload bits (32 = float)"),
    )
    baseline = {k: Counter(r[k] for r in records).most_common(1)[0][0] for k, _ in knobs} if records else {}
    fig, axes = figure(ncols=4, width=11.0, height=2.8)
    handles: list[Any] = []
    labels: list[str] = []
    for ax, (knob, label) in zip(axes, knobs, strict=True):
        series: dict[str, list[tuple[float, float]]] = {}
        for r in records:
            if any(r[k] != baseline[k] for k, _ in knobs if k != knob):
                continue
            if r["modality"] == "text":
                name = r["target"] + (f" r={r['rank']}" if r["rank"] else "")
                y = r["token_f1"]
            else:
                name, y = f"image {r['target']} (PSNR/50 dB)", r["psnr_db"] / 50.0
            x = 32.0 if knob == "quant_bits" and r[knob] == 0 else float(r[knob])
            series.setdefault(name, []).append((x, float(y)))
        for name, pts in sorted(series.items()):
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [float(np.mean([q[1] for q in pts if q[0] == x])) for x in xs]
            (line,) = ax.plot(xs, ys, marker="o", label=name)
            if name not in labels:
                handles.append(line)
                labels.append(name)
        ax.set_xlabel(label)
        ax.set_ylim(-0.02, 1.05)
        if knob in ("batch_size", "secagg_clients"):
            ax.set_xscale("log", base=2)
        if knob == "noise_multiplier":
            ax.set_xscale("symlog", linthresh=0.1)
    axes[0].set_ylabel("token F1 (text) / PSNR÷50 (image)")
    if handles:  # beside the last panel, outside every axes: it never hides a line
        axes[-1].legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    save(fig, path)


def run_inversion_sweep(
    sweep: InversionSweep,
    out: Path,
    *,
    progress: Callable[[str], None] | None = None,
    image_records: Callable[..., Iterator[dict[str, Any]]] | None = None,
) -> list[dict[str, Any]]:
    """Run the sweep into ``out`` (created if needed; finished records are reused).

    Also writes the sweep it was run from as ``inversion.toml`` (``privfed attack inversion
    inversion.toml`` re-runs it) and ``provenance.json`` (:mod:`attacks.provenance`; the
    result file stays a list of records).
    """
    out.mkdir(parents=True, exist_ok=True)
    table = settings_table(sweep)
    save_attack_config(out, kind="inversion", table=table, config=None)
    results = ResultsFile(out / "inversion_results.json", key=_key)
    sources: list[Iterator[dict[str, Any]]] = []
    if "text" in sweep.modalities:
        sources.append(text_records(sweep, results.done))
    if "image" in sweep.modalities:
        if image_records is None:
            from attacks.inversion.image_sweep import image_records as default_image_records

            image_records = default_image_records
        sources.append(image_records(sweep, results.done, out))
    for source in sources:
        for record in source:
            results.add(record)
            if progress is not None:
                metric = (
                    f"token_f1={record['token_f1']:.3f}"
                    if record["modality"] == "text"
                    else f"psnr={record['psnr_db']:.1f}dB"
                )
                keys = ", ".join(f"{k}={record[k]}" for k in KEY_FIELDS[1:-1])
                progress(f"[{len(results.records)}] {record['modality']} {keys}: {metric}")
    records = results.close()
    write_tables(records, out)
    # The attacks run on the CPU (attacks.inversion.victim); no federation, so no run directories.
    write_provenance(out, attack_provenance(out, device="cpu", table=table, config=None))
    if records:
        plot_defence_curves(records, out / "inversion_vs_defence.png")
    return records
