"""privfed.plotting: one style, three formats, ε axes with unit and δ, legends outside the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from privfed.plotting import epsilon_label, figure, place_legend, save


def test_epsilon_label_names_unit_and_delta() -> None:
    assert epsilon_label(unit="record", delta=1e-5) == "ε (record-level, δ = 1e-05)"
    assert epsilon_label(unit="user", delta=None, target=True) == "target ε (user-level, δ unknown)"


def test_save_writes_png_pdf_svg_and_keeps_the_legend_off_the_axes(tmp_path: Path) -> None:
    fig, ax = figure()
    ax.plot([1, 2, 3], [3, 1, 2], label="a line")
    ax.set_xlabel(epsilon_label(unit="user", delta=1e-3))
    place_legend(ax)
    written = save(fig, tmp_path / "p.png")
    assert [p.name for p in written] == ["p.png", "p.pdf", "p.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[1].read_bytes()[:5] == b"%PDF-"
    assert "δ = 0.001" in written[2].read_text()  # text stays text in SVG
    renderer = fig._get_renderer()  # type: ignore[attr-defined]  # the Agg renderer save() drew with
    legend = ax.get_legend().get_window_extent(renderer)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # right of the axes: it covers no data
    assert ax.xaxis.label.get_fontsize() == 9.0 and ax.title.get_fontsize() == 10.0


def test_plot_roc_is_log_log_with_the_diagonal(tmp_path: Path) -> None:
    from attacks.metrics import plot_roc

    rng = np.random.default_rng(0)
    members = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    out = plot_roc({"LOSS": (rng.normal(size=400) + members, members)}, tmp_path / "roc.png", title="t")
    assert out == tmp_path / "roc.png" and out.stat().st_size > 5000
    svg = (tmp_path / "roc.svg").read_text()
    assert "chance" in svg and "false positive rate (log scale)" in svg
