"""Shared fixtures. Everything runs offline on CPU."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

# Hypothesis profiles (docs/testing.md, "privfed's own suite"). "ci", the default for `make test`, CI and a
# bare pytest run, is derandomized: the examples depend only on the test's code (and hypothesis' version),
# so two runs of the same commit test the same inputs, and no example database replays another run's
# failures. PRIVFED_HYPOTHESIS_PROFILE=explore draws fresh random examples (more for tests that do not set
# max_examples) and saves failures to .hypothesis/ for replay. Deadlines are off in both: the suite shares
# two cores with other jobs, and a slow example is not a failure. print_blob: a failure prints the
# @reproduce_failure line that replays it exactly.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Every field is spelled out rather than inherited: under a CI environment variable (CI=true, GITHUB_ACTIONS,
# ...) hypothesis makes its own CI settings (no database, derandomized) the parent of a new profile.
settings.register_profile(
    "explore",
    derandomize=False,
    database=DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parents[1] / ".hypothesis" / "examples")),
    deadline=None,
    print_blob=True,
    max_examples=1000,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("PRIVFED_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def tiny_config(**overrides: Any) -> Any:
    """A seconds-long experiment on tiny-bert; ``overrides`` are dotted keys."""
    from privfed.config import config_from_dict

    raw: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "model": {"name": "tiny-bert", "max_length": 32},
        "data": {"name": "bbc_news", "max_train_examples": 200, "max_eval_examples": 60},
        "partition": {"method": "dirichlet", "num_clients": 6, "alpha": 1.0},
        "client": {"local_steps": 3, "batch_size": 8, "learning_rate": 0.005},
        "server": {"rounds": 3, "clients_per_round": 3},
    }
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(raw)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"
