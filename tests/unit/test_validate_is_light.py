"""``privfed validate`` answers without loading a model's stack, and prints the same plan as before.

The validate path (``privfed.experiments.plan``) once imported ``privfed.experiments``, whose
``__init__`` imported the round loop, the trainer, torch, opacus and transformers: ~4 s before a
config with no DP printed anything. The plan's arithmetic now lives in torch-free modules
(``privfed.client.schedule``, ``privfed.experiments.privacy``, ``privfed.experiments.split``).
Any DP level still loads torch, through Opacus' accountants (``opacus/__init__`` imports torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from privfed.config import load_config
from privfed.experiments.plan import applicable_config, format_plan, privacy_plan

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("opacus", "peft", "torch", "transformers")

DP_ARGS = [
    "configs/tiny.toml",
    "--set",
    "privacy.mode=both",
    "--set",
    "privacy.delta=1e-3",
    "--set",
    "privacy.sample.noise_multiplier=1.1",
    "--set",
    "privacy.user.noise_multiplier=0.9",
]

# What `privfed validate` printed before the plan stopped going through privfed.experiments.runner.
DEMO_PLAN = [
    "# privacy plan",
    "#   not private: privacy.mode = 'none': no DP noise is added, so no epsilon bounds what the updates reveal",
    "# config (only the keys that apply; the rest keep their defaults):",
]
DP_PLAN = [
    "# privacy plan (rdp accountant, delta = 0.001)",
    "#   user level (DP-FedAvg, privacy unit: user): sigma = 0.9 (given); clip norm 0.1; client sampling rate "
    "q = 3/6 = 0.5 (Poisson); 3 steps (rounds); projected epsilon = 5.372 at delta = 0.001 for the whole run",
    "#   record level (DP-SGD, privacy unit: record): sigma = 1.1 (given); max grad norm 1; per-client Poisson rate "
    "q = 0.186 to 0.4 (6 clients holding 20 to 43 examples); 9 steps over 3 rounds; projected epsilon <= 5.718 at "
    "delta = 0.001 for the whole run (worst client, taking part in every round)",
    "# data: 200 training examples on 6 clients (20 to 43 each)",
    "# config (only the keys that apply; the rest keep their defaults):",
]


@pytest.fixture(scope="module")
def validated() -> list[dict[str, Any]]:
    """In one fresh interpreter: validate demo.toml (no DP), then tiny.toml with both DP levels; after
    each, the printed text and which heavy modules were loaded."""
    script = f"""
import contextlib, io, json, sys
from privfed.cli import main
for args in ({["validate", "configs/demo.toml"]!r}, {["validate", *DP_ARGS]!r}):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    print(json.dumps({{"code": code, "out": out.getvalue(), "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    return [json.loads(line) for line in result.stdout.splitlines()]


def _comments(text: object) -> list[str]:
    return [line for line in str(text).splitlines() if line.startswith("#")]


def test_validating_a_config_without_dp_loads_no_torch(validated: list[dict[str, Any]]) -> None:
    demo = validated[0]
    assert demo["code"] == 0
    assert demo["heavy"] == []
    assert _comments(demo["out"]) == DEMO_PLAN
    # The same plan and keys as the library calls print.
    config = load_config(ROOT / "configs/demo.toml")
    assert _comments(demo["out"])[:-1] == [f"# {line}" for line in format_plan(privacy_plan(config), config)]
    assert tomllib.loads(str(demo["out"])) == applicable_config(config)


def test_validating_a_dp_config_loads_no_model_stack(validated: list[dict[str, Any]]) -> None:
    dp = validated[1]
    assert dp["code"] == 0
    assert _comments(dp["out"]) == DP_PLAN  # same sigmas, rates, steps and epsilons as before
    # Opacus' accountants import torch (opacus/__init__), but no model library is loaded.
    assert "transformers" not in dp["heavy"] and "peft" not in dp["heavy"]
    assert "opacus" in dp["heavy"]  # the check can fail: this path really imports something of HEAVY


# privfed.experiments' lazy table: tests/unit/test_lazy_subpackages.py (LAZY_PACKAGES).


def test_moved_helpers_are_the_same_objects_at_their_old_homes() -> None:
    from privfed.client import schedule, trainer
    from privfed.experiments import privacy, runner, split

    for name in ("batch_size_for", "local_steps", "sampling_rate_for"):
        assert getattr(trainer, name) is getattr(schedule, name)
    assert vars(runner)["split_data"] is split.split_data
    assert vars(runner)["PrivacyPlan"] is privacy.PrivacyPlan
