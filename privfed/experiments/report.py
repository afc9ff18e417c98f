"""``privfed report DIR... --out report.html``: one self-contained HTML file from saved results.

Reads only what runs, sweeps and attack/audit drivers wrote (``config.resolved.toml``,
``metrics.jsonl``, ``summary.json``, ``sweep.json``, ``*_results.json``,
``*_scores.npz``): nothing is re-run or re-trained. Every figure is drawn here
with :mod:`privfed.plotting` and embedded as a base64 ``data:`` URI; the file
loads no script, style or font from anywhere, so it opens offline and can be
mailed or archived as one file.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privfed.errors import DataError
from privfed.experiments.run_dir import RunDirectory, atomic_write_text

__all__ = ["build_report", "write_report"]

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222;
line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{font-size:1.05em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
pre{background:#f7f7f7;padding:.7em;overflow-x:auto;font-size:.8em}.note{color:#555;font-size:.9em}
.ok{color:#176117;font-weight:bold}.bad{color:#a11;font-weight:bold}
"""


@dataclass
class _Run:
    path: Path
    label: str
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    config_text: str


@dataclass
class _Sweep:
    path: Path
    manifest: dict[str, Any]
    runs: list[_Run] = field(default_factory=list)


def _read_run(path: Path, label: str) -> _Run:
    run = RunDirectory(path)
    summary = dict(run.read_summary()) if (path / RunDirectory.SUMMARY).exists() else {}
    return _Run(path, label, summary, run.read_metrics(), (path / RunDirectory.CONFIG).read_text(encoding="utf-8"))


def _png(fig: Any) -> str:
    from privfed.plotting import save

    with tempfile.TemporaryDirectory() as tmp:
        path = save(fig, Path(tmp) / "figure.png", formats=("png",))[0]
        return base64.b64encode(path.read_bytes()).decode("ascii")


def _img(data: str, alt: str) -> str:
    """An embedded PNG shown at its size in print points (drawn at 200 dpi, shown at 130 px per inch)."""
    raw = base64.b64decode(data[:44])
    width = int.from_bytes(raw[16:20], "big") if raw[:8] == b"\x89PNG\r\n\x1a\n" else 0
    size = f' width="{width * 13 // 20}"' if width else ""
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"{size}>'


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4g}"
    return html.escape(str(value))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "".join(out) + "</table>"


def _summary_table(runs: Sequence[_Run]) -> str:
    head = ["run", "seed", "rounds", "accuracy", "loss", "ε user", "ε record (max)", "δ", "bytes up", "stopped"]
    rows = [
        [
            r.label,
            r.summary.get("seed"),
            r.summary.get("rounds"),
            r.summary.get("final_eval_accuracy"),
            r.summary.get("final_eval_loss"),
            r.summary.get("epsilon_user"),
            r.summary.get("epsilon_sample_max"),
            r.summary.get("delta") if r.summary.get("privacy_mode") not in (None, "none") else None,
            r.summary.get("bytes_up_total"),
            r.summary.get("stopped"),
        ]
        for r in runs
    ]
    return _table(head, rows)


def _rounds_figure(groups: Mapping[str, Sequence[_Run]], *, delta_unit: str) -> str:
    """Accuracy, loss, ε and bytes up per round; one line per group (the mean over its runs, i.e. seeds)."""
    from matplotlib.ticker import MaxNLocator

    from privfed.plotting import figure, place_legend

    fig, axes = figure(ncols=2, nrows=2, width=9.0, height=5.6)
    panels = [
        ("eval_accuracy", "held-out accuracy"),
        ("eval_loss", "held-out loss (nats)"),
        ("epsilon_user", f"ε spent ({delta_unit})"),
        ("bytes_up", "bytes up per round (B)"),
    ]
    for ax, (key, ylabel) in zip(axes.flat, panels, strict=True):
        for i, (label, runs) in enumerate(groups.items()):
            by_round: dict[int, list[float]] = {}
            for run in runs:
                for record in run.metrics:
                    value = record.get(key)
                    if key == "epsilon_user" and value is None:
                        value = record.get("epsilon_sample_max")
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        by_round.setdefault(int(record["round"]), []).append(float(value))
            if by_round:
                xs = sorted(by_round)
                ax.plot(xs, [float(np.mean(by_round[x])) for x in xs], marker=".", color=f"C{i % 10}", label=label)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    place_legend(axes.flat[1])
    return _png(fig)


