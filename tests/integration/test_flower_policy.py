"""A SuperNode's own privacy policy through privfed's Flower apps (loopback grid, as in test_flower_node_data.py).

A node with its own data (``data-path``) under record-level DP keeps its own ledger in
``context.state``, stops training at the budget its ``--node-config`` names, and reports
its spent epsilon, which the server writes to ``metrics.jsonl``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

pytest.importorskip("flwr")

from conftest import tiny_config
from flwr.app import Context, RecordDict
from test_flower_node_data import LoopbackGrid, _partition_rows, _write_csv

from privfed.client.policy import NodeLedger
from privfed.client.trainer import sampling_rate_for
from privfed.config import dump_config
from privfed.errors import ConfigError
from privfed.experiments.runner import build_experiment

DELTA = 1e-3
SIGMA = 1.0
STEPS = 3  # tiny_config's client.local_steps


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity a ServerApp process has (Flower sets it before calling main)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def _opacus_epsilon(q: float, steps: int) -> float:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(SIGMA, q, steps)]
    return float(accountant.get_epsilon(delta=DELTA))


@pytest.mark.slow  # 3 rounds of the tiny model over the loopback grid: 20-60 s on 2 shared cores
def test_a_node_with_its_own_data_stops_at_its_record_level_budget_and_reports_its_epsilon(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], server_identity: None
) -> None:
    from privfed.transport.flower import server_app

    config = tiny_config(
        **{
            "server.rounds": 3,
            "partition.num_clients": 3,
            "server.clients_per_round": 3,
            "privacy.mode": "sample",
            "privacy.delta": DELTA,
            "privacy.sample.noise_multiplier": SIGMA,  # no target: the server sets no record-level budget
        }
    )
    exp = build_experiment(config)
    rows, _ = _partition_rows(exp, 0, slice(0, 20))
    own = _write_csv(tmp_path / "node0.csv", ["label", "text"], rows)
    q_own = sampling_rate_for(config.client, 20)
    budget = _opacus_epsilon(q_own, 2 * STEPS) * (1 + 1e-9)  # room for exactly two rounds on its own 20 examples
    assert _opacus_epsilon(q_own, 3 * STEPS) > budget
    grid = LoopbackGrid(
        {
            100: {"partition-id": 0, "data-path": str(own), "max-epsilon": budget, "delta": DELTA},
            101: {"partition-id": 1},  # the run's partition, no budget of its own: it accounts and reports
            102: {"partition-id": 2},
        }
    )
    config_path = tmp_path / "experiment.toml"
    config_path.write_text(dump_config(config))
    out = tmp_path / "flower_run"
    run_config = {"config": str(config_path), "out-dir": str(out)}
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))  # type: ignore[arg-type]

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["num_clients"], r["clients_rejected"]) for r in records] == [(3, 0), (3, 0), (2, 1)]
    # node 0's ledger, as its SuperNode keeps it: two rounds of its own data, at its budget, not past it
    ledger = NodeLedger(client_id=0, delta=DELTA, budget=budget)
    ledger.load_json(grid.contexts[100].state.config_records["privfed-record-ledger"]["events"])  # type: ignore[arg-type]
    assert [(e.round, e.steps, e.sample_rate) for e in ledger.events] == [(1, STEPS, q_own), (2, STEPS, q_own)]
    assert ledger.epsilon() == pytest.approx(_opacus_epsilon(q_own, 2 * STEPS), rel=1e-9)
    assert ledger.epsilon() <= budget
    # the server's metrics: the largest epsilon any node reported, round by round
    q_part = [sampling_rate_for(config.client, len(exp.client_data[c])) for c in (1, 2)]

    def want(round: int) -> float:
        mine = _opacus_epsilon(q_own, min(round, 2) * STEPS)
        return max([mine, *(_opacus_epsilon(q, round * STEPS) for q in q_part)])

    got = [r["client_record_epsilon_max"] for r in records]
    assert got == pytest.approx([want(1), want(2), want(3)], rel=1e-6)
    assert got[0] < got[1]
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("privfed: client 0 rejected")]
    assert len(lines) == 1 and lines[0].startswith(
        "privfed: client 0 rejected in round 3: node policy: the next round would raise client 0's record-level "
        "epsilon to "
    ), err[-2000:]


def test_node_policy_comes_from_the_node_config_over_its_file_over_the_run_config(tmp_path: Path) -> None:
    """And a policy the node cannot use (a budget without its delta, an unreadable file) is a one-line ConfigError."""
    from privfed.transport.flower.client_app import node_policy

    config = tiny_config()  # no DP: the run's config names no delta
    context = Context(run_id=1, node_id=1, node_config={"max-epsilon": 2.0}, state=RecordDict(), run_config={})
    with pytest.raises(ConfigError, match=r"max_record_epsilon = 2 needs record_delta"):
        node_policy(context, config)
    file = tmp_path / "policy.toml"
    file.write_text("max-epsilon = 1.5\ndelta = 1e-5\nmin-noise-multiplier = 0.8\n")
    context = Context(
        run_id=1, node_id=1, node_config={"policy-path": str(file), "max-epsilon": 1.0}, state=RecordDict(),
        run_config={},
    )  # fmt: skip
    policy = node_policy(context, config)
    # the node config's key over the file's, the file's over the run's
    assert (policy.max_record_epsilon, policy.record_delta, policy.min_sample_noise_multiplier) == (1.0, 1e-5, 0.8)
    record_dp = tiny_config(**{"privacy.mode": "sample", "privacy.delta": 1e-4, "privacy.sample.target_epsilon": 6.0})
    empty = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert (
        node_policy(empty, record_dp).max_record_epsilon == 6.0 and node_policy(empty, record_dp).record_delta == 1e-4
    )
    missing = Context(
        run_id=1, node_id=1, node_config={"policy-path": str(tmp_path / "nope.toml")}, state=RecordDict(), run_config={}
    )
    with pytest.raises(ConfigError, match=r"node policy file .*nope.toml' cannot be read"):
        node_policy(missing, config)


def test_the_client_app_declines_with_the_policy_reason_and_never_trains(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the ClientApp's handler: a round weaker than the node's policy is a Decline plus its reason."""

    class Trainer:
        dp = None  # the server's run trains without DP-SGD
        runs = 0

        def train(self, **_: object) -> object:
            Trainer.runs += 1
            raise AssertionError("a refused round must not train")

    serve = _serving(monkeypatch, Trainer(), examples=4)
    for node_config, reason in (
        ({"max-epsilon": 2.0}, "ConfigError: node policy max_record_epsilon = 2 needs record_delta"),
        ({"max-epsilon": 2.0, "delta": 1e-5}, "node policy: the round trains without DP-SGD"),
    ):
        fields = serve(4, node_config)
        _assert_decline(fields, round=4)
        assert str(fields["error"]).startswith(reason), fields["error"]
    assert (fields["record-epsilon"], fields["record-delta"]) == (0.0, 1e-5)  # the node's ledger: nothing spent
    assert Trainer.runs == 0


