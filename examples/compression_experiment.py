"""Compressed uploads and distributed DP: held-out accuracy against uplink bytes, one knob at a time.

    python examples/compression_experiment.py --out runs/compression        # full (MiniLM, CPU; see below)
    python examples/compression_experiment.py --quick --out /tmp/cq         # tiny-bert smoke run, about 3 minutes

Two base configs (issue 16):

* ``configs/demo.toml`` (MiniLM + LoRA r=8 on BBC News, 10 clients, 5 per round, no DP; run
  at 4 rounds and 64 tokens to fit the hour, ``--as-configured`` for its 8 rounds at 128):
  the uncompressed federated LoRA run ``fp32``, then one knob at a time: plain uploads with
  rotation and ``compression.bits`` in {2, 4, 8, 16, 32}; SecAgg+ with rotation at every
  ``secagg.bits`` in that list that holds the cohort (``2^(b-1) - 1 >= clients_per_round``),
  SecAgg+ at 32 bits without rotation, and their reference ``fp32-uniform`` (SecAgg needs
  ``server.weighting = "uniform"``: the server sees only the sum); shared-seed sparsity 0.5
  and 0.9 (float32 values); FFA-LoRA instead of LoRA; LoRA rank 2 and 1 instead of 8 (alpha / rank
  kept at 2); and labelled *combinations*, the only settings that turn more than one knob: FFA-LoRA
  + rotation + sparsity 0.9 at 8 and 4 bits, and rank 2 and 1 each with rotation at 4 bits.
* ``configs/compression_user_dp.toml`` (2,000 virtual clients on tweets, Poisson cohorts of
  50, user-level DP at ε = 8; run at 5 of its 10 rounds, ``--as-configured`` for all): no DP;
  central DP-FedAvg (plain uploads); central DP-FedAvg under SecAgg+ at 16 bits with rotation;
  distributed discrete Gaussian and Skellam at 16 bits with rotation (the clients add the
  noise; the server adds none).

Per-coordinate range of the demo's quantized settings (no DP, so no known L2 clip): ``R = 4 ·
2u / sqrt(d')`` with ``u`` the largest round update norm of the ``fp32`` run (a proxy for a
client delta's norm, doubled for the averaging) and ``d'`` its padded adapter dimension, the
rule that ``privfed.compression.coordinate_range`` applies under user-level DP with the clip C.
Under user-level DP the server derives the range from C itself.

Writes ``<out>/compression_results.json``: one record per setting (held-out accuracy,
``uplink_bytes_per_client_round``, ``uplink_ratio_vs_fp32_model``, ε, ...) and the headline
numbers ``best_uplink_ratio_within_1pt`` (smallest uplink ÷ fp32 base model among the demo
settings within 1 accuracy point of ``fp32``; target ≤ 1/10,000) and
``ddp_gap_vs_central_points`` (central DP-FedAvg minus the best distributed mechanism at ≤ 16
bits, accuracy points at ε = 8; target ≤ 1), and ``<out>/compression_results.md`` (the table).
Every setting runs in ``<out>/<base>/<name>/``; finished runs are reused and interrupted
ones resumed, so the command can be re-run after a stop.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privfed import load_config
from privfed.compression import COORDINATE_RANGE_STDDEVS, padded_dim
from privfed.config import ExperimentConfig, config_to_dict, replace_paths
from privfed.errors import ConfigError
from privfed.experiments import run_or_resume

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.toml"
COHORT_CONFIG = REPO / "configs" / "compression_user_dp.toml"
BITS = (2, 4, 8, 16, 32)
SPARSITIES = (0.5, 0.9)
RANKS = (2, 1)
DISTRIBUTED = ("distributed_gaussian", "skellam")
WITHIN_POINTS = 1.0
RANGE = "<range>"  # placeholder for the demo's per-coordinate range R, known once fp32 has run

# The full run's budget (about 40 minutes on 2 idle cores, measured: docs/compression.md): the
# demo's 21 runs at half the rounds and half the sequence length of configs/demo.toml (68-82 s
# each), the cohort's 5 runs at 5 of its 10 rounds (about 140 s each). --as-configured runs both
# configs unchanged (about three times as long: the demo trains 4x as much).
FULL = {
    "demo": {"server.rounds": 4, "model.max_length": 64},
    "cohort": {"server.rounds": 5, "eval.every": 5},
}

QUICK = {
    "demo": {
        "model.name": "tiny-bert",
        "model.device": "cpu",
        "model.max_length": 32,
        "data.max_train_examples": 400,
        "data.max_eval_examples": 60,
        "partition.min_examples_per_client": 5,
        "server.rounds": 2,
        "client.local_steps": 2,
        "eval.every": 2,
    },
    "cohort": {
        "model.name": "tiny-bert",
        "model.device": "cpu",
        "data.name": "bbc_news",
        "data.max_train_examples": 300,
        "data.max_eval_examples": 60,
        "partition.num_clients": 30,
        "server.clients_per_round": 5,
        "server.rounds": 2,
        "eval.every": 2,
    },
}


@dataclass(frozen=True)
class Setting:
    """One run of the experiment: a base config and the dotted keys it changes."""

    name: str
    group: str  # which knob: baseline, bits, secagg_bits, secagg, sparsity, adapter, combined, dp
    base: str  # "demo" or "cohort"
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def resolved(self, coordinate_range: float) -> dict[str, Any]:
        return {k: (coordinate_range if v == RANGE else v) for k, v in self.overrides.items()}


def demo_settings(clients_per_round: int) -> list[Setting]:
    """The demo's knobs, one at a time (plus the two labelled combinations)."""
    rotated = {"compression.rotation": True}
    settings = [Setting("fp32", "baseline", "demo")]
    settings += [
        Setting(f"plain-{b}bit", "bits", "demo", {**rotated, "compression.bits": b, "compression.clip": RANGE})
        for b in BITS
    ]
    # SecAgg needs uniform weighting (the server sees only the sum): its reference is fp32-uniform.
    uniform = {"server.weighting": "uniform"}
    settings.append(Setting("fp32-uniform", "secagg", "demo", uniform))
    settings.append(
        Setting("secagg-32bit-norotation", "secagg", "demo", {**uniform, "secagg.enabled": True, "secagg.bits": 32})
    )
    settings += [
        Setting(
            f"secagg-{b}bit",
            "secagg_bits",
            "demo",
            {**uniform, **rotated, "secagg.enabled": True, "secagg.bits": b, "secagg.clip": RANGE},
        )
        for b in BITS
        if 2 ** (b - 1) - 1 >= clients_per_round
    ]
    settings += [Setting(f"sparsity-{s:g}", "sparsity", "demo", {"compression.sparsity": s}) for s in SPARSITIES]
    settings.append(Setting("ffa-lora", "adapter", "demo", {"adapter.method": "ffa_lora"}))
    # A smaller LoRA rank sends fewer coordinates; alpha / rank stays the demo's 2 (the same scaling).
    for rank in RANKS:
        lora = {"adapter.lora.rank": rank, "adapter.lora.alpha": 2 * rank}
        settings.append(Setting(f"lora-r{rank}", "rank", "demo", lora))
        settings.append(
            Setting(
                f"lora-r{rank}+4bit",
                "combined",
                "demo",
                {**lora, **rotated, "compression.bits": 4, "compression.clip": RANGE},
            )
        )
    settings += [
        Setting(
            f"ffa-lora+sparsity-0.9+{b}bit",
            "combined",
            "demo",
            {
                "adapter.method": "ffa_lora",
                **rotated,
                "compression.sparsity": 0.9,
                "compression.bits": b,
                "compression.clip": RANGE,
            },
        )
        for b in (8, 4)
    ]
    return settings