def _runs_curve(runs: Sequence[_Run]) -> str | None:
    """Accuracy against the ε each run spent (standalone runs); non-private runs as dashed lines."""
    from privfed.plotting import epsilon_label, figure, place_legend

    points = [
        (float(r.summary["epsilon_user"] or r.summary["epsilon_sample_max"]), r)
        for r in runs
        if (r.summary.get("epsilon_user") or r.summary.get("epsilon_sample_max"))
        and r.summary.get("final_eval_accuracy") is not None
    ]
    plain = [r for r in runs if r.summary.get("privacy_mode") == "none" and r.summary.get("final_eval_accuracy")]
    if not points:
        return None
    fig, ax = figure(width=5.2, height=3.2)
    for i, (eps, run) in enumerate(sorted(points, key=lambda p: p[0])):
        ax.plot([eps], [run.summary["final_eval_accuracy"]], "o", color=f"C{i % 10}", label=run.label)
    for run in plain:
        ax.axhline(run.summary["final_eval_accuracy"], linestyle="--", color="gray", label=f"{run.label} (no DP)")
    units = {"user" if r.summary.get("epsilon_user") else "record" for _, r in points}
    deltas = {r.summary.get("delta") for _, r in points}
    ax.set_xscale("log")
    ax.set_xlabel(epsilon_label(unit=" and ".join(sorted(units)), delta=deltas.pop() if len(deltas) == 1 else None))
    ax.set_ylabel("held-out accuracy")
    ax.set_title("privacy-utility across runs (ε spent)")
    place_legend(ax)
    return _png(fig)


def _sweep_section(sweep: _Sweep) -> str:
    from privfed.experiments.sweep import plot_privacy_utility

    m = sweep.manifest
    parts = [f"<h2>Sweep: {html.escape(str(m.get('name')))} <small>({html.escape(str(sweep.path))})</small></h2>"]
    grid = ", ".join(f"{a['key']} ∈ {{{', '.join(a['values'])}}}" for a in m.get("axes", []))
    seeds = m.get("seeds", [])
    parts.append(f"<p>Grid: {html.escape(grid)}; seeds: {html.escape(str(seeds))}.</p>")
    with tempfile.TemporaryDirectory() as tmp:
        written = plot_privacy_utility(m["points"], Path(tmp) / "curve.png", title=str(m.get("name", "")), meta=m)
        data = base64.b64encode(written[0].read_bytes()).decode("ascii")
    parts.append(_img(data, "privacy-utility curve"))
    interval = (
        "Error bars and bands: 95% t-interval across seeds (mean ± t·s/√n)."
        if len(seeds) >= 2
        else "One seed per point: no interval across seeds."
    )
    parts.append(f'<p class="note">{interval}</p>')
    metrics = ["final_eval_accuracy", "final_eval_loss", "epsilon_user", "epsilon_sample_max"]
    metrics = [k for k in metrics if any(p["stats"][k]["mean"] is not None for p in m["points"])]
    rows = []
    for p in m["points"]:
        row: list[Any] = [p["name"], len(p["runs"])]
        for k in metrics:
            s = p["stats"][k]
            mean, half = s["mean"], s["ci95_half_width"]
            row.append(None if mean is None else f"{mean:.4g}" + ("" if half is None else f" ± {half:.2g}"))
        rows.append(row)
    parts.append(_table(["point", "seeds", *(f"{k} (mean ± 95% CI)" for k in metrics)], rows))
    groups: dict[str, list[_Run]] = {}
    for run in sweep.runs:
        groups.setdefault(run.label.split("/")[0], []).append(run)
    unit = f"{m.get('privacy_unit', 'user')}-level"
    parts.append("<h3>Per round (mean over seeds)</h3>" + _img(_rounds_figure(groups, delta_unit=unit), "per round"))
    return "".join(parts)


