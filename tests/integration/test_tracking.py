"""Experiment tracking: TensorBoard and MLflow hold exactly metrics.jsonl's numbers, resume adds no step twice."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from privfed.errors import ConfigError
from privfed.experiments import resume_experiment, run_experiment
from privfed.tracking import flatten_config, open_tracker, require_tracker, round_scalars
from tests.conftest import tiny_config

# Numbers float32 cannot hold: a tracker that rounds them fails the equality checks.
ROUNDS = [
    {"round": 1, "train_loss": 0.1 + 0.2, "eval_accuracy": None, "bytes_up": 2**40 + 1, "update_applied": True},
    {"round": 2, "train_loss": 1 / 3, "eval_accuracy": 0.7, "bytes_up": 2**40 + 3, "update_applied": True},
    {"round": 3, "train_loss": 99.0, "eval_accuracy": 0.1, "bytes_up": 7, "update_applied": False},
]
RERUN_3 = {"round": 3, "train_loss": 2 / 7, "eval_accuracy": 0.9, "bytes_up": 2**41 + 5, "update_applied": True}


def metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def tensorboard_series(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, float64 value)] as TensorBoard's own reader gives them back (purges applied).

    The accumulator TensorBoard's server reads with (``plugin_event_accumulator``): the legacy
    ``event_accumulator`` applies a restart's purge to old-style float32 scalars only.
    """
    from tensorboard.backend.event_processing.plugin_event_accumulator import TENSORS, EventAccumulator
    from tensorboard.util import tensor_util

    acc = EventAccumulator(str(logdir), size_guidance={TENSORS: 0})
    acc.Reload()
    series = {}
    for tag in acc.Tags()["tensors"]:
        if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":  # text, hparams
            continue
        series[tag] = [(e.step, float(tensor_util.make_ndarray(e.tensor_proto).item())) for e in acc.Tensors(tag)]
    return series


def mlflow_run(run_dir: Path) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run_dir / "tracking.json").read_text())
    return MlflowClient(tracking_uri=state["uri"]), state["run_id"]


def mlflow_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    client, run_id = mlflow_run(run_dir)
    keys = client.get_run(run_id).data.metrics
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys}