def test_a_ledger_path_survives_a_supernode_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ledger-path``: the node's spent record-level epsilon is read from its own file, so a restarted
    SuperNode (empty ``context.state``) still refuses a round past its budget; a damaged file is a
    Decline with the reason, never a round trained without knowing what was spent."""

    from privfed.client.trainer import SampleDP
    from privfed.config import ClientConfig

    class Trainer:
        config = ClientConfig(local_steps=STEPS, batch_size=4)
        dp = SampleDP(noise_multiplier=SIGMA, max_grad_norm=1.0, secure_noise=False, seed=3)
        runs = 0

        def steps_for(self, n: int) -> int:
            return STEPS

        def train(self, **_: object) -> object:
            Trainer.runs += 1
            raise AssertionError("a round past the budget must not train")

    serving = _serving(monkeypatch, Trainer(), examples=10)
    ledger_path = tmp_path / "node-ledger.json"
    spent = NodeLedger(client_id=0, delta=DELTA, budget=None)
    q = sampling_rate_for(Trainer.config, 10)
    for round in (1, 2):
        spent.record(spent.event(noise_multiplier=SIGMA, sample_rate=q, steps=STEPS, round=round))
    ledger_path.write_text(spent.to_json())
    budget = spent.epsilon() * 1.01  # two rounds fit, a third would not

    def serve() -> dict[str, object]:
        return serving(3, {"max-epsilon": budget, "delta": DELTA, "ledger-path": str(ledger_path)})

    fields = serve()  # a fresh process and context: only the file knows the two rounds spent
    _assert_decline(fields, round=3)
    assert str(fields["error"]).startswith("node policy:"), fields["error"]
    assert fields["record-epsilon"] == pytest.approx(spent.epsilon(), rel=1e-12)
    assert NodeLedger(client_id=0, delta=DELTA, budget=None).events == ()  # sanity: a fresh ledger is empty
    ledger_path.write_text('[{"scope": "sample"')  # damaged
    fields = serve()
    _assert_decline(fields, round=3)
    assert str(fields["error"]).startswith("DataError: ledger-path"), fields["error"]
    assert "\n" not in str(fields["error"])
    assert Trainer.runs == 0


def _assert_decline(fields: dict[str, object], *, round: int) -> None:
    """A Decline of client 0 in ``round`` whose reason is the reply's ``error`` (cut to the wire's bound)."""
    from privfed.transport.messages import Decline

    decline = Decline.from_bytes(fields["data"])  # type: ignore[arg-type]
    assert (decline.round, decline.client_id) == (round, 0)
    assert decline.reason and str(fields["error"]).startswith(decline.reason.removesuffix("...")), decline.reason


def _serving(
    monkeypatch: pytest.MonkeyPatch, trainer: object, *, examples: int
) -> Callable[[int, dict[str, object]], dict[str, object]]:
    """``serve(round, node_config)``: a training message of ``round`` through the ClientApp's handler, as
    client 0 of a node with ``examples`` examples, ``trainer`` and a fresh ``context.state``; the reply's
    fields (the run's config is not built: the node's ``ClientSide`` is ``trainer`` on a dummy config)."""
    import types

    import numpy as np
    from flwr.app import ConfigRecord

    from privfed.config import PrivacyConfig
    from privfed.transport.flower import client_app
    from privfed.transport.flower.grid import RECORD
    from privfed.transport.messages import GlobalModel

    config = types.SimpleNamespace(seed=3, privacy=PrivacyConfig())
    side = client_app.ClientSide(config=config, client_data=[[0] * examples], trainer=trainer)  # type: ignore[arg-type, list-item]
    monkeypatch.setattr(client_app, "client_side", lambda config_toml: side)
    monkeypatch.setattr(client_app, "_reply", lambda msg, fields: fields)

    def serve(round: int, node_config: dict[str, object]) -> dict[str, object]:
        data = GlobalModel(round=round, vector=np.zeros(3, np.float32)).to_bytes()
        record = ConfigRecord({"client-id": 0, "data": data, "config": "", "round": round, "stage": "train"})
        msg = types.SimpleNamespace(content=RecordDict({RECORD: record}))
        context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, **node_config}, state=RecordDict(),
                          run_config={})  # fmt: skip
        return client_app._serve(msg, context)  # type: ignore[arg-type, return-value]

    return serve
