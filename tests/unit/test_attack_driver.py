"""The attack driver: a federation run, reused or resumed by its config; a keyed, atomic results file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import privfed.experiments.sweep as sweep_module
from attacks.driver import ResultsFile, final_adapter, run_federation
from privfed import ConfigError, RunDirectory, dump_config
from privfed.config import replace_path
from tests.conftest import tiny_config


def _key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return (record["a"], record["b"])


def test_results_file_keeps_earlier_records_until_close_and_skips_finished_keys(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    first = ResultsFile(path, key=_key)
    assert first.done == {} and first.finished((1, "x")) is None
    first.add({"a": 1, "b": "x", "value": 0.5})
    first.add({"a": 2, "b": "x", "value": 0.25})
    assert first.close() == json.loads(path.read_text())

    # A re-run over other settings: finished keys are found, earlier ones stay in the file until close.
    again = ResultsFile(path, key=_key)
    assert again.finished((2, "x")) == {"a": 2, "b": "x", "value": 0.25} and again.finished((3, "x")) is None
    again.add({"a": 3, "b": "x", "value": 1.0})
    on_disk = json.loads(path.read_text())
    assert [_key(r) for r in on_disk] == [(3, "x"), (1, "x"), (2, "x")]
    again.add(again.done[(2, "x")])
    assert [_key(r) for r in json.loads(path.read_text())] == [(3, "x"), (2, "x"), (1, "x")]
    assert [_key(r) for r in again.close()] == [(3, "x"), (2, "x")]
    assert [_key(r) for r in json.loads(path.read_text())] == [(3, "x"), (2, "x")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left behind


def test_results_file_format_and_reader(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    results = ResultsFile(path, key=lambda r: r["run"], indent=2, newline=True)
    results.add({"run": "inf", "old": 1})
    results.close()
    assert path.read_text() == json.dumps([{"run": "inf", "old": 1}], indent=2) + "\n"
    upgraded = ResultsFile(path, key=lambda r: r["run"], read=lambda r: {"run": r["run"], "new": r["old"]})
    assert upgraded.finished("inf") == {"run": "inf", "new": 1}


@pytest.mark.parametrize("content", ["not json", '{"a": 1}', '[{"a": 1}]', "[1, 2]"])
def test_results_file_of_another_command_is_one_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=r"r\.json is not a results file of this command .*use a new --out"):
        ResultsFile(path, key=_key)


class _FakeRuns:
    """Stands in for run_experiment / resume_experiment: records calls and writes a run directory."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, dict[str, Any]]] = []

    def run(self, config: Any, path: Path, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("run", path, kwargs))
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.resolved.toml").write_text(dump_config(config))
        (path / "summary.json").write_text(json.dumps({"completed": True, "name": config.name}))
        return {"completed": True, "fresh": True}

    def resume(self, path: Path, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("resume", path, kwargs))
        return {"completed": True, "resumed": True}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeRuns:
    runs = _FakeRuns()
    monkeypatch.setattr(sweep_module, "run_experiment", runs.run)
    monkeypatch.setattr(sweep_module, "resume_experiment", runs.resume)
    return runs


def _interrupted(path: Path, config: Any) -> None:
    path.mkdir(parents=True)
    (path / "config.resolved.toml").write_text(dump_config(config))
    (path / "summary.json").write_text(json.dumps({"completed": False}))


def test_finished_run_of_the_same_config_is_reused_and_an_interrupted_one_resumed(
    tmp_path: Path, fake: _FakeRuns
) -> None:
    config = tiny_config()
    first = run_federation(config, tmp_path / "run", quiet=True)
    assert first == {"completed": True, "fresh": True}
    # Reused: the stored summary, nothing runs.
    assert run_federation(config, tmp_path / "run", quiet=True, other_config="refuse")["name"] == "tiny"
    assert [c[0] for c in fake.calls] == ["run"]
    # A reuse check that fails runs it again from scratch (the directory is replaced).
    told: list[Path] = []
    again = run_federation(config, tmp_path / "run", quiet=True, reuse=lambda s: False, on_rerun=told.append)
    assert again["fresh"] and told == [tmp_path / "run"] and [c[0] for c in fake.calls] == ["run", "run"]
    # Interrupted: resumed, or with resume=False (hooks not in the run directory) run afresh.
    _interrupted(tmp_path / "cut", config)
    assert run_federation(config, tmp_path / "cut", quiet=True)["resumed"]
    hook = object()
    assert run_federation(config, tmp_path / "cut", quiet=True, resume=False, transport_hook=hook)["fresh"]  # type: ignore[arg-type]
    assert fake.calls[-1][2]["transport_hook"] is hook and fake.calls[-2][0] == "resume"


def test_a_directory_of_another_config_is_refused_or_replaced(tmp_path: Path, fake: _FakeRuns) -> None:
    config = tiny_config()
    run_federation(config, tmp_path / "run", quiet=True)
    other = replace_path(config, "client.learning_rate", 0.02)
    with pytest.raises(ConfigError, match=r"holds a run of another config \(differs at client\.learning_rate\)"):
        run_federation(other, tmp_path / "run", quiet=True, other_config="refuse")
    assert len(fake.calls) == 1
    # The name is a label: with ignore_name a renamed config reuses the run.
    renamed = replace_path(config, "name", "label")
    assert run_federation(renamed, tmp_path / "run", quiet=True, other_config="replace", ignore_name=True)["name"] == (
        "tiny"
    )
    assert len(fake.calls) == 1
    assert run_federation(renamed, tmp_path / "run", quiet=True, other_config="replace")["fresh"]
    assert run_federation(other, tmp_path / "run", quiet=True, other_config="replace")["fresh"]
    assert len(fake.calls) == 3
    # "trust" (the default) does not compare: the finished run is reused whatever config is asked for.
    assert run_federation(config, tmp_path / "run", quiet=True)["name"] == "tiny"
    assert len(fake.calls) == 3


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory checkpointed after round 1 of 2 (not completed)."""
    from privfed import run_experiment

    path = tmp_path_factory.mktemp("driver") / "run"
    run_experiment(tiny_config(**{"server.rounds": 2}), path, quiet=True, stop_after_round=1)
    return path


def test_final_adapter_is_the_checkpointed_global_adapter_of_a_finished_run(partial_run: Path) -> None:
    stored = RunDirectory(partial_run).load_checkpoint()
    assert stored is not None
    final = final_adapter(partial_run, {"completed": True}, what="federation x")
    assert final.dtype == np.float32 and np.array_equal(final, stored.arrays["global"])
    # Not completed: one line naming the run and why (the summary's reason, else what is missing).
    stopped = {"completed": False, "stopped": "privacy budget: epsilon 3.1 > 3"}
    with pytest.raises(ConfigError, match=r"^federation x did not finish \(privacy budget: epsilon 3\.1 > 3\)$"):
        final_adapter(partial_run, stopped, what="federation x")
    with pytest.raises(ConfigError, match=r"^the audited run in y did not finish \(not completed\)$"):
        final_adapter(partial_run, {"completed": False}, what="the audited run in y")
    # any_checkpoint (exposure): a run its budget stopped early is scored from its last checkpoint.
    assert np.array_equal(final_adapter(partial_run, stopped, what="z", any_checkpoint=True), final)


def test_final_adapter_without_a_checkpoint_is_one_config_error(tmp_path: Path) -> None:
    for any_checkpoint in (False, True):
        with pytest.raises(ConfigError, match=r"^run r did not finish \(no checkpoint\)$"):
            final_adapter(tmp_path, {"completed": True}, what="run r", any_checkpoint=any_checkpoint)
