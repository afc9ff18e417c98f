"""One plot style for every privfed figure: sizes, fonts, ε axes, legends, PNG + PDF + SVG.

Figures are built on :class:`matplotlib.figure.Figure` directly (no pyplot, no
global backend or ``rcParams`` changes), so plotting from library code leaves
the caller's matplotlib state alone::

    fig, ax = figure()
    ax.plot(eps, acc, marker="o", label="DP-FedAvg")
    ax.set_xlabel(epsilon_label(unit="user", delta=1e-5))
    place_legend(ax)
    save(fig, out / "privacy_utility.png")   # also .pdf and .svg

:func:`save` applies the house style (font family and sizes, grid) to every
axis just before writing, so a plot only sets what it shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FORMATS",
    "epsilon_label",
    "figure",
    "place_legend",
    "roc_axes",
    "save",
]

FORMATS = ("png", "pdf", "svg")
"""The files :func:`save` writes for one figure (PNG for screens and HTML, PDF and SVG for papers)."""

_FONT = "DejaVu Sans"  # ships with matplotlib: the same glyphs on every machine
_TITLE_SIZE = 10.0
_LABEL_SIZE = 9.0
_TICK_SIZE = 8.0
_LEGEND_SIZE = 8.0
_PNG_DPI = 200
COLUMN_WIDTH_IN = 3.5  # one column of a two-column paper
PAGE_WIDTH_IN = 7.0


def figure(
    *, ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None
) -> tuple[Figure, Any]:
    """A new figure and its axes (one ``Axes``, or an array of them for a grid).

    Args:
        ncols, nrows: panels side by side / stacked.
        width, height: inches; default one paper column per panel (3.5 in wide, 2.6 in high),
            at most a page (7 in) wide.
    """
    from matplotlib.figure import Figure

    width = width if width is not None else min(PAGE_WIDTH_IN * 1.6, COLUMN_WIDTH_IN * ncols * 1.15)
    height = height if height is not None else 2.6 * nrows
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True)
    return fig, axes


def epsilon_label(*, unit: str, delta: float | None, target: bool = False) -> str:
    """The label of an ε axis: which ε (target or spent), the privacy unit and δ.

    Args:
        unit: ``"user"``, ``"record"`` or ``"user and record"``: what one unit of privacy protects.
        delta: the δ the ε holds at (``None``: not known; said so).
        target: True for the configured target ε, False for the ε the accountant reports.

    >>> epsilon_label(unit="user", delta=1e-5, target=True)
    'target ε (user-level, δ = 1e-05)'
    """
    which = "target ε" if target else "ε"
    where = "δ unknown" if delta is None else f"δ = {delta:.3g}"
    return f"{which} ({unit}-level, {where})"


def place_legend(ax: Axes, *, title: str | None = None) -> None:
    """A legend outside the axes, to the right, so it can never cover a line or a point.

    ``save`` writes with a tight bounding box, so the legend is always inside the file.
    Does nothing when nothing on ``ax`` has a label.
    """
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ax.legend(
        handles,
        labels,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
        frameon=False,
    )


def roc_axes(ax: Axes, *, floor: float) -> None:
    """Log-log ROC axes from ``floor`` (the smallest resolvable FPR, 1/#non-members) to 1, with the diagonal.

    The low-FPR corner is what matters for membership inference (Carlini et al. 2022), hence log-log.
    """
    floor = min(max(floor, 1e-9), 0.5)
    ax.plot([floor, 1.0], [floor, 1.0], color="black", linestyle="--", linewidth=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1.0)
    ax.set_ylim(floor / 2, 1.05)
    ax.set_xlabel("false positive rate (log scale)")
    ax.set_ylabel("true positive rate (log scale)")


def _style(fig: Figure, *, grid: bool = True) -> None:
    for ax in fig.get_axes():
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
        for text in texts:
            text.set_fontfamily(_FONT)
        ax.title.set_fontsize(_TITLE_SIZE)
        ax.xaxis.label.set_fontsize(_LABEL_SIZE)
        ax.yaxis.label.set_fontsize(_LABEL_SIZE)
        ax.tick_params(labelsize=_TICK_SIZE)
        if grid:
            ax.grid(True, which="major", alpha=0.3, linewidth=0.6)
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                text.set_fontsize(_LEGEND_SIZE)
                text.set_fontfamily(_FONT)
            if legend.get_title().get_text():
                legend.get_title().set_fontsize(_LEGEND_SIZE)


def save(fig: Figure, path: str | Path, *, formats: Sequence[str] = FORMATS, grid: bool = True) -> list[Path]:
    """Style ``fig`` and write it as ``path`` with each of ``formats`` as suffix; the paths written.

    ``path``'s own suffix is replaced (``plot.png`` -> ``plot.png``, ``plot.pdf``, ``plot.svg``).
    PDF and SVG keep text as text (TrueType in PDF, not outlines), so a paper's
    typesetting can search and restyle it. Files are written whole or not at all.
    ``grid=False`` leaves the axes without grid lines (image panels).
    """
    import matplotlib

    from privfed.experiments.run_dir import atomic_write_bytes

    _style(fig, grid=grid)
    base = Path(path)
    written = []
    with matplotlib.rc_context({"pdf.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "privfed"}):
        for fmt in formats:
            import io

            buffer = io.BytesIO()
            metadata: dict[str, Any] = {"Creator": "privfed"}
            if fmt == "png":
                metadata = {"Software": "privfed"}
            elif fmt == "svg":
                metadata = {"Date": None, "Creator": "privfed"}
            elif fmt == "pdf":
                metadata = {"CreationDate": None, "Creator": "privfed"}
            fig.savefig(buffer, format=fmt, dpi=_PNG_DPI, bbox_inches="tight", metadata=metadata)
            target = base.with_suffix(f".{fmt}")
            atomic_write_bytes(target, buffer.getvalue())
            written.append(target)
    return written
