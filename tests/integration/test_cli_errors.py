"""``privfed run``: one line and exit 2 for a bad --out, a bad privacy config or a damaged checkpoint;
a run that applied no client update says so (issue 14 §5)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from privfed.cli import main
from privfed.config import dump_config
from privfed.errors import ConfigError
from privfed.experiments import RunDirectory, run_experiment
from privfed.transport.base import Exchange, Reply
from tests.conftest import tiny_config


def write_config(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(dump_config(tiny_config(**{"server.rounds": 2, **overrides})))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("privfed: error: "), err
    return err


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the CLI gets as far as building the experiment (loading the model)."""

    def refuse(config: Any) -> Any:
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr("privfed.experiments.runner.build_experiment", refuse)


def test_out_that_is_a_file_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    config = write_config(tmp_path)
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["run", str(config), "--out", str(target), "--quiet"]) == 2
    assert "not a directory" in one_error_line(capsys)
    assert target.read_text() == "keep me"


def test_out_that_is_a_dangling_symlink_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    config = write_config(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    assert main(["run", str(config), "--out", str(link), "--quiet"]) == 2
    assert "symlink to nothing" in one_error_line(capsys)
    assert not (tmp_path / "nowhere").exists()


def test_out_under_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    config = write_config(tmp_path)
    (tmp_path / "file").write_text("")
    assert main(["run", str(config), "--out", str(tmp_path / "file" / "sub" / "run"), "--quiet"]) == 2
    assert "is not a directory" in one_error_line(capsys)


def test_out_in_an_unwritable_place_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    config = write_config(tmp_path)
    if os.geteuid() == 0:
        target = Path("/sys/privfed-run")  # read-only even for root
        if not Path("/sys").is_dir():
            pytest.skip("no read-only directory to test with")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    assert main(["run", str(config), "--out", str(target), "--quiet"]) == 2
    assert "not writable" in one_error_line(capsys)
    assert not target.exists()


def test_empty_out_is_an_error_not_the_current_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(config), "--out", "", "--quiet"]) == 2
    assert "empty path" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists() and not (tmp_path / RunDirectory.CONFIG).exists()


def test_overflowing_noise_multiplier_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: OverflowError traceback in round 1, and a config.resolved.toml that blocked a rerun.
    config = write_config(
        tmp_path, **{"privacy.mode": "user", "privacy.delta": 1e-3, "privacy.user.noise_multiplier": 1.0}
    )
    text = config.read_text()
    assert "noise_multiplier = 1.0" in text
    config.write_text(text.replace("noise_multiplier = 1.0", "noise_multiplier = 1e308", 1))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    assert "noise_multiplier" in one_error_line(capsys)
    assert not out.exists()


def test_accountant_failure_is_a_config_error_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the config admits, an accountant that cannot compute epsilon stops the run before it starts."""

    def overflow(*args: Any, **kwargs: Any) -> float:
        raise OverflowError("(34, 'Numerical result out of range')")

    monkeypatch.setattr("privfed.experiments.runner.compute_epsilon", overflow)
    monkeypatch.setattr("privfed.privacy.ledger.compute_epsilon", overflow)
    config = tiny_config(
        **{"server.rounds": 1, "privacy.mode": "user", "privacy.delta": 1e-3, "privacy.user.noise_multiplier": 1.0}
    )
    with pytest.raises(ConfigError, match=r"privacy\.user\.noise_multiplier = 1, .*: OverflowError") as info:
        run_experiment(config, tmp_path / "run", quiet=True)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()


def test_damaged_checkpoint_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    run_experiment(tiny_config(**{"server.rounds": 2}), out, quiet=True, stop_after_round=1)
    checkpoint = out / RunDirectory.CHECKPOINT
    intact = checkpoint.read_bytes()
    damaged = bytearray(intact)
    damaged[len(damaged) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(damaged))
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "digest" in one_error_line(capsys)
    checkpoint.write_bytes(intact[: len(intact) // 3])  # truncated: SafetensorError before
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "unreadable" in one_error_line(capsys)
    checkpoint.write_bytes(intact)
    assert main(["run", "--resume", str(out), "--quiet"]) == 0
    assert len((out / RunDirectory.METRICS).read_text().splitlines()) == 2


class _RejectEverything:
    """A transport whose replies are all garbage in the given rounds (every update is rejected)."""

    def __init__(self, inner: Any, rounds: set[int] | None) -> None:
        self.inner, self.rounds, self.round = inner, rounds, 0

    def exchange(self, messages: Any, **kwargs: Any) -> Exchange:
        self.round += 1
        got: Exchange = self.inner.exchange(messages, **kwargs)
        if self.rounds is None or self.round in self.rounds:
            return Exchange(tuple(Reply(r.sender, b"garbage") for r in got.replies), got.bytes_down, got.bytes_up)
        return got


def test_rounds_without_an_update_are_counted_and_named(tmp_path: Path) -> None:
    summary = run_experiment(
        tiny_config(**{"server.rounds": 3}),
        tmp_path / "run",
        quiet=True,
        transport_hook=lambda t: _RejectEverything(t, {2}),
    )
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["update_applied"] for r in records] == [True, False, True]
    assert [r["aggregate_rejected"] for r in records] == [None, None, None]
    assert records[1]["rejected_updates"] == 3 and records[1]["num_clients"] == 0
    assert summary["completed"] is True and summary["trained"] is True
    assert summary["rounds_without_update"] == 1
    assert summary["warnings"] == ["1 of 3 rounds applied no client update (rounds 2)"]


def test_run_where_no_round_applied_an_update_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: summary said completed: true, nothing else, and the CLI exited 0.
    from privfed.transport.base import make_transport

    monkeypatch.setattr(
        "privfed.experiments.runner.make_transport",
        lambda kind, **kw: _RejectEverything(make_transport(kind, **kw), None),
    )
    config = write_config(tmp_path)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "NO round applied a client update" in err[-1] and str(out) in err[-1]
    assert any(line.startswith("privfed: warning: NO round applied") for line in err)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True and summary["trained"] is False
    assert summary["rounds_without_update"] == 2 and "NO round applied" in summary["warnings"][0]
    shutil.rmtree(out)
