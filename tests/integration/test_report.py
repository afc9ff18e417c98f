"""CSV -> privfed sweep (grid, 2 seeds) -> privfed report, and the report checked in headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from privfed.cli import main
from privfed.config import dump_config
from privfed.errors import DataError
from privfed.experiments.report import build_report
from tests.conftest import tiny_config

CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;
  const out = document.createElement("pre");
  out.id = "privfed-check";
  out.textContent = `images=${imgs.length} broken=${bad} errors=${window.__errors.length}`;
  document.body.appendChild(out);
});
</script>"""


def _write_csv(path: Path) -> None:
    topics = {"sport": "match goal team win", "tech": "phone chip software cloud", "money": "bank rate market stock"}
    lines = ["text,label"]
    for i in range(60):
        label = list(topics)[i % 3]
        lines.append(f"{topics[label]} story {i} about {label} news,{label}")
    path.write_text("\n".join(lines) + "\n")


def _chromium_check(html_path: Path, tmp: Path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs Debian's chromium when run as root)")
    checked = tmp / "checked.html"
    checked.write_text(html_path.read_text().replace("<head>", "<head>" + CHECK, 1))
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    args += ["--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}"]
    args += ["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    found = re.search(r'<pre id="privfed-check">([^<]*)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    return found.group(1)


def test_csv_sweep_report_three_commands(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    _write_csv(data)
    config = tiny_config(
        **{
            "data.name": "csv",
            "data.path": str(data),
            "data.text_column": "text",
            "data.label_column": "label",
            "data.max_train_examples": 45,
            "data.max_eval_examples": 15,
            "server.rounds": 1,
            "privacy.delta": 1e-2,
        }
    )
    path = tmp_path / "c.toml"
    path.write_text(dump_config(config))
    out = tmp_path / "sweep"
    grid = ["--grid", "privacy.user.target_epsilon=2,inf", "--seeds", "0,1"]
    assert main(["sweep", str(path), *grid, "--out", str(out), "--quiet"]) == 0
    report = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(report)]) == 0
    text = report.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text  # self-contained
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="([^"]+)"', text)
    assert ("privacy-utility curve" in [alt for _, alt in images]) and len(images) >= 2
    for data64, _ in images:
        assert base64.b64decode(data64)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "95% t-interval across seeds" in text and re.search(r"\d ± \d", text)  # the curve's intervals
    assert "target_epsilon = 2.0" in text  # a resolved config is shown
    assert _chromium_check(report, tmp_path) == f"images={len(images)} broken=0 errors=0"


def test_report_refuses_a_directory_without_results(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a run directory"):
        build_report([tmp_path])
    with pytest.raises(DataError, match="not a directory"):
        build_report([tmp_path / "missing"])


def test_report_shows_audit_verdicts_and_roc_from_saved_files(tmp_path: Path) -> None:
    import json

    import numpy as np

    from attacks.metrics import save_scores

    audit = tmp_path / "audit"
    audit.mkdir()
    records = [
        {"run": "1", "epsilon": 1.0, "epsilon_lower_bound_one_run": 0.4, "epsilon_estimate_one_shot": 0.7, "auc": 0.6},
        {"run": "8", "epsilon": 8.0, "epsilon_lower_bound_one_run": 9.0, "epsilon_estimate_one_shot": 9.5, "auc": 0.9},
        {"run": "inf", "epsilon": None, "epsilon_lower_bound_one_run": 3.0, "epsilon_estimate_one_shot": 4, "auc": 1.0},
    ]
    (audit / "audit_results.json").write_text(json.dumps(records))
    members = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    scores = np.random.default_rng(0).normal(size=100) + members
    save_scores(audit / "audit_scores.npz", {"1.white-box": (scores, members)})
    text = build_report([audit])
    assert re.search(r'<td class="ok">OK</td>', text) and re.search(r'<td class="bad">VIOLATED</td>', text)
    assert "n/a (privacy off)" in text
    alts = re.findall(r'alt="([^"]+)"', text)
    assert alts == ["audit epsilon", "ROC audit_scores"]
    records[0]["delta"] = 1e-5
    (audit / "audit_results.json").write_text(json.dumps(records))
    assert build_report([audit]).count("<img") == 2
