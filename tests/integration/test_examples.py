"""Every example script runs in its --dry-run mode."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("config", ["configs/demo.toml", "configs/smollm2_fortunes.toml"])
def test_federated_lora_example_dry_run(config: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "examples/federated_lora.py", config, "--dry-run", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["rounds"] == 2 and summary["completed"] is True
    assert summary["model"] in ("tiny-bert", "tiny-llama")
    assert (out / "adapter" / "adapter_config.json").exists()