def cohort_settings() -> list[Setting]:
    """Central against distributed user-level DP at the config's ε, on the many-client cohort."""
    secure16 = {"secagg.enabled": True, "secagg.bits": 16, "compression.rotation": True}
    return [
        Setting("nodp", "dp", "cohort", {"privacy.mode": "none"}),
        Setting("central", "dp", "cohort", {"privacy.user.mechanism": "central"}),
        # 2,000 summands leave 16 codes per client at 16 bits: the loss range must be small enough
        # for the unclipped bit (secagg.loss_clip <= 7).
        Setting("central-secagg-16bit", "dp", "cohort", {**secure16, "secagg.loss_clip": 4.0}),
        *(Setting(f"{m}-16bit", "dp", "cohort", {**secure16, "privacy.user.mechanism": m}) for m in DISTRIBUTED),
    ]


def demo_coordinate_range(run_dir: Path, summary: Mapping[str, Any]) -> float:
    """``R = 4 · 2u / sqrt(d')`` from the fp32 run: ``u`` its largest round update norm."""
    norms = [
        float(json.loads(line)["update_norm"])
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    u = max(norms) if norms else 0.0
    if not u > 0:
        raise ConfigError(f"the fp32 run in {str(run_dir)!r} recorded no positive update_norm; cannot derive a range")
    return COORDINATE_RANGE_STDDEVS * 2 * u / math.sqrt(padded_dim(int(summary["trainable_params"])))


def _mechanism(config: ExperimentConfig) -> str | None:
    return config.privacy.user.mechanism if config.privacy.user_level else None


def _bits(config: ExperimentConfig) -> int:
    """Code width per uploaded coordinate: secagg.bits, compression.bits, or 32 (float32)."""
    if config.secagg.enabled:
        return config.secagg.bits
    return config.compression.bits or 32


def make_record(
    setting: Setting, config: ExperimentConfig, summary: Mapping[str, Any], run_dir: Path, out: Path
) -> dict[str, Any]:
    return {
        "name": setting.name,
        "group": setting.group,
        "base": setting.base,
        "overrides": {k: config_value(config, k) for k in setting.overrides},
        "adapter_method": config.adapter.method,
        "bits_per_coordinate": _bits(config),
        "rotation": config.compression.rotation,
        "sparsity": config.compression.sparsity,
        "secagg": config.secagg.enabled,
        "mechanism": _mechanism(config),
        "final_eval_accuracy": summary.get("final_eval_accuracy"),
        "uplink_bytes_per_client_round": summary.get("uplink_bytes_per_client_round"),
        "uplink_ratio_vs_fp32_model": summary.get("uplink_ratio_vs_fp32_model"),
        "epsilon": summary.get("epsilon_user"),
        "trainable_params": summary.get("trainable_params"),
        "base_params": summary.get("base_params"),
        "seconds_total": summary.get("seconds_total"),
        "run_dir": str(run_dir.relative_to(out)),
    }


def config_value(config: ExperimentConfig, dotted: str) -> Any:
    """A dotted key's resolved value, as the config file spells it (``adapter.lora.rank``)."""
    node: Any = config_to_dict(config)
    for part in dotted.split("."):
        node = node[part]
    return node


def headline(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The two headline numbers, computed from the records alone.

    ``best_uplink_ratio_within_1pt``: the smallest ``uplink_ratio_vs_fp32_model`` among the demo
    records whose accuracy is at least ``fp32``'s minus 1 point (``fp32`` itself counts).
    ``ddp_gap_vs_central_points``: 100 × (accuracy of ``central`` − the best accuracy among the
    distributed-mechanism records at ≤ 16 bits), on the cohort config; ``None`` when missing.
    """
    by_name = {(r["base"], r["name"]): r for r in records}
    result: dict[str, Any] = {
        "reference_accuracy": None,
        "best_uplink_ratio_within_1pt": None,
        "best_setting_within_1pt": None,
        "ddp_gap_vs_central_points": None,
        "ddp_gap_by_mechanism_points": {},
        "central_gap_vs_nodp_points": None,
    }
    reference = by_name.get(("demo", "fp32"))
    if reference is not None and reference["final_eval_accuracy"] is not None:
        floor = reference["final_eval_accuracy"] - WITHIN_POINTS / 100
        within = [
            r
            for r in records
            if r["base"] == "demo"
            and r["final_eval_accuracy"] is not None
            and r["uplink_ratio_vs_fp32_model"] is not None
            and r["final_eval_accuracy"] >= floor
        ]
        best = min(within, key=lambda r: r["uplink_ratio_vs_fp32_model"])
        result.update(
            reference_accuracy=reference["final_eval_accuracy"],
            best_uplink_ratio_within_1pt=best["uplink_ratio_vs_fp32_model"],
            best_setting_within_1pt=best["name"],
        )
    central = by_name.get(("cohort", "central"))
    if central is not None and central["final_eval_accuracy"] is not None:
        gaps = {
            r["mechanism"]: 100 * (central["final_eval_accuracy"] - r["final_eval_accuracy"])
            for r in records
            if r["base"] == "cohort"
            and r["mechanism"] in DISTRIBUTED
            and r["bits_per_coordinate"] <= 16
            and r["final_eval_accuracy"] is not None
        }
        result["ddp_gap_by_mechanism_points"] = gaps
        result["ddp_gap_vs_central_points"] = min(gaps.values()) if gaps else None
        nodp = by_name.get(("cohort", "nodp"))
        if nodp is not None and nodp["final_eval_accuracy"] is not None:
            result["central_gap_vs_nodp_points"] = 100 * (nodp["final_eval_accuracy"] - central["final_eval_accuracy"])
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(results: Mapping[str, Any]) -> str:
    columns = (
        ("name", "setting"),
        ("group", "knob"),
        ("adapter_method", "adapter"),
        ("bits_per_coordinate", "bits"),
        ("rotation", "rotation"),
        ("sparsity", "sparsity"),
        ("secagg", "SecAgg"),
        ("mechanism", "DP"),
        ("final_eval_accuracy", "accuracy"),
        ("uplink_bytes_per_client_round", "uplink B/client/round"),
        ("uplink_ratio_vs_fp32_model", "uplink ÷ fp32 model"),
        ("epsilon", "ε"),
    )
    lines = []
    for base, title in (("demo", "configs/demo.toml (no DP)"), ("cohort", "configs/compression_user_dp.toml")):
        rows = [r for r in results["records"] if r["base"] == base]
        lines += [f"### {title}", "", "| " + " | ".join(t for _, t in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r[k]) for k, _ in columns) + " |" for r in rows]
        lines.append("")
    lines.append(
        f"best_uplink_ratio_within_1pt: {_cell(results['best_uplink_ratio_within_1pt'])} "
        f"({_cell(results['best_setting_within_1pt'])}; fp32 accuracy {_cell(results['reference_accuracy'])}; "
        "target <= 1e-4)"
    )
    lines.append(
        f"ddp_gap_vs_central_points: {_cell(results['ddp_gap_vs_central_points'])} "
        f"(by mechanism: {', '.join(f'{k} {v:.3g}' for k, v in results['ddp_gap_by_mechanism_points'].items())}; "
        f"central vs no DP: {_cell(results['central_gap_vs_nodp_points'])} points; target <= 1)"
    )
    return "\n".join(lines) + "\n"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (the JSON is committed)."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO)) if resolved.is_relative_to(REPO) else str(path)


def run_experiment(
    out: Path,
    *,
    quick: bool = False,
    demo_config: Path = DEMO_CONFIG,
    cohort_config: Path = COHORT_CONFIG,
    only: set[str] | None = None,
    as_configured: bool = False,
) -> dict[str, Any]:
    """Run (or reuse) every setting and write the JSON and markdown results; returns the JSON object."""
    bases = {"demo": load_config(demo_config), "cohort": load_config(cohort_config)}
    if quick or not as_configured:
        bases = {k: replace_paths(v, (QUICK if quick else FULL)[k]) for k, v in bases.items()}
    settings = demo_settings(bases["demo"].server.clients_per_round) + cohort_settings()
    if only is not None:
        settings = [s for s in settings if s.name in only or s.name == "fp32"]
    out.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    coordinate_range: float | None = None
    started = time.monotonic()
    for index, setting in enumerate(settings, start=1):
        run_dir = out / setting.base / setting.name
        if coordinate_range is None and RANGE in setting.overrides.values():
            raise ConfigError("fp32 must run before the quantized demo settings")  # pragma: no cover - fixed order
        try:
            config = replace_paths(bases[setting.base], setting.resolved(coordinate_range or 0.0))
            config = replace_paths(config, {"name": f"{bases[setting.base].name}-{setting.name}"})
        except ConfigError as exc:
            skipped.append({"name": setting.name, "base": setting.base, "reason": str(exc)})
            print(f"[{index}/{len(settings)}] {setting.base}/{setting.name}: skipped ({exc})", flush=True)
            continue
        reused = (run_dir / "summary.json").exists()
        tick = time.monotonic()
        summary = run_or_resume(config, run_dir, quiet=True)
        if setting.name == "fp32":
            coordinate_range = demo_coordinate_range(run_dir, summary)
        records.append(make_record(setting, config, summary, run_dir, out))
        r = records[-1]
        print(
            f"[{index}/{len(settings)}] {setting.base}/{setting.name}: accuracy {_cell(r['final_eval_accuracy'])}, "
            f"uplink {_cell(r['uplink_bytes_per_client_round'])} B/client/round "
            f"(ratio {_cell(r['uplink_ratio_vs_fp32_model'])}), epsilon {_cell(r['epsilon'])}, "
            f"{'reused' if reused else f'{time.monotonic() - tick:.0f} s'}",
            flush=True,
        )
    results: dict[str, Any] = {
        "experiment": "compression (issue 16)",
        "quick": quick,
        "configs": {"demo": _shown(demo_config), "cohort": _shown(cohort_config)},
        "config_overrides": {} if as_configured and not quick else (QUICK if quick else FULL),
        "demo_coordinate_range": coordinate_range,
        "range_rule": f"R = {COORDINATE_RANGE_STDDEVS:g} * 2 * max update_norm(fp32) / sqrt(padded trainable_params)",
        "within_points": WITHIN_POINTS,
        "records": records,
        "skipped": skipped,
        **headline(records),
        "seconds_this_invocation": time.monotonic() - started,
    }
    (out / "compression_results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out / "compression_results.md").write_text(markdown(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="results and run directories (default runs/compression)")
    parser.add_argument("--quick", action="store_true", help="tiny-bert, tiny data, 2 rounds: a smoke run")
    parser.add_argument("--demo-config", type=Path, default=DEMO_CONFIG)
    parser.add_argument("--cohort-config", type=Path, default=COHORT_CONFIG)
    parser.add_argument("--only", default=None, help="comma-separated setting names (fp32 always runs)")
    parser.add_argument(
        "--as-configured", action="store_true", help="configs unchanged (demo 8 rounds, 128 tokens; cohort 10 rounds)"
    )
    args = parser.parse_args()
    out = args.out or Path("runs") / ("compression-quick" if args.quick else "compression")
    only = None if args.only is None else set(args.only.split(","))
    results = run_experiment(
        out,
        quick=args.quick,
        demo_config=args.demo_config,
        cohort_config=args.cohort_config,
        only=only,
        as_configured=args.as_configured,
    )
    print((out / "compression_results.md").read_text(), end="")
    print(f"wrote {out / 'compression_results.json'}")
    del results


if __name__ == "__main__":
    main()
