"""The Flower SecAgg+ baseline app of ``benchmarks/flower.py`` (``benchmarks/flower_secaggplus_app``):
its run config matches its pyproject, its result line is read back, its medians skip the first round,
and its short-poll ``send_and_receive`` waits for every reply."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("flwr")

APP_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "flower_secaggplus_app"
sys.path.insert(0, str(APP_DIR))

from secaggplus_baseline.app import (  # noqa: E402
    KINDS,
    RESULT_MARKER,
    Baseline,
    fixed_update,
    parse_result,
    poll_every,
    summarize,
)

BASELINE = Baseline(
    d=2213, clients=4, bits=32, num_shares=4, reconstruction_threshold=3, clip=0.5, rounds_per_kind=4, short_poll=0.02
)


def test_run_config_round_trips_and_names_the_pyprojects_keys() -> None:
    pyproject = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    defaults = pyproject["tool"]["flwr"]["app"]["config"]
    values = BASELINE.run_config()
    assert set(values) == set(defaults)  # flwr run refuses run-config keys the app does not declare
    assert all(type(values[k]) is type(defaults[k]) for k in values)
    assert Baseline.from_run_config(values) == BASELINE
    assert BASELINE.describe()["quantization_range"] == 2**30


def test_parse_result_reads_the_last_result_line_among_log_lines() -> None:
    first = {"baseline": {"d": 1}, "samples": {"plain": [9.0]}}
    last = {"baseline": {"d": 2213}, "object_pulls_capped": True, "samples": {"plain": [1.0, 2.0]}}
    output = (
        "INFO :      Starting run\n"
        f"{RESULT_MARKER}{json.dumps(first)}\n"
        f"{RESULT_MARKER}{json.dumps(last, separators=(',', ':'))}\n"
        "INFO :      Run finished\n"
    )
    assert parse_result(output) == last


@pytest.mark.parametrize(
    ("output", "found"),
    [
        ("INFO : nothing here\n", "no FLOWER_SECAGGPLUS_ROUNDS line"),
        (f"{RESULT_MARKER}{{'samples': 1}}\n", "not one JSON object"),
        (f'{RESULT_MARKER}{{"baseline": {{}}}}\n', "holds no 'samples'"),
    ],
)
def test_parse_result_says_what_is_wrong(output: str, found: str) -> None:
    with pytest.raises(ValueError, match=found):
        parse_result(output)


def test_summarize_skips_the_first_round_and_subtracts_plain_from_secagg() -> None:
    samples = {
        "plain": [30.0, 3.0, 3.2, 3.1],
        "secagg": [50.0, 12.5, 12.0, 12.4],
        "plain_short_poll": [0.4, 0.2, 0.3, 0.25],
        "secagg_short_poll": [9.0, 1.0, 1.5, 1.25],
    }
    summary = summarize(samples)
    assert summary["seconds_per_round"] == {"plain": 3.1, "secagg": 12.4}
    assert summary["seconds_per_round_polling_like_privfed"] == {"plain": 0.25, "secagg": 1.25}
    assert summary["secagg_extra_seconds"] == pytest.approx(9.3)
    assert summary["secagg_extra_seconds_polling_like_privfed"] == pytest.approx(1.0)
    assert summary["first_round_seconds"] == {"plain": 30.0, "secagg": 50.0}
    with pytest.raises(ValueError, match="at least 2 rounds"):
        summarize({**samples, "secagg_short_poll": [1.0]})


class _SlowGrid:
    """A grid whose replies to ``push_messages`` arrive one per pull; counts the pulls."""

    def __init__(self) -> None:
        self.pulls = 0
        self.pending: list[str] = []

    def push_messages(self, messages: Any) -> list[str]:
        self.pending = [f"id{k}" for k, _ in enumerate(messages)]
        return list(self.pending)

    def pull_messages(self, ids: Any) -> list[Any]:
        self.pulls += 1
        if not self.pending:
            return []
        reply_to = self.pending.pop(0)
        assert reply_to in ids
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=reply_to))]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> str:
        return "the grid's own"


def test_poll_every_waits_for_every_reply_then_gives_the_grid_its_own_wait_back() -> None:
    grid = _SlowGrid()
    poll_every(grid, 0.001)
    replies = grid.send_and_receive(["a", "b", "c"])
    assert [r.metadata.reply_to_message_id for r in replies] == ["id0", "id1", "id2"]
    assert grid.pulls == 3
    poll_every(grid, None)
    assert grid.send_and_receive(["a"]) == "the grid's own"


def test_fixed_update_is_the_same_float32_vector_on_every_call() -> None:
    update = fixed_update(BASELINE.d)
    assert update.dtype.name == "float32" and update.shape == (BASELINE.d,)
    assert fixed_update(BASELINE.d) is update
    assert 0.005 < float(update.std()) < 0.015
    assert [name for name, _ in KINDS] == ["plain", "secagg", "plain_short_poll", "secagg_short_poll"]
