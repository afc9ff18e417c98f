"""Resuming never releases a round the ledger does not charge."""

from __future__ import annotations

from pathlib import Path

import pytest

from privfed.errors import CheckpointError
from privfed.experiments import RunDirectory, resume_experiment, run_experiment
from tests.conftest import tiny_config

USER = {"privacy.mode": "user", "privacy.delta": 1e-2, "privacy.user.noise_multiplier": 1.0, "server.rounds": 3}


def test_a_deleted_checkpoint_does_not_restart_the_run(run_dir: Path) -> None:
    """It used to resume from round 1 and report a smaller epsilon (3.751 -> 2.687 in the review's repro)."""
    run_experiment(tiny_config(**USER), run_dir, quiet=True, stop_after_round=2)
    (run_dir / RunDirectory.CHECKPOINT).unlink()
    with pytest.raises(CheckpointError, match="2 round\\(s\\) of metrics but no checkpoint"):
        resume_experiment(run_dir, quiet=True)


def test_secure_noise_runs_checkpoint_every_round_and_refuse_rounds_they_cannot_redraw(run_dir: Path) -> None:
    config = tiny_config(**{**USER, "privacy.secure_noise": True, "run.checkpoint_every": 5})
    run_experiment(config, run_dir, quiet=True, stop_after_round=2)
    directory = RunDirectory(run_dir)
    checkpoint = directory.load_checkpoint()
    assert checkpoint is not None and checkpoint.round == 2  # every round, despite checkpoint_every = 5
    # A crash after round 3's release but before its checkpoint: fake it by appending a metrics line.
    records = directory.read_metrics()
    directory.append_metrics({**records[-1], "round": 3})
    with pytest.raises(CheckpointError, match="round\\(s\\) 3 were released after the last checkpoint"):
        resume_experiment(run_dir, quiet=True)


def test_seeded_noise_rounds_after_the_checkpoint_are_redrawn_identically(run_dir: Path, tmp_path: Path) -> None:
    """Without secure noise a re-run round releases exactly what it released before: resuming is safe."""
    config = tiny_config(**USER)
    full = run_experiment(config, tmp_path / "full", quiet=True)
    released = RunDirectory(tmp_path / "full").read_metrics()
    run_experiment(config, run_dir, quiet=True, stop_after_round=2)
    directory = RunDirectory(run_dir)
    directory.append_metrics(released[2])  # round 3 released, then a crash before its checkpoint
    resumed = resume_experiment(run_dir, quiet=True)
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith("seconds")} for r in rs]  # noqa: E731
    assert strip(directory.read_metrics()) == strip(released)
    assert resumed["epsilon_user"] == full["epsilon_user"]
