"""privfed on Flower's Deployment Engine: a SuperLink and 4 SuperNodes on 127.0.0.1, `flwr run`.

Every process runs in its own process group under a wall-clock bound and is killed
in a ``finally``, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from conftest import tiny_config
from safetensors.numpy import load_file

from privfed.config import dump_config, replace_path
from privfed.experiments.runner import run_experiment

APP = Path(__file__).resolve().parents[2] / "examples" / "flower_app"
BIN = Path(sys.executable).parent
NUM_NODES = 4
RUN_SECONDS = 600


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Processes:
    """Started daemons, each its own process group; ``stop`` kills them all."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            ["timeout", str(RUN_SECONDS), *args],
            cwd=cwd,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
            if sig == signal.SIGTERM:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                    time.sleep(0.1)
        for proc in self.procs:
            proc.wait(timeout=10)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A SuperLink (insecure) and 4 SuperNodes with partition-id 0..3 on free loopback ports."""
    home = tmp_path / "flwrhome"
    home.mkdir()
    link_port, *node_ports = _free_ports(1 + NUM_NODES)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\naddress = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "COLUMNS": "200",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    link_cwd = tmp_path / "link"
    link_cwd.mkdir()
    procs = _Processes(env, logs)
    try:
        procs.start(
            "superlink",
            [str(BIN / "flower-superlink"), "--insecure", "--port", str(link_port),
             "--disable-runtime-dependency-installation"],
            link_cwd,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{link_port}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError((logs / "superlink.log").read_text()[-2000:]) from None
                time.sleep(0.3)
        for k, port in enumerate(node_ports):
            procs.start(
                f"supernode{k}",
                [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                 "--port", str(port), "--node-config", f"partition-id={k}"],
                tmp_path,
            )  # fmt: skip
        yield {"env": env, "logs": logs, "cwd": tmp_path}
    finally:
        procs.stop()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_flower_deployment_secagg_user_dp_matches_in_process(tmp_path: Path, deployment: dict[str, Any]) -> None:
    config = tiny_config(
        **{
            "server.rounds": 2,
            "partition.num_clients": NUM_NODES,
            "server.clients_per_round": NUM_NODES,
            "server.weighting": "uniform",
            "secagg.enabled": True,
            "privacy.mode": "user",
            "privacy.delta": 1e-2,
            "privacy.user.target_epsilon": 3.0,
            "transport.reply_timeout": 180.0,
        }
    )
    config_path = tmp_path / "experiment.toml"
    config_path.write_text(dump_config(config))
    out = tmp_path / "flower_run"
    app = tmp_path / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    started = time.monotonic()
    run = subprocess.run(
        [str(BIN / "flwr"), "run", str(app), "deploy", "--stream",
         "--run-config", f"config='{config_path}' out-dir='{out}'"],
        cwd=deployment["cwd"], env=deployment["env"], capture_output=True, text=True, timeout=RUN_SECONDS,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert (out / "summary.json").exists(), (run.stdout[-3000:], run.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["trained"], summary
    print(f"flwr run: {seconds:.1f} s; rounds: {[round(r['seconds'], 2) for r in _records(out)]}")

    reference = tmp_path / "in_process"
    run_experiment(replace_path(config, "transport.kind", "simulation"), reference, quiet=True)
    for a, b in zip(_records(reference), _records(out), strict=True):
        assert b["num_clients"] == a["num_clients"] >= 3
        assert b["secagg_aborted"] is None and b["dropped_clients"] == a["dropped_clients"] == 0
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
        assert b["eval_accuracy"] == pytest.approx(a["eval_accuracy"], abs=1e-9)
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sorted(want) == sorted(got) and want
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
