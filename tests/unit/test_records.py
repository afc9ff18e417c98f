"""The typed records (RunSummary, RoundMetrics, Provenance) match what a run writes, key for key.

A run's ``summary.json`` and ``metrics.jsonl`` lines must hold every required key of their
TypedDict, no key it does not declare, the optional keys exactly when their condition holds,
and the keys in declaration order (so the files stay byte-identical to what users have).
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from privfed import RoundMetrics, RunSummary
from privfed.evaluation import EvalMetrics
from privfed.experiments import Provenance, run_experiment
from privfed.experiments.provenance import DeterminismSettings, GitInfo, HardwareInfo, OSInfo, PythonInfo
from tests.conftest import tiny_config


def _declared(record_type: Any) -> list[str]:
    return list(typing.get_type_hints(record_type))


def _check(record: dict[str, Any], record_type: Any, optional_present: set[str]) -> None:
    """``record`` holds the required keys of ``record_type``, exactly ``optional_present`` of its
    optional ones, nothing else, in declaration order."""
    required, optional = set(record_type.__required_keys__), set(record_type.__optional_keys__)
    assert optional_present <= optional
    assert set(record) - required - optional == set(), "keys the TypedDict does not declare"
    assert required - set(record) == set(), "required keys missing"
    assert set(record) & optional == optional_present
    assert list(record) == [k for k in _declared(record_type) if k in record], "key order differs"


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_optional_keys_are_seen_at_run_time() -> None:
    # Without evaluated annotations (``from __future__ import annotations`` in the defining module)
    # Python 3.11 would report every NotRequired key as required.
    assert RoundMetrics.__optional_keys__ == {
        "eval_perplexity",
        "epsilon_user",
        "clip_norm",
        "unclipped_fraction",
        "epsilon_sample_max",
        "client_record_epsilon_max",
        "declines",
    }
    assert RunSummary.__optional_keys__ == {
        "initial_eval_perplexity",
        "majority_class_rate",
        "final_eval_perplexity",
        "stopped",
    }
    assert EvalMetrics.__optional_keys__ == {"eval_perplexity"}


def test_classification_run_with_both_privacy_units_writes_exactly_the_declared_keys(tmp_path: Path) -> None:
    config = tiny_config(
        **{
            "privacy.mode": "both",
            "privacy.delta": 1e-3,
            "privacy.sample.target_epsilon": 8.0,
            "privacy.user.target_epsilon": 8.0,
            "server.rounds": 2,
            "eval.every": 2,
            "data.max_train_examples": 120,
            "data.max_eval_examples": 40,
            "client.local_steps": 2,
        }
    )
    returned = run_experiment(config, tmp_path / "run", quiet=True)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(returned) == list(written)
    _check(written, RunSummary, {"majority_class_rate"})
    assert written["completed"] is True and written["privacy_mode"] == "both"

    lines = _lines(tmp_path / "run")
    assert [r["round"] for r in lines] == [1, 2]
    privacy = {"epsilon_user", "clip_norm", "unclipped_fraction", "epsilon_sample_max"}
    for line in lines:
        _check(line, RoundMetrics, privacy)
    assert lines[0]["eval_loss"] is None and isinstance(lines[1]["eval_loss"], float)  # eval.every = 2

    provenance = written["provenance"]
    _check(provenance, Provenance, set())
    for key, nested in (
        ("git", GitInfo),
        ("python", PythonInfo),
        ("os", OSInfo),
        ("hardware", HardwareInfo),
        ("torch", DeterminismSettings),
    ):
        _check(provenance[key], nested, set())


def test_language_model_run_adds_the_perplexity_keys_only(tmp_path: Path) -> None:
    config = tiny_config(
        **{
            "model.name": "tiny-llama",
            "data.name": "fortunes",
            "server.rounds": 1,
            "data.max_train_examples": 60,
            "data.max_eval_examples": 20,
            "client.local_steps": 1,
        }
    )
    run_experiment(config, tmp_path / "run", quiet=True)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    _check(written, RunSummary, {"initial_eval_perplexity", "final_eval_perplexity"})
    (line,) = _lines(tmp_path / "run")
    _check(line, RoundMetrics, {"eval_perplexity"})