def expected_series(records: list[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in round_scalars(record).items():
            out.setdefault(key, []).append((int(record["round"]), value))
    return out


def read_series(backend: str, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    return tensorboard_series(run_dir / "tensorboard") if backend == "tensorboard" else mlflow_series(run_dir)


def test_round_scalars_keep_exactly_the_numbers_of_metrics_jsonl() -> None:
    record = {"round": 4, "a": 0.1 + 0.2, "b": 2**52 + 1, "c": float("nan"), "d": True, "e": "x", "f": [1], "g": None}
    assert round_scalars(record) == {"a": 0.30000000000000004, "b": float(2**52 + 1)}


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_tracker_holds_metrics_jsonl_values_and_resume_adds_no_step_twice(tmp_path: Path, backend: str) -> None:
    config = tiny_config(**{"tracking.backend": backend})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = open_tracker(config, run_dir)
    for record in ROUNDS:  # round 3 is logged, then the session dies before round 3's checkpoint
        tracker.log_round(record["round"], record)
    tracker.close()
    resumed = open_tracker(config, run_dir, start_round=2)
    resumed.log_round(3, RERUN_3)
    summary = {"rounds": 3, "final_eval_accuracy": 0.9, "seconds_total": 1 / 9, "warnings": [], "completed": True}
    resumed.log_run(summary, config)
    resumed.close()

    series = read_series(backend, run_dir)
    want = expected_series([*ROUNDS[:2], RERUN_3])
    assert {k: v for k, v in series.items() if not k.startswith("summary/")} == want
    assert series["summary/final_eval_accuracy"] == [(3, 0.9)]
    assert series["summary/seconds_total"] == [(3, 1 / 9)]
    if backend == "mlflow":
        client, run_id = mlflow_run(run_dir)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in flatten_config(config).items()}
        assert len(client.search_runs([run.info.experiment_id])) == 1  # the resume reused the run
        assert {a.path for a in client.list_artifacts(run_id)} == {"summary.json", "config.resolved.toml"}


@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_resume_that_runs_no_round_does_not_log_the_summary_again(tmp_path: Path, backend: str) -> None:
    config = tiny_config(**{"tracking.backend": backend})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = {"rounds": 1, "final_eval_accuracy": 0.5}
    first = open_tracker(config, run_dir)
    first.log_round(1, ROUNDS[0])
    first.log_run(summary, config)
    first.close()
    again = open_tracker(config, run_dir, start_round=1)  # a finished run resumed: nothing left to run
    again.log_run(summary, config)
    again.close()
    assert read_series(backend, run_dir)["summary/final_eval_accuracy"] == [(1, 0.5)]


def test_tensorboard_refuses_a_directory_holding_another_runs_events(tmp_path: Path) -> None:
    config = tiny_config(**{"tracking.backend": "tensorboard", "tracking.dir": str(tmp_path / "tb")})
    for name in ("a", "b"):
        (tmp_path / name / "run").mkdir(parents=True)
    open_tracker(config, tmp_path / "a" / "run").close()
    assert list((tmp_path / "tb" / "run").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="already holds TensorBoard events"):
        open_tracker(config, tmp_path / "b" / "run")


def test_none_writes_nothing(tmp_path: Path) -> None:
    config = tiny_config()
    assert config.tracking.backend == "none"
    tracker = open_tracker(config, tmp_path)
    tracker.log_round(1, ROUNDS[0])
    tracker.log_run({"rounds": 1}, config)
    tracker.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("backend", "modules"), [("tensorboard", ["tensorboard"]), ("mlflow", ["mlflow"])])
def test_a_missing_backend_is_one_line_naming_the_extra_before_anything_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, modules: list[str]
) -> None:
    for name in [m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in modules)]:
        monkeypatch.delitem(sys.modules, name)
    if backend == "tensorboard":
        monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    config = tiny_config(**{"tracking.backend": backend})
    with pytest.raises(ConfigError) as caught:
        require_tracker(config)
    message = str(caught.value)
    assert "\n" not in message and f"tracking.backend = {backend!r}" in message
    assert "pip install privfed[tracking]" in message
    with pytest.raises(ConfigError, match=r"privfed\[tracking\]"):
        run_experiment(config, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # nothing built or written


def _crash_at_round_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Die after round 3's metrics line and tracker entry, before its checkpoint."""
    import privfed.experiments.runner as runner

    save = runner._save

    def crashing(run_dir: Any, round: int, *args: Any) -> None:
        if round == 3:
            raise KeyboardInterrupt("simulated crash before round 3's checkpoint")
        save(run_dir, round, *args)

    monkeypatch.setattr(runner, "_save", crashing)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorboard", "mlflow"])
def test_a_crashed_and_resumed_run_tracks_exactly_its_metrics_jsonl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    config = tiny_config(**{"tracking.backend": backend, "run.checkpoint_every": 2})
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        _crash_at_round_3(patch)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, run_dir, quiet=True)
    assert [r["round"] for r in metrics(run_dir)] == [1, 2, 3]
    crashed_round_3 = metrics(run_dir)[2]
    summary = resume_experiment(run_dir, quiet=True)
    records = metrics(run_dir)
    assert [r["round"] for r in records] == [1, 2, 3]
    assert records[2]["seconds"] != crashed_round_3["seconds"]  # round 3 really ran twice
    series = read_series(backend, run_dir)
    assert {k: v for k, v in series.items() if not k.startswith("summary/")} == expected_series(records)
    assert series["summary/final_eval_accuracy"] == [(3, summary["final_eval_accuracy"])]
    assert series["summary/bytes_up_total"] == [(3, float(summary["bytes_up_total"]))]


@pytest.mark.slow
def test_each_sweep_point_is_its_own_run_in_a_shared_mlflow_store(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from privfed.experiments.sweep import parse_grid, run_grid

    store = tmp_path / "mlruns"
    config = tiny_config(**{"tracking.backend": "mlflow", "tracking.dir": str(store), "server.rounds": 2})
    run_grid(config, tmp_path / "sweep", parse_grid(["client.learning_rate=0.005,0.01"]), quiet=True)
    point_dirs = sorted(p.parent for p in (tmp_path / "sweep").glob("*/metrics.jsonl"))
    assert len(point_dirs) == 2
    client = MlflowClient(tracking_uri=store.as_uri())
    runs = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(p.name for p in point_dirs)
    for point in point_dirs:
        assert json.loads((point / "tracking.json").read_text())["dir"] == str(store)
        assert {k: v for k, v in mlflow_series(point).items() if not k.startswith("summary/")} == expected_series(
            metrics(point)
        )
    assert {r.data.params["client.learning_rate"] for r in runs} == {"0.005", "0.01"}