def _roc_figure(views: Mapping[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]], title: str) -> str:
    from privfed.plotting import figure, place_legend, roc_axes

    fig, ax = figure(width=5.0, height=3.4)
    floor = 1.0
    for name, (scores, labels) in list(views.items())[:8]:
        order = np.argsort(-scores, kind="stable")
        hits = labels[order]
        tpr = np.r_[0.0, np.cumsum(hits) / max(hits.sum(), 1)]
        fpr = np.r_[0.0, np.cumsum(~hits) / max((~hits).sum(), 1)]
        floor = min(floor, 1.0 / max(int((~labels).sum()), 1))
        ax.plot(np.maximum(fpr, 1e-6), np.maximum(tpr, 1e-6), label=name)
    roc_axes(ax, floor=floor)
    ax.set_title(title)
    place_legend(ax)
    return _png(fig)


def _load_views(path: Path) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    with np.load(path, allow_pickle=False) as saved:
        names = [str(n) for n in saved["views"]]
        return {
            n: (np.asarray(saved[f"scores_{i}"], dtype=np.float64), np.asarray(saved[f"labels_{i}"], dtype=bool))
            for i, n in enumerate(names)
        }


def _audit_section(path: Path) -> str:
    from privfed.plotting import epsilon_label, figure, place_legend

    records = json.loads((path / "audit_results.json").read_text())
    parts = [f"<h2>Audit <small>({html.escape(str(path))})</small></h2>"]
    rows, verdicts = [], []
    for r in records:
        bound = r.get("epsilon_lower_bound_one_run")
        estimate = r.get("epsilon_estimate_one_shot", r.get("epsilon_lower_bound_one_shot"))
        eps = r.get("epsilon")
        verdict = "n/a (privacy off)" if eps is None else ("OK" if bound <= eps + 1e-9 else "VIOLATED")
        verdicts.append(verdict)
        rows.append([r.get("run"), eps, bound, estimate, r.get("auc"), verdict])
    fig, ax = figure(width=5.2, height=3.2)
    private = [(r, v) for r, v in zip(records, verdicts, strict=True) if r.get("epsilon") is not None]
    if private:
        eps = [float(r["epsilon"]) for r, _ in private]
        ax.plot(eps, [float(r["epsilon_lower_bound_one_run"]) for r, _ in private], "o-", label="ε̂ one-run lower bound")
        top = max(eps)
        ax.plot([0, top], [0, top], "k--", linewidth=0.8, label="ε̂ = ε (a bound above it is a bug)")
        delta = next((r.get("delta") for r, _ in private), None)
        # The audit's ε is the user-level accountant's (canary clients); the bounds hold at the same δ.
        ax.set_xlabel("accountant " + epsilon_label(unit="user", delta=delta if isinstance(delta, float) else None))
        ax.set_ylabel("empirical ε̂ (95% lower bound)")
        ax.set_title("audit: empirical lower bound against the accountant")
        place_legend(ax)
        parts.append(_img(_png(fig), "audit epsilon"))
    cells = []
    for row in rows:
        css = "ok" if row[-1] == "OK" else "bad" if row[-1] == "VIOLATED" else ""
        cells.append(
            "<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row[:-1]) + f'<td class="{css}">{row[-1]}</td></tr>'
        )
    head = ["run", "accountant ε", "one-run lower bound ε̂ (95%)", "one-shot estimate", "canary AUC", "verdict"]
    parts.append(
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" + "".join(cells) + "</table>"
    )
    return "".join(parts)


