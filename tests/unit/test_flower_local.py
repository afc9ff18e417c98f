"""The local deployment launcher (privfed.transport.flower.local): stopping, errors, the CLI.

The start/stop tests run harmless ``sleep`` commands through the same code that starts
the SuperLink and SuperNodes; one slow test runs the CLI for real on the tiny model.
"""

from __future__ import annotations

import contextlib
import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from privfed.errors import ConfigError
from privfed.transport.flower import local
from privfed.transport.flower.local import AppRun, LocalDeployment, LocalDeploymentError, free_ports, run_config_arg

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny.toml"


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for init to reap them do not count)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _sleeper(deployment: LocalDeployment, name: str, *, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    """A process group of two: a shell and a background ``sleep`` it started (a grandchild)."""
    trap = "trap '' TERM; " if ignore_term else ""
    return deployment.start_process(name, ["sh", "-c", f"{trap}sleep 300 & {trap}sleep 300; wait"])


@pytest.fixture
def no_superlink(monkeypatch: pytest.MonkeyPatch) -> None:
    """``start`` starts two sleepers instead of Flower's processes (the same start/stop code)."""

    def start(self: LocalDeployment) -> None:
        _sleeper(self, "superlink")
        _sleeper(self, "supernode0")

    monkeypatch.setattr(LocalDeployment, "start", start)
    monkeypatch.setattr(local, "_STOP_GRACE_SECONDS", 1.0)


@pytest.mark.parametrize("raised", [RuntimeError("the body failed"), KeyboardInterrupt()])
def test_every_process_group_is_stopped_when_the_body_raises(
    tmp_path: Path, no_superlink: None, raised: BaseException
) -> None:
    with pytest.raises(type(raised)), LocalDeployment(tmp_path, num_nodes=0) as deployment:
        groups = [p.pid for p in deployment.processes.values()]
        assert sorted(deployment.processes) == ["superlink", "supernode0"]
        time.sleep(0.2)  # the shells have started their background sleeps
        assert all(_group_alive(g) for g in groups)
        raise raised
    assert not any(_group_alive(g) for g in groups)  # the shells and their sleeps: all gone
    assert all(p.returncode is not None for p in deployment.processes.values())


def test_a_group_that_ignores_sigterm_is_killed(tmp_path: Path, no_superlink: None) -> None:
    started = time.monotonic()
    with LocalDeployment(tmp_path, num_nodes=0) as deployment:
        stubborn = _sleeper(deployment, "stubborn", ignore_term=True)
        time.sleep(0.2)
    assert not _group_alive(stubborn.pid)
    assert stubborn.returncode == -signal.SIGKILL or stubborn.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - started < 15


def test_a_descendant_in_a_session_of_its_own_is_stopped_too(tmp_path: Path, no_superlink: None) -> None:
    """As the SuperLink's ``flower-superexec``: started with ``setsid``, outside the group that is killed."""
    with LocalDeployment(tmp_path, num_nodes=0) as deployment:
        parent = deployment.start_process("escaping", ["sh", "-c", "setsid sleep 301 & wait"])
        escaped, deadline = None, time.monotonic() + 10
        while escaped is None and time.monotonic() < deadline:
            for pid, _ in local._descendants([parent.pid]):
                with contextlib.suppress(OSError):
                    if (Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x00301\x00") and _group_alive(pid):
                        escaped = pid  # its own group and session: killpg(parent) does not reach it
            time.sleep(0.1)
        assert escaped is not None and escaped != parent.pid
    assert not _group_alive(escaped)


def test_a_run_past_its_timeout_is_stopped_and_names_its_log(tmp_path: Path, no_superlink: None) -> None:
    with LocalDeployment(tmp_path, num_nodes=0) as deployment:
        proc = deployment.start_process("flwr-run", ["sh", "-c", "echo waiting for the ServerApp; sleep 300"])
        run = AppRun(name="flwr-run", process=proc, log=deployment.logs / "flwr-run.log", started=time.monotonic())
        with pytest.raises(LocalDeploymentError) as caught:
            run.wait(timeout=0.5)
        assert run.poll() is not None  # killed, not left behind
        message = str(caught.value)
        assert str(deployment.logs / "flwr-run.log") in message and "waiting for the ServerApp" in message
        assert "\n" not in message

        failed = deployment.start_process("failing", ["sh", "-c", "echo boom; exit 3"])
        run = AppRun(name="failing", process=failed, log=deployment.logs / "failing.log", started=time.monotonic())
        with pytest.raises(LocalDeploymentError, match=r"failing exited with status 3; read .*failing.log .*boom"):
            run.wait(timeout=30)
        assert run.wait(timeout=30, check=False) == 3


def test_a_superlink_that_exits_is_one_line_naming_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "fake-superlink"
    fake.write_text("#!/bin/sh\necho 'address already in use' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(local, "_flower_command", lambda name: str(fake))
    with pytest.raises(LocalDeploymentError) as caught, LocalDeployment(tmp_path / "work", num_nodes=2):
        pytest.fail("the body must not run")
    message = str(caught.value)
    assert "exited with status 1" in message and "superlink.log" in message and "address already in use" in message
    config = (tmp_path / "work" / "flwrhome" / "config.toml").read_text()
    assert 'default = "local"' in config and "insecure = true" in config


def test_bad_constructor_arguments_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="num_nodes must be >= 0; got -1"):
        LocalDeployment(tmp_path, num_nodes=-1)
    with pytest.raises(ConfigError, match=r"node_config names node\(s\) \[4\], outside 0..3"):
        LocalDeployment(tmp_path, num_nodes=4, node_config={4: "x=1"})
    assert len(set(free_ports(5))) == 5


def test_run_config_arg_parses_back_with_flowers_parser() -> None:
    pytest.importorskip("flwr")
    from flwr.common.config import parse_config_args

    values: dict[str, str | bool | int | float] = {
        "config": "/a b/experiment.toml",
        "out-dir": "/runs/it's",
        "resume": True,
        "warm-up": False,
        "startup-timeout": 12.5,
        "n": 3,
    }
    assert parse_config_args([run_config_arg(values)]) == values
    with pytest.raises(ConfigError, match="both"):
        run_config_arg({"x": 'it\'s "quoted"'})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "privfed.transport.flower.local", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_input_is_one_line_exit_2_before_starting_anything(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    cases = [
        ([str(CONFIG), "--nodes", "0", "--out", "run"], "--nodes must be at least 1; got 0"),
        ([str(tmp_path / "missing.toml"), "--out", "run"], "missing.toml"),
        ([str(CONFIG), "--out", str(a_file)], "exists and is not a directory"),
        ([str(CONFIG), "--nodes", "2", "--out", "run"], "clients_per_round"),  # 3 per round > 2 clients
        ([str(CONFIG), "--rounds", "0", "--out", "run"], "--rounds must be at least 1; got 0"),
    ]
    for args, message in cases:
        done = _cli(*args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.startswith("privfed local: error: ") and done.stderr.count("\n") == 1, done.stderr
        assert message in done.stderr, (args, done.stderr)
        assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no run or work directory made


def test_cli_processes_live_as_long_as_its_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--timeout bounds the run, and every process the CLI starts outlives it (not LocalDeployment's 600 s)."""
    seen: list[float] = []

    class Stub(LocalDeployment):
        def start(self) -> None:
            seen.append(self.process_timeout)
            raise LocalDeploymentError("stub: nothing started")

    monkeypatch.setattr(local, "LocalDeployment", Stub)
    status = local.main([str(CONFIG), "--out", str(tmp_path / "run"), "--timeout", "7200"])
    assert status == 1 and seen == [7200 + local._PROCESS_MARGIN_SECONDS]


def _processes_with_home(home: Path) -> list[int]:
    """Our processes whose environment has ``FLWR_HOME=home`` (anything the launcher started)."""
    needle = f"FLWR_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow  # a SuperLink, 3 SuperNodes and a ServerApp, each importing torch: about a minute or more
def test_cli_runs_the_tiny_config_on_a_local_deployment(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "privfed.transport.flower.local", str(CONFIG), "--nodes", "3", "--rounds", "1",
         "--out", "run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    print(f"CLI run: {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    out, work = tmp_path / "run", tmp_path / "run.deployment"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["rounds"] == 1
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_clients"] for r in records] == [3]  # clients_per_round of the 3 SuperNodes
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    for line in ("superlink on 127.0.0.1:", "supernode2 started", f"run directory {out}", f"adapter {out / 'adapter'}"):
        assert line in done.stdout, done.stdout[-3000:]
    assert sorted(p.name for p in (work / "logs").iterdir()) == [
        "flwr-run.log", "superlink.log", "supernode0.log", "supernode1.log", "supernode2.log"
    ]  # fmt: skip
    assert _processes_with_home(work / "flwrhome") == []  # every process stopped
