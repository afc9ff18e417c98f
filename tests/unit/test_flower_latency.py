"""privfed's shorter waits in Flower's polling loops, and its SuperNode launcher's arguments."""

from __future__ import annotations

import functools
import re
import time

import pytest

pytest.importorskip("flwr")

import flwr
import flwr.superlink.grid.http_grid as http_grid
import flwr.supernode.start_client_internal as loop

from privfed.transport.flower import latency, supernode


@pytest.fixture
def restore_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undo the patches after the test (they replace module globals of Flower)."""
    monkeypatch.setitem(vars(loop), "time", vars(loop)["time"])
    monkeypatch.setitem(vars(loop), "pull_objects", vars(loop)["pull_objects"])
    monkeypatch.setitem(vars(http_grid), "pull_objects", vars(http_grid)["pull_objects"])


def test_supernode_sleeps_are_capped_and_pulls_retried_early(restore_flower: None) -> None:
    assert latency.cap_supernode_waits(cap=0.01) is True
    started = time.perf_counter()
    capped = vars(loop)["time"]
    capped.sleep(3)  # Flower's idle wait
    assert time.perf_counter() - started < 0.5
    assert capped.monotonic() == pytest.approx(time.monotonic(), abs=1.0)  # the rest is the real module
    pulls = vars(loop)["pull_objects"]
    assert isinstance(pulls, functools.partial)
    assert pulls.keywords["initial_backoff"] == latency.OBJECT_PULL_BACKOFF_SECONDS < 1
    latency.cap_supernode_waits(cap=0.01)
    assert vars(loop)["pull_objects"] is pulls  # applying twice does not wrap twice


def test_grid_object_pulls_retried_early(restore_flower: None) -> None:
    original = vars(http_grid)["pull_objects"]
    # an earlier test in this process may have started a ServerApp, which applies the cap already
    base = original.func if isinstance(original, functools.partial) else original
    assert latency.cap_grid_object_pulls() is True
    pulls = vars(http_grid)["pull_objects"]
    assert isinstance(pulls, functools.partial)
    assert pulls.func is base
    assert pulls.keywords["backoff_cap"] < 1
    assert latency.cap_grid_object_pulls() is True
    assert vars(http_grid)["pull_objects"] is pulls  # applying twice does not wrap twice


def test_other_flower_versions_are_left_alone(
    restore_flower: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    before = (vars(loop)["time"], vars(loop)["pull_objects"], vars(http_grid)["pull_objects"])
    assert latency.cap_supernode_waits(cap=0.05) is False
    assert latency.cap_grid_object_pulls() is False
    assert (vars(loop)["time"], vars(loop)["pull_objects"], vars(http_grid)["pull_objects"]) == before
    assert "flwr 1.43.0 is not 1.42.0" in capsys.readouterr().err


@pytest.mark.parametrize("cap", [0.0, 5.0])
def test_cap_out_of_range_is_refused(cap: float) -> None:
    with pytest.raises(ValueError, match=r"cap must be between 0\.001 and 3 seconds"):
        latency.cap_supernode_waits(cap=cap)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--insecure", "--isolation", "subprocess"], "--isolation must be 'process'; got subprocess"),
        (["--insecure", "--poll-interval", "5"], "--poll-interval must be between 0.001 and 3 seconds; got 5"),
        (["--insecure", "--poll-interval=0"], "--poll-interval must be between 0.001 and 3 seconds; got 0"),
    ],
)
def test_launcher_refuses_bad_arguments_before_starting_anything(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=re.escape(message)):
        supernode.main(argv)


def test_option_reads_both_spellings() -> None:
    assert supernode._option(["--port", "9095", "--host=0.0.0.0"], "--port") == "9095"
    assert supernode._option(["--port", "9095", "--host=0.0.0.0"], "--host") == "0.0.0.0"
    assert supernode._option(["--port"], "--port") is None