def _attack_section(path: Path) -> str:
    parts = []
    if (path / "audit_results.json").exists():
        parts.append(_audit_section(path))
    for results in sorted(path.glob("*_results.json")):
        if results.name == "audit_results.json":
            continue
        records = json.loads(results.read_text())
        records = records if isinstance(records, list) else [records]
        parts.append(
            f"<h2>{html.escape(results.stem.replace('_', ' '))} <small>({html.escape(str(path))})</small></h2>"
        )
        scalar = [k for k in records[0] if all(isinstance(r.get(k), (int, float, str, type(None))) for r in records)]
        parts.append(_table(scalar[:10], [[r.get(k) for k in scalar[:10]] for r in records]))
    for scores in sorted(path.glob("*_scores.npz")):
        views = _load_views(scores)
        if views:
            parts.append(_img(_roc_figure(views, scores.stem.replace("_", " ")), f"ROC {scores.stem}"))
    for image in sorted(path.glob("**/reconstruction*.png"))[:6]:
        parts.append(f"<h3>{html.escape(str(image.relative_to(path)))}</h3>")
        parts.append(_img(base64.b64encode(image.read_bytes()).decode("ascii"), image.name))
    if not parts:
        raise DataError(f"{str(path)!r} holds no results a report can show")
    return "".join(parts)


def build_report(paths: Sequence[str | Path]) -> str:
    """The HTML text of a report over run, sweep and attack/audit directories.

    Raises:
        DataError: a path that does not exist or is not a run, sweep or attack/audit directory.
    """
    sweeps: list[_Sweep] = []
    runs: list[_Run] = []
    attacks: list[Path] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            raise DataError(f"privfed report: {str(path)!r} is not a directory")
        if (path / "sweep.json").exists():
            manifest = json.loads((path / "sweep.json").read_text())
            sweep = _Sweep(path, manifest)
            for point in manifest["points"]:
                for run in point["runs"]:
                    if (path / run["path"] / RunDirectory.CONFIG).exists():
                        sweep.runs.append(_read_run(path / run["path"], run["path"]))
            sweeps.append(sweep)
        elif (path / RunDirectory.CONFIG).exists():
            runs.append(_read_run(path, path.name))
        elif (path / "audit_results.json").exists() or list(path.glob("*_results.json")):
            attacks.append(path)
        else:
            raise DataError(
                f"privfed report: {str(path)!r} is not a run directory ({RunDirectory.CONFIG}), a sweep "
                "directory (sweep.json) or an attack/audit directory (*_results.json)"
            )
    every_run = runs + [r for s in sweeps for r in s.runs]
    body = ["<h1>privfed report</h1>"]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    inputs = ", ".join(html.escape(str(p)) for p in paths)
    body.append(f'<p class="note">Built {when} from saved results only (nothing re-run): {inputs}.</p>')
    if every_run:
        body.append("<h2>Summary</h2>" + _summary_table(every_run))
    for sweep in sweeps:
        body.append(_sweep_section(sweep))
    if runs:
        body.append("<h2>Runs</h2>")
        curve = _runs_curve(runs)
        if curve:
            body.append(_img(curve, "privacy-utility across runs"))
        units = {"user" if r.summary.get("epsilon_user") is not None else "record" for r in runs}
        figure = _rounds_figure({r.label: [r] for r in runs}, delta_unit=f"{' and '.join(sorted(units))}-level")
        body.append("<h3>Per round</h3>" + _img(figure, "per round"))
    for path in attacks:
        body.append(_attack_section(path))
    if every_run:
        body.append("<h2>Resolved configs</h2>")
        for run in every_run:
            body.append(
                f"<details><summary>{html.escape(run.label)} ({html.escape(str(run.path))})</summary>"
                f"<pre>{html.escape(run.config_text)}</pre></details>"
            )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>privfed report</title><style>{_CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_report(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Write :func:`build_report` to ``out`` (atomically); the path."""
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, build_report(paths))
    return target
