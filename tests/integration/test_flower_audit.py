"""Auditing a Flower deployment: canary SuperNodes (``behaviour = "attacks.audit.deployment:canary"``).

The equality check runs privfed's ServerApp over the in-process loopback grid of
``test_flower_node_data.py`` (each push calls the ClientApp with that node's own node
config and state, as a SuperNode does) and compares the deployment audit, computed only
from the models the canaries received and the released final model, with the simulated
audit of the same config and seed. One slow test does the same on real SuperNodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from conftest import tiny_config
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args
from test_flower_node_data import LoopbackGrid

from attacks.audit.deployment import canary_direction, node_config_arg, plan_deployment_audit, score_deployment
from attacks.audit.federated import AuditSettings, audit_run, canary_plan
from privfed.config import dump_config
from privfed.errors import ConfigError
from privfed.transport.flower.local import LocalDeployment

NUM_CLIENTS = 6
# Seed 3 (tiny_config's) inserts candidates 0 and 3 of 4: client slots 0 and 1 are canaries.
SETTINGS = AuditSettings(epsilons=(float("inf"),), num_canaries=4, num_unobserved=10, canary_norm=1.0)


def _config() -> Any:
    return tiny_config(
        **{"server.rounds": 2, "partition.num_clients": NUM_CLIENTS, "server.clients_per_round": NUM_CLIENTS}
    )


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity a ServerApp process has (Flower sets it before calling main)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.mark.parametrize(("seed", "num_canaries", "dim"), [(3, 4, 37), (11, 9, 1), (2**62 + 1, 30, 257)])
def test_a_canary_node_draws_its_row_of_the_simulated_audits_plan(seed: int, num_canaries: int, dim: int) -> None:
    _, directions = canary_plan(seed, num_canaries=num_canaries, num_unobserved=10, dim=dim)
    for index in range(num_canaries):
        got = canary_direction(seed, index, num_canaries=num_canaries, dim=dim)
        np.testing.assert_array_equal(got, directions[index])
        assert got.dtype == np.float32 and abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
    with pytest.raises(ConfigError, match="audit-canary-index must be in 0"):
        canary_direction(seed, num_canaries, num_canaries=num_canaries, dim=dim)


def test_node_behaviour_is_imported_from_the_node_config() -> None:
    from attacks.audit.deployment import canary
    from privfed.transport.flower.client_app import node_behaviour

    def context(node_config: dict[str, Any]) -> Context:
        return Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(), run_config={})

    assert node_behaviour(context({"partition-id": 0})) is None
    assert node_behaviour(context({"behaviour": "attacks.audit.deployment:canary"})) is canary
    for bad, message in [
        ("attacks.audit.deployment", "must be 'package.module:function'"),
        ("no_such_module_here:canary", "cannot be imported"),
        ("attacks.audit.deployment:nope", "cannot be imported"),
        ("attacks.audit.deployment:BEHAVIOUR", "is not callable"),
    ]:
        with pytest.raises(ConfigError, match=message):
            node_behaviour(context({"behaviour": bad}))


def test_the_plan_refuses_an_unknown_canary_norm_without_user_dp(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"audit.canary_norm must be > 0 to audit a deployment"):
        plan_deployment_audit(_config(), AuditSettings(num_canaries=4, num_unobserved=10), tmp_path, audit_seed=3)


@pytest.mark.parametrize(
    "damage",
    ["{not json", "[]", '{"settings": {"num_canaries": "four"}}', '{"settings": {"num_canaries": 4}, "nodes": 3}'],
)
def test_a_damaged_audit_plan_is_one_line(tmp_path: Path, damage: str) -> None:
    from privfed.errors import DataError

    (tmp_path / "audit_plan.json").write_text(damage)
    with pytest.raises((DataError, ConfigError)) as caught:
        score_deployment(_config(), tmp_path, run_dir=tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and ("audit_plan.json" in message or "audit.num_canaries" in message), message


def _simulated(config: Any, out: Path) -> dict[str, Any]:
    return dict(audit_run(config, SETTINGS, out))


def _assert_same_audit(
    sim_dir: Path, sim: dict[str, Any], dep_dir: Path, dep: dict[str, Any], *, every_canary_sampled: bool = True
) -> None:
    written = json.loads((dep_dir / "audit_results.json").read_text())
    assert [r["run"] for r in written] == ["deployment"]
    # the simulated audit's record is {"run", "target_epsilon", **audit_run(...)} (run_audit)
    assert set(written[0]) == {"run", "target_epsilon", *sim}
    want, got = np.load(sim_dir / "canary_scores.npz"), np.load(dep_dir / "canary_scores.npz")
    np.testing.assert_array_equal(got["included"], want["included"])
    assert int(want["included"].sum()) == 2
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["null_scores"], want["null_scores"], rtol=0, atol=1e-5)
    # the inserted canaries are found: their final-model cosines stand far above the never-inserted ones
    found = got["scores"][got["included"]] > 5 * np.abs(got["null_scores"]).max()
    assert found.all() if every_canary_sampled else found.any()
    for key in ("num_inserted", "mean_participations", "canary_norm", "rounds", "record_num_members"):
        assert dep[key] == sim[key], key
    for key in ("auc", "final_model_auc", "epsilon_lower_bound_one_run", "one_shot_mu", "record_loss_auc"):
        assert dep[key] == pytest.approx(sim[key], abs=1e-4), key


def _loopback_run(tmp_path: Path, config: Any, nodes: list[dict[str, Any]], **run_config: Any) -> Path:
    """``config`` run by privfed's ServerApp over the loopback grid, canary slots with their node configs
    (``run_config``: more of the ServerApp's run config, e.g. ``observers``)."""
    from privfed.transport.flower import server_app

    configs = {100 + k: {"partition-id": k} for k in range(NUM_CLIENTS)}
    configs.update({100 + int(n["partition-id"]): dict(n) for n in nodes})
    config_path = tmp_path / "experiment.toml"
    config_path.write_text(dump_config(config))
    run = tmp_path / "flower_run"
    run_config = {"config": str(config_path), "out-dir": str(run), **run_config}
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    server_app.main(LoopbackGrid(configs), server)  # type: ignore[arg-type]
    return run


@pytest.mark.slow  # ~45 s on 2 loaded cores: the simulated audit, the same run over the grid, the scoring
def test_deployment_audit_over_the_loopback_grid_equals_the_simulated_audit(
    tmp_path: Path, server_identity: None
) -> None:
    config = _config()
    started = time.monotonic()
    sim = _simulated(config, tmp_path / "simulated")
    simulated_s = time.monotonic() - started

    audit = tmp_path / "audit"
    nodes = plan_deployment_audit(config, SETTINGS, audit, audit_seed=config.seed)
    assert [n["partition-id"] for n in nodes] == [0, 1] and [n["audit-canary-index"] for n in nodes] == [0, 3]
    *lines, server_line = (audit / "canary_nodes.txt").read_text().splitlines()
    # what the operator pastes after --node-config parses back to the plan's node configs (Flower's parser)
    assert [parse_config_args([line.removeprefix("--node-config ").strip("'")]) for line in lines] == nodes
    assert server_line == "# and the ServerApp: flwr run ... --run-config \"observers='0,1'\""
    started = time.monotonic()
    run = _loopback_run(tmp_path, config, nodes)
    # every canary kept the global model of both rounds it was sampled in
    assert sorted(p.relative_to(audit / "received").as_posix() for p in (audit / "received").rglob("*.npy")) == [
        f"canary-{i}/round-{r:05d}.npy" for i in (0, 3) for r in (1, 2)
    ]
    dep = score_deployment(config, audit, run_dir=run)
    print(f"simulated audit {simulated_s:.1f} s; loopback deployment + scoring {time.monotonic() - started:.1f} s")
    _assert_same_audit(tmp_path / "simulated", sim, audit, dep)

    # a round no canary received cannot be scored: the white-box view needs every round's model
    (audit / "received" / "canary-0" / "round-00002.npy").unlink()
    (audit / "received" / "canary-3" / "round-00002.npy").unlink()
    with pytest.raises(Exception, match=r"round\(s\) \[2\]"):
        score_deployment(config, audit, run_dir=run)


@pytest.mark.slow  # ~60 s on 2 loaded cores: the simulated audit, the run over the grid, the scoring
def test_canaries_observe_the_rounds_they_are_not_sampled_in(tmp_path: Path, server_identity: None) -> None:
    """With clients sampled, a round may have no canary in its cohort (seed 3, 2 of 6 per round: round 2
    samples clients 3 and 4); the ServerApp's ``observers`` show the canaries that round's model, and the
    deployment audit equals the simulated one. Observing trains nothing and counts in bytes_down only."""
    config = tiny_config(**{"server.rounds": 2, "partition.num_clients": NUM_CLIENTS, "server.clients_per_round": 2})
    from privfed.server import sample_cohort

    cohorts = [sorted(int(c) for c in sample_cohort(seed=3, round=r, num_clients=NUM_CLIENTS, clients_per_round=2))
               for r in (1, 2)]  # fmt: skip
    assert cohorts == [[0, 3], [3, 4]]  # canary slots 0 and 1: only slot 0, only in round 1
    sim = _simulated(config, tmp_path / "simulated")
    audit = tmp_path / "audit"
    nodes = plan_deployment_audit(config, SETTINGS, audit, audit_seed=config.seed)
    plan = json.loads((audit / "audit_plan.json").read_text())
    assert plan["run_config"] == "observers='0,1'"
    run = _loopback_run(tmp_path, config, nodes, observers=parse_config_args([plan["run_config"]])["observers"])
    received = sorted(p.relative_to(audit / "received").as_posix() for p in (audit / "received").rglob("*.npy"))
    # canary 0 (slot 0) trained in round 1 and observed round 2; canary 3 (slot 1) observed both
    assert received == [f"canary-{i}/round-{r:05d}.npy" for i in (0, 3) for r in (1, 2)]
    dep = score_deployment(config, audit, run_dir=run)
    # only canary 0 was ever sampled (and is found); canary 3's upload never reached a round
    _assert_same_audit(tmp_path / "simulated", sim, audit, dep, every_canary_sampled=False)
    assert dep["mean_participations"] == sim["mean_participations"] == 0.5
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients_sampled"] for r in records] == [2, 2] and [r["num_clients"] for r in records] == [2, 2]
    # a plain round's model message per cohort member, plus one per observer outside it (1, then 2)
    assert records[0]["bytes_down"] * 4 == records[1]["bytes_down"] * 3
    # without observers, round 2 reached no canary: scoring says which round and what to run
    for path in (audit / "received").glob("canary-*/round-00002.npy"):
        path.unlink()
    with pytest.raises(Exception, match=r"round\(s\) \[2\].*observers='0,1'"):
        score_deployment(config, audit, run_dir=run)


def test_the_observers_run_config_is_checked() -> None:
    from privfed.transport.flower.server_app import parse_observers

    assert parse_observers("", num_clients=4) == () and parse_observers(" 3, 0,3 ", num_clients=4) == (0, 3)
    assert parse_observers(2, num_clients=4) == (2,)
    for bad in ("4", "0,,1", "-1", "a", "²", 1.0, True, None):
        with pytest.raises(ConfigError, match=r"run config 'observers' must be client ids in 0\.\.3"):
            parse_observers(bad, num_clients=4)


@pytest.mark.slow  # 2 SecAgg+ rounds over the loopback grid
def test_deployment_audit_under_secagg_and_user_dp(tmp_path: Path, server_identity: None) -> None:
    """The simulated audit cannot run under SecAgg+; canary SuperNodes can: their uploads are clipped,
    encoded and masked like any client's, and the audit of the released models respects the accountant."""
    config = tiny_config(
        **{
            "server.rounds": 2,
            "partition.num_clients": NUM_CLIENTS,
            "server.clients_per_round": NUM_CLIENTS,  # Poisson with q = 1: every node, every round
            "server.weighting": "uniform",
            "secagg.enabled": True,
            "privacy.mode": "user",
            "privacy.delta": 1e-2,
            "privacy.user.target_epsilon": 3.0,
        }
    )
    settings = AuditSettings(num_canaries=4, num_unobserved=10)  # canary_norm 0: the clip norm
    audit = tmp_path / "audit"
    nodes = plan_deployment_audit(config, settings, audit, audit_seed=config.seed)
    assert [n["audit-canary-norm"] for n in nodes] == [config.privacy.user.clip_norm] * 2
    run = _loopback_run(tmp_path, config, nodes)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["num_clients"] for r in records] == [NUM_CLIENTS, NUM_CLIENTS]  # the canaries' uploads were summed
    assert all(r["secagg_aborted"] is None for r in records)
    record = score_deployment(config, audit, run_dir=run)
    assert record["mean_participations"] == 2.0 and record["num_inserted"] == 2
    assert record["epsilon"] == pytest.approx(records[-1]["epsilon_user"], rel=1e-12)
    assert not record["bound_violated"] and record["epsilon_lower_bound_one_run"] <= record["epsilon"]


