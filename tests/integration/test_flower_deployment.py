"""privfed on Flower's Deployment Engine: a SuperLink and 4 SuperNodes on 127.0.0.1, `flwr run`.

The SuperNodes are privfed's (``python -m privfed.transport.flower.supernode``: Flower's
SuperNode with a long-lived ClientApp worker); the TLS test starts Flower's own.

The processes are started and stopped by :class:`privfed.transport.flower.local.LocalDeployment`
(each its own process group under a wall-clock bound, all stopped on exit, also when a test fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
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
from privfed.transport.flower.local import LocalDeployment, TLSCertificates, default_app_dir

APP = default_app_dir()
NUM_NODES = 4
RUN_SECONDS = 600


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[LocalDeployment]:
    """A SuperLink (insecure) and 4 of privfed's SuperNodes with partition-id 0..3 on free loopback ports."""
    with LocalDeployment(tmp_path, num_nodes=NUM_NODES, process_timeout=RUN_SECONDS) as running:
        yield running


def _run_config(config_path: Path, out: Path, **extra: str | bool) -> dict[str, str | bool | int | float]:
    """The privfed ServerApp's run config: the experiment config and the run directory."""
    return {"config": str(config_path), "out-dir": str(out), **extra}


def _secagg_user_dp_config() -> Any:
    """Two rounds of SecAgg+ with user-level DP over every node."""
    return tiny_config(
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


def _stage(tmp_path: Path, config: Any) -> tuple[Path, Path]:
    """The experiment config written for the ServerApp, and the run directory to use."""
    config_path = tmp_path / "experiment.toml"
    config_path.write_text(dump_config(config))
    return config_path, tmp_path / "flower_run"


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_flower_deployment_secagg_user_dp_matches_in_process(tmp_path: Path, deployment: LocalDeployment) -> None:
    config = _secagg_user_dp_config()
    config_path, out = _stage(tmp_path, config)
    started = time.monotonic()
    run = deployment.run_app(APP, _run_config(config_path, out), check=False)
    seconds = time.monotonic() - started
    assert (out / "summary.json").exists(), run.output()[-3000:]
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


# --- A SuperNode killed after key sharing in a SecAgg+ round --------------------------------
# Seed 12, 5 clients, user-level DP (Poisson, q = 4/5): round 1 samples [0, 1, 2, 3], round 2
# [0, 1, 3]. Client 2's SuperNode is killed once it has answered round 1's "share" stage.
KILL_SEED, KILL_NODES, VICTIM = 12, 5, 2


def _kill_config(threshold: int) -> Any:
    return tiny_config(
        **{
            "seed": KILL_SEED,
            "server.rounds": 2,
            "partition.num_clients": KILL_NODES,
            "server.clients_per_round": 4,
            "server.weighting": "uniform",
            "secagg.enabled": True,
            "secagg.threshold": threshold,
            "privacy.mode": "user",
            "privacy.delta": 1e-2,
            "privacy.user.target_epsilon": 3.0,
            "transport.reply_timeout": 60.0,
        }
    )


def _victim_drops_before_collect(round: int, cohort: Any) -> Any:
    from privfed.secagg.driver import DropoutPlan

    return DropoutPlan({"collect": frozenset({VICTIM})} if round == 1 else {})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("threshold", "recovers"), [(0, True), (4, False)], ids=["survivors-reach-threshold", "below-threshold"]
)
def test_supernode_killed_after_key_sharing(tmp_path: Path, threshold: int, recovers: bool) -> None:
    from privfed.server import sample_cohort
    from privfed.transport.simulation import SimulationTransport

    cohorts = [
        [
            int(c)
            for c in sample_cohort(seed=KILL_SEED, round=r, num_clients=KILL_NODES, clients_per_round=4, poisson=True)
        ]
        for r in (1, 2)
    ]
    assert cohorts == [[0, 1, 2, 3], [0, 1, 3]]
    config = _kill_config(threshold)
    config_path, out = _stage(tmp_path, config)
    marker = tmp_path / "victim-shared"
    faults = [
        {"client": VICTIM, "round": 1, "stage": "share", "action": "marker", "path": str(marker)},
        # never answers "collect" on its own, however late the kill lands
        {"client": VICTIM, "round": 1, "stage": "collect", "action": "sleep", "seconds": 300},
    ]
    started = time.monotonic()
    victim_env = {VICTIM: {"PRIVFED_TEST_FAULTS": json.dumps(faults)}}
    with LocalDeployment(tmp_path, num_nodes=KILL_NODES, node_env=victim_env, process_timeout=RUN_SECONDS) as dep:
        run = dep.start_app(APP, _run_config(config_path, out))
        killed_at = None
        deadline = time.monotonic() + RUN_SECONDS - 30
        while run.poll() is None and time.monotonic() < deadline:
            if killed_at is None and marker.exists():
                time.sleep(5.0)  # let the node's "share" reply reach the SuperLink
                os.killpg(dep.processes[f"supernode{VICTIM}"].pid, signal.SIGKILL)
                killed_at = time.monotonic() - started
            time.sleep(0.5)
        log = run.output()
        assert run.poll() == 0, log[-3000:]
    seconds = time.monotonic() - started
    assert killed_at is not None and marker.read_text() == "1 share\n", log[-3000:]
    records = _records(out)
    print(f"kill test ({'recovers' if recovers else 'aborts'}): {seconds:.1f} s, killed at {killed_at:.1f} s; "
          f"rounds: {[round(r['seconds'], 1) for r in records]}")  # fmt: skip
    r1, r2 = records
    assert r1["clients_sampled"] == 4 and r1["clients_dropped"] == 1 and r1["clients_answered"] == 3
    if recovers:  # dropout recovery: the 3 survivors' sum, each counted once
        assert r1["secagg_aborted"] is None and r1["num_clients"] == 3 and r1["update_applied"]
    else:
        assert r1["secagg_aborted"] and r1["num_clients"] == 0 and not r1["update_applied"]
    # the next round proceeds without the dead node (not sampled) and completes
    assert r2["secagg_aborted"] is None and r2["num_clients"] == 3 and r2["clients_dropped"] == 0

    # The same run in process, with the victim dropping before "collect" in round 1.
    reference = tmp_path / "in_process"
    run_experiment(
        replace_path(config, "transport.kind", "simulation"),
        reference,
        quiet=True,
        transport_hook=lambda t: SimulationTransport(nodes=t.nodes, dropouts=_victim_drops_before_collect),  # type: ignore[attr-defined]
    )
    for a, b in zip(_records(reference), records, strict=True):
        assert (b["num_clients"], b["secagg_aborted"] is None) == (a["num_clients"], a["secagg_aborted"] is None)
        # the ledger charged exactly the same rounds: every round released a (noised) model once
        assert b["epsilon_user"] == pytest.approx(a["epsilon_user"], rel=1e-12)
        assert b["update_norm"] == pytest.approx(a["update_norm"], rel=1e-4, abs=1e-7)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["rounds"] == 2
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)