@pytest.mark.slow
def test_deployment_audit_on_real_supernodes_equals_the_simulated_audit(tmp_path: Path) -> None:
    from test_flower_deployment import APP, RUN_SECONDS, _run_config, _stage

    config = replace_transport(_config())
    sim = _simulated(config, tmp_path / "simulated")
    audit = tmp_path / "audit"
    nodes = plan_deployment_audit(config, SETTINGS, audit, audit_seed=config.seed)
    config_path, out = _stage(tmp_path, config)
    # node k gets "partition-id=k"; the rest of each canary's node config as the operator would
    node_config = {
        int(n["partition-id"]): node_config_arg({k: v for k, v in n.items() if k != "partition-id"}) for n in nodes
    }
    started = time.monotonic()
    with LocalDeployment(tmp_path, num_nodes=NUM_CLIENTS, node_config=node_config, process_timeout=RUN_SECONDS) as dep:
        run = dep.run_app(APP, _run_config(config_path, out), check=False)
    assert (out / "summary.json").exists(), run.output()[-3000:]
    record = score_deployment(config, audit, run_dir=out)
    print(f"deployment audit on {NUM_CLIENTS} SuperNodes: {time.monotonic() - started:.1f} s")
    _assert_same_audit(tmp_path / "simulated", sim, audit, record)


def replace_transport(config: Any) -> Any:
    """The deployment's reply timeout (the in-process audit ignores it)."""
    from privfed.config import replace_path

    return replace_path(config, "transport.reply_timeout", 180.0)