# --- TLS: a SuperNode that does not trust the SuperLink's certificate never joins -----------
def _certificates(where: Path) -> None:
    """A CA and a SuperLink certificate for localhost/127.0.0.1 signed by it; an unrelated CA."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True, timeout=60)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=privfed-test-ca")  # fmt: skip
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (where / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")  # fmt: skip
    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "wrong.key", "-out", "wrong_ca.crt", "-days", "2",
        "-subj", "/CN=someone-else")  # fmt: skip


@pytest.mark.slow
def test_tls_supernode_with_the_wrong_ca_is_refused(tmp_path: Path) -> None:
    """Flower's TLS authenticates the SuperLink to the nodes: a node given another CA fails the
    handshake and exits without registering; a node with the right CA registers. (A SuperLink
    refusing unknown nodes needs Flower's SuperNode authentication, which this does not test.)"""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificates(certs)
    tls = TLSCertificates(ca_certfile=certs / "ca.crt", certfile=certs / "server.pem", keyfile=certs / "server.key")
    started = time.monotonic()
    # the certificate names localhost; plain flower-supernode (no ClientApp runs here)
    with LocalDeployment(tmp_path, num_nodes=0, supernode="flower", tls=tls, host="localhost") as dep:
        logs = dep.logs

        def node(name: str, ca: str) -> subprocess.Popen[bytes]:
            return dep.start_supernode(0, name=name, root_certificates=certs / ca)

        good = node("good", "ca.crt")
        bad = node("bad", "wrong_ca.crt")
        deadline = time.monotonic() + 90
        while bad.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        bad_log = (logs / "bad.log").read_text(errors="replace")
        assert bad.poll() not in (None, 0), bad_log[-2000:]  # exited with an error
        assert "CERTIFICATE_VERIFY_FAILED" in bad_log, bad_log[-2000:]
        link_log = (logs / "superlink.log").read_text(errors="replace")
        deadline = time.monotonic() + 60
        while "Activated node_id" not in link_log and time.monotonic() < deadline:
            time.sleep(0.5)
            link_log = (logs / "superlink.log").read_text(errors="replace")
        assert good.poll() is None, (logs / "good.log").read_text()[-2000:]
        assert link_log.count("Activated node_id") == 1, link_log[-3000:]  # only the node that trusts the link
        print(f"TLS test: bad node exited {bad.returncode} after {time.monotonic() - started:.1f} s")


# --- The ServerApp killed between rounds, then resumed ----------------------------------------
def _serverapp_pids(ancestor: int) -> list[int]:
    """Processes running ``flwr-serverapp`` that descend from process ``ancestor`` (the SuperLink's)."""
    parent, command = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue

    def descends(pid: int) -> bool:
        for _ in range(64):
            if pid == ancestor:
                return True
            if pid not in parent or pid <= 1:
                return False
            pid = parent[pid]
        return False

    return [pid for pid, cmd in command.items() if b"flwr-serverapp" in cmd and descends(pid)]


@pytest.mark.slow
def test_serverapp_killed_between_rounds_resumes_to_the_same_result(
    tmp_path: Path, deployment: LocalDeployment
) -> None:
    config = _secagg_user_dp_config()
    config_path, out = _stage(tmp_path, config)
    link = deployment.processes["superlink"]

    started = time.monotonic()
    first = deployment.start_app(APP, _run_config(config_path, out), name="flwr-run-1")
    deadline = time.monotonic() + RUN_SECONDS - 60
    while not (out / "checkpoint.safetensors").exists():  # written after round 1's metrics
        assert first.poll() is None and time.monotonic() < deadline, first.output()
        time.sleep(0.2)
    pids = _serverapp_pids(link.pid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    killed_at = time.monotonic() - started
    with contextlib.suppress(subprocess.TimeoutExpired):
        first.process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(first.process.pid, signal.SIGKILL)
    assert len(_records(out)) == 1 and not (out / "summary.json").exists()  # it died after round 1

    second = deployment.start_app(APP, _run_config(config_path, out, resume=True), name="flwr-run-2")
    second.process.wait(timeout=RUN_SECONDS)
    seconds = time.monotonic() - started
    log = second.output()
    assert second.poll() == 0 and (out / "summary.json").exists(), log[-3000:]
    print(f"resume test: {seconds:.1f} s, ServerApp killed at {killed_at:.1f} s")

    reference = tmp_path / "in_process"
    run_experiment(replace_path(config, "transport.kind", "simulation"), reference, quiet=True)
    want_records, got_records = _records(reference), _records(out)
    assert [r["round"] for r in got_records] == [1, 2]
    for a, b in zip(want_records, got_records, strict=True):
        assert b["epsilon_user"] == pytest.approx(a["epsilon_user"], rel=1e-12)  # each round charged once
        assert b["num_clients"] == a["num_clients"] and b["secagg_aborted"] is None
        assert b["update_norm"] == pytest.approx(a["update_norm"], rel=1e-4, abs=1e-7)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["rounds"] == 2
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)


# --- Each SuperNode reads its own data (data-path in its --node-config) ------------------------
@pytest.mark.slow
def test_supernodes_train_on_their_own_data_path(tmp_path: Path) -> None:
    """Node 0 trains on its own file (half of its partition, as JSON lines), node 1's file is
    missing (it is rejected each round, one line in the ServerApp's log), nodes 2 and 3 take their
    partition; the adapter equals the in-process run with the same data and the same rejection."""
    from test_flower_node_data import _Declines, _partition_rows

    from privfed.client.node import ClientNode
    from privfed.experiments.runner import build_experiment
    from privfed.transport.simulation import SimulationTransport

    config = tiny_config(
        **{
            "server.rounds": 2,
            "partition.num_clients": NUM_NODES,
            "server.clients_per_round": NUM_NODES,
            "transport.reply_timeout": 180.0,
        }
    )
    exp = build_experiment(config)
    half = slice(0, len(exp.client_indices[0]) // 2)
    rows, kept = _partition_rows(exp, 0, half)
    own = tmp_path / "client0.jsonl"
    own.write_text("".join(json.dumps({"text": text, "label": label}) + "\n" for label, text in rows))
    missing = tmp_path / "client1.csv"
    config_path, out = _stage(tmp_path, config)
    paths = {0: f"data-path='{own}'", 1: f"data-path='{missing}'"}
    started = time.monotonic()
    with LocalDeployment(tmp_path, num_nodes=NUM_NODES, node_config=paths, process_timeout=RUN_SECONDS) as dep:
        run = dep.run_app(APP, _run_config(config_path, out), check=False)
    log = run.output()
    assert (out / "summary.json").exists(), log[-3000:]
    print(f"data-path test: {time.monotonic() - started:.1f} s")
    records = _records(out)
    assert [(r["clients_rejected"], r["num_clients"]) for r in records] == [(1, 3), (1, 3)]
    line = f"privfed: client 1 rejected in round 1: DataError: data-path '{missing}' of this SuperNode does not exist"
    assert log.count(line) == 1, log[-3000:]  # once, not once per round

    def same_data(t: Any) -> SimulationTransport:
        n0 = t.nodes[0]
        own_node = ClientNode(client_id=0, trainer=n0.trainer, data=n0.data.subset(kept), seed=config.seed)
        return SimulationTransport(nodes=[own_node, _Declines(1), *t.nodes[2:]])  # type: ignore[list-item]

    reference = tmp_path / "in_process"
    run_experiment(
        replace_path(config, "transport.kind", "simulation"), reference, quiet=True, transport_hook=same_data
    )
    for a, b in zip(_records(reference), records, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)


# --- A SuperNode's ClientApp worker that dies is started again ------------------------------
WORKER_VICTIM = 1


class _SilentIn:
    """A client node that stays silent in one round (the in-process picture of a lost reply)."""

    def __init__(self, node: Any, round: int) -> None:
        self.node, self.round = node, round

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def handle(self, data: bytes) -> bytes | None:
        from privfed.transport.messages import GlobalModel

        if GlobalModel.from_bytes(data).round == self.round:
            return None
        return self.node.handle(data)


@pytest.mark.slow
def test_a_dead_clientapp_worker_is_restarted_and_its_node_trains_the_next_round(tmp_path: Path) -> None:
    """privfed's SuperNode runs one long-lived ClientApp worker; when it dies (here: it exits on
    receiving round 2's message, before answering), the node starts a new one. Round 2 goes on
    without the lost reply (or with it, if Flower hands the task to the new worker in time);
    round 3 has every node again, and the final adapter equals the in-process run with the same
    node silent (or not) in round 2."""
    from privfed.transport.simulation import SimulationTransport

    config = tiny_config(
        **{
            "server.rounds": 3,
            "partition.num_clients": NUM_NODES,
            "server.clients_per_round": NUM_NODES,
            "transport.reply_timeout": 45.0,
        }
    )
    config_path, out = _stage(tmp_path, config)
    crashed = tmp_path / "worker-crashed"
    faults = [{"client": WORKER_VICTIM, "round": 2, "stage": "train", "action": "exit", "path": str(crashed)}]
    env = {WORKER_VICTIM: {"PRIVFED_TEST_FAULTS": json.dumps(faults)}}
    with LocalDeployment(tmp_path, num_nodes=NUM_NODES, node_env=env, process_timeout=RUN_SECONDS) as dep:
        run = dep.run_app(APP, _run_config(config_path, out), check=False)
        node_log = (dep.logs / f"supernode{WORKER_VICTIM}.log").read_text(errors="replace")
    assert crashed.read_text() == "2 train\n", run.output()[-3000:]
    assert "ClientApp worker exited (3); starting it again" in node_log, node_log[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["rounds"] == 3, run.output()[-3000:]
    r1, r2, r3 = _records(out)
    assert r1["clients_answered"] == r3["clients_answered"] == r3["num_clients"] == NUM_NODES
    lost = r2["clients_answered"] == NUM_NODES - 1
    assert lost or r2["clients_answered"] == NUM_NODES, r2
    assert r2["num_clients"] == r2["clients_answered"] and r2["clients_dropped"] == (1 if lost else 0)
    print(f"worker restart: round 2 {'lost' if lost else 'kept'} the victim's reply; rounds "
          f"{[round(r['seconds'], 1) for r in (r1, r2, r3)]} s")  # fmt: skip

    reference = tmp_path / "in_process"
    silent = 2 if lost else 0

    def hook(t: Any) -> Any:
        nodes = [_SilentIn(n, silent) if i == WORKER_VICTIM else n for i, n in enumerate(t.nodes)]
        return SimulationTransport(nodes=nodes)

    run_experiment(replace_path(config, "transport.kind", "simulation"), reference, quiet=True, transport_hook=hook)
    for a, b in zip(_records(reference), _records(out), strict=True):
        assert (a["num_clients"], a["clients_dropped"]) == (b["num_clients"], b["clients_dropped"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    want = load_file(str(reference / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
