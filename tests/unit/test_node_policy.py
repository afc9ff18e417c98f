"""A node-local privacy policy: the node checks the server's instructions and keeps its own record-level ledger."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privfed.adapters import AdapterLayout
from privfed.client.node import ClientNode
from privfed.client.policy import NodeLedger, NodePolicy, local_noise_multiplier
from privfed.client.stages import ClipStage, DistributedNoiseStage, UploadPipeline
from privfed.client.trainer import LocalResult, SampleDP, local_steps, sampling_rate_for
from privfed.config import ClientConfig, SecAggConfig
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy.dpfedavg import DPFedAvgServer
from privfed.server import FedAvg, FederatedServer
from privfed.transport.messages import ClientUpdate, Decline, GlobalModel, SecureRoundRequest, message_kind
from privfed.transport.simulation import SimulationTransport

DELTA = 1e-3


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    """Opacus' own RDP accountant, independently of privfed's accountant wrapper and caches."""
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return float(accountant.get_epsilon(delta=delta))


class _Trainer:
    """A DP-SGD trainer stand-in: counts its runs, returns a small delta."""

    def __init__(self, *, dp: SampleDP | None, config: ClientConfig, dim: int = 4) -> None:
        self.dp, self.config, self.dim = dp, config, dim
        self.runs = 0

    def steps_for(self, num_examples: int) -> int:
        return local_steps(self.config, num_examples)

    def train(self, *, global_vector: np.ndarray, data: Any, seed: int) -> LocalResult:
        self.runs += 1
        delta = np.random.default_rng(seed).normal(0, 0.01, global_vector.size).astype(np.float32)
        return LocalResult(delta=delta, num_examples=len(data), train_loss=0.5, steps=self.steps_for(len(data)))


def _dp(sigma: float) -> SampleDP:
    return SampleDP(noise_multiplier=sigma, max_grad_norm=1.0, secure_noise=False, seed=0)


CLIENT = ClientConfig(batch_size=8, local_steps=5)
N_EXAMPLES = 40  # q = 8 / 40


def _plain(round: int) -> bytes:
    return GlobalModel(round=round, vector=np.zeros(4, np.float32)).to_bytes()


# --- the policy itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_record_epsilon": -1.0, "record_delta": 1e-5}, r"max_record_epsilon must be a finite number > 0; got -1"),
        ({"max_record_epsilon": math.nan, "record_delta": 1e-5}, r"max_record_epsilon must be .*got nan"),
        ({"max_record_epsilon": 2.0}, r"max_record_epsilon = 2 needs record_delta"),
        ({"record_delta": 1.0}, r"record_delta must be in \(0, 1\); got 1"),
        ({"min_local_noise_multiplier": 0}, r"min_local_noise_multiplier must be a finite number > 0; got 0"),
        ({"max_clip_norm": True}, r"max_clip_norm must be a finite number > 0; got True"),
        ({"accountant": "moments"}, r"accountant must be one of prv, rdp; got 'moments'"),
    ],
)
def test_invalid_policies_are_refused_with_one_line_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        NodePolicy(**fields)
    assert "\n" not in str(info.value)


def test_policy_from_node_config_and_toml(tmp_path: Path) -> None:
    policy = NodePolicy.from_mapping(
        {"partition-id": 3, "max-epsilon": "2.5", "delta": 1e-5, "min-noise-multiplier": 0.9, "max-clip": 1}
    )
    assert policy == NodePolicy(
        max_record_epsilon=2.5, record_delta=1e-5, min_sample_noise_multiplier=0.9, max_clip_norm=1.0
    )
    defaults = NodePolicy(max_record_epsilon=8.0, record_delta=1e-3, min_local_noise_multiplier=0.3)
    merged = NodePolicy.from_mapping({"max-epsilon": 1.0}, defaults=defaults)
    assert (merged.max_record_epsilon, merged.record_delta, merged.min_local_noise_multiplier) == (1.0, 1e-3, 0.3)
    with pytest.raises(ConfigError, match=r"max-epsilon in the node config must be a number; got 'lots'"):
        NodePolicy.from_mapping({"max-epsilon": "lots"})
    file = tmp_path / "policy.toml"
    file.write_text('max-epsilon = 3.0\ndelta = 1e-6\naccountant = "prv"\n')
    assert NodePolicy.from_toml(file) == NodePolicy(max_record_epsilon=3.0, record_delta=1e-6, accountant="prv")
    file.write_text("max-epsilon = 3.0\nmax_epsilon = 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) max_epsilon; allowed: max-epsilon, delta"):
        NodePolicy.from_toml(file)
    with pytest.raises(ConfigError, match=r"cannot be read"):
        NodePolicy.from_toml(tmp_path / "missing.toml")


# --- the node's record-level ledger ---------------------------------------------------------------------------------


def test_node_ledger_epsilon_matches_opacus_for_the_steps_the_node_ran() -> None:
    trainer = _Trainer(dp=_dp(1.1), config=CLIENT)
    policy = NodePolicy(record_delta=DELTA)  # no budget: only accounts and reports
    node = ClientNode(client_id=2, trainer=trainer, data=list(range(N_EXAMPLES)), seed=0, policy=policy)  # type: ignore[arg-type]
    assert node.record_epsilon == 0.0
    for round in (1, 2, 3):
        assert message_kind(node.handle(_plain(round)) or b"") == ClientUpdate.KIND
    q = sampling_rate_for(CLIENT, N_EXAMPLES)
    assert q == pytest.approx(0.2)
    want = _opacus_epsilon(1.1, q, 3 * 5, DELTA)
    assert node.record_epsilon == pytest.approx(want, rel=1e-9)
    assert want > _opacus_epsilon(1.1, q, 2 * 5, DELTA) > 0
    assert node.record_ledger is not None
    assert [(e.round, e.steps, e.subject) for e in node.record_ledger.events] == [(1, 5, 2), (2, 5, 2), (3, 5, 2)]


@pytest.mark.parametrize("slack", [1e-6, -1e-6])
def test_node_refuses_exactly_the_round_that_would_pass_its_budget(slack: float) -> None:
    q = sampling_rate_for(CLIENT, N_EXAMPLES)
    three_rounds = _opacus_epsilon(1.1, q, 15, DELTA)
    trainer = _Trainer(dp=_dp(1.1), config=CLIENT)
    policy = NodePolicy(max_record_epsilon=three_rounds * (1 + slack), record_delta=DELTA)
    node = ClientNode(client_id=0, trainer=trainer, data=list(range(N_EXAMPLES)), seed=0, policy=policy)  # type: ignore[arg-type]
    kinds = [message_kind(node.handle(_plain(r)) or b"") for r in (1, 2, 3, 4)]
    trained = 3 if slack > 0 else 2  # at the budget (plus round-off): round 3 fits; just below it: it does not
    assert kinds == [ClientUpdate.KIND] * trained + [Decline.KIND] * (4 - trained)
    assert trainer.runs == trained
    assert node.refusal is not None and node.refusal.startswith("node policy: the next round would raise client 0's")
    assert "\n" not in node.refusal
    assert node.record_epsilon == pytest.approx(_opacus_epsilon(1.1, q, 5 * trained, DELTA), rel=1e-9)
    assert node.record_epsilon <= policy.max_record_epsilon  # type: ignore[operator]


def test_node_ledger_state_round_trips_and_rejects_foreign_or_malformed_state() -> None:
    ledger = NodeLedger(client_id=7, delta=DELTA, budget=5.0)
    for round in (1, 2):
        ledger.record(ledger.event(noise_multiplier=0.8, sample_rate=0.1, steps=10, round=round))
    restored = NodeLedger(client_id=7, delta=DELTA, budget=5.0)
    restored.load_json(ledger.to_json())
    assert restored.events == ledger.events and restored.epsilon() == ledger.epsilon() > 0
    assert restored.epsilon() == pytest.approx(_opacus_epsilon(0.8, 0.1, 20, DELTA), rel=1e-9)
    other = NodeLedger(client_id=8, delta=DELTA)
    with pytest.raises(ProtocolError, match="events of another client than 8"):
        other.load_json(ledger.to_json())
    for bad in ("{", '{"events": []}', '[{"noise_multiplier": 1}]', '[{"noise_multiplier": -1, "sample_rate": 0.1, '
                '"steps": 1, "scope": "sample", "subject": 8}]'):  # fmt: skip
        with pytest.raises(ProtocolError, match="saved node ledger is malformed"):
            other.load_json(bad)
    assert other.events == ()


def test_node_rebuilt_per_message_keeps_its_budget_through_the_saved_ledger() -> None:
    """As a Flower ClientApp does: a fresh node per message, the ledger saved and loaded between them."""
    q = sampling_rate_for(CLIENT, N_EXAMPLES)
    policy = NodePolicy(max_record_epsilon=_opacus_epsilon(1.1, q, 10, DELTA) * (1 + 1e-9), record_delta=DELTA)
    saved = "[]"
    kinds = []
    for round in (1, 2, 3):
        ledger = NodeLedger.for_policy(policy, client_id=1)
        assert ledger is not None
        ledger.load_json(saved)
        trainer = _Trainer(dp=_dp(1.1), config=CLIENT)
        node = ClientNode(
            client_id=1,
            trainer=trainer,  # type: ignore[arg-type]
            data=list(range(N_EXAMPLES)),  # type: ignore[arg-type]
            seed=0,
            policy=policy,
            record_ledger=ledger,
        )
        kinds.append(message_kind(node.handle(_plain(round)) or b""))
        saved = ledger.to_json()
    assert kinds == [ClientUpdate.KIND, ClientUpdate.KIND, Decline.KIND]


# --- instructions weaker than the policy ----------------------------------------------------------------------------


def test_weaker_dp_sgd_or_none_at_all_is_refused_before_training() -> None:
    policy = NodePolicy(min_sample_noise_multiplier=1.0)
    weak = _Trainer(dp=_dp(0.7), config=CLIENT)
    node = ClientNode(client_id=0, trainer=weak, data=list(range(N_EXAMPLES)), seed=0, policy=policy)  # type: ignore[arg-type]
    assert message_kind(node.handle(_plain(1)) or b"") == Decline.KIND and weak.runs == 0
    assert node.refusal == "node policy: DP-SGD noise multiplier 0.7 is below this node's minimum 1"
    strong = _Trainer(dp=_dp(1.0), config=CLIENT)
    node = ClientNode(client_id=0, trainer=strong, data=list(range(N_EXAMPLES)), seed=0, policy=policy)  # type: ignore[arg-type]
    assert message_kind(node.handle(_plain(1)) or b"") == ClientUpdate.KIND and node.refusal is None
    plain = _Trainer(dp=None, config=CLIENT)
    budget = NodePolicy(max_record_epsilon=4.0, record_delta=DELTA)
    node = ClientNode(client_id=0, trainer=plain, data=list(range(N_EXAMPLES)), seed=0, policy=budget)  # type: ignore[arg-type]
    assert message_kind(node.handle(_plain(1)) or b"") == Decline.KIND and plain.runs == 0
    assert node.refusal is not None and "trains without DP-SGD" in node.refusal


def _distributed_server(num_clients: int = 6) -> FederatedServer:
    return FederatedServer(
        layout=AdapterLayout.from_shapes([("w", (8,))]),
        global_vector=np.zeros(8, np.float32),
        strategy=FedAvg(),
        num_clients=num_clients,
        clients_per_round=num_clients,
        seed=0,
        weighting="uniform",
        secagg=SecAggConfig(enabled=True, bits=24, clip=0.05),
        user_dp=DPFedAvgServer(noise_multiplier=1.0, clip_norm=0.1, expected_clients=num_clients, adaptive=None),
        user_mechanism="distributed_gaussian",
    )


def _with_stage(pipeline: UploadPipeline, name: str, **changes: Any) -> str:
    raw = json.loads(pipeline.to_json())
    for item in raw:
        if item["name"] == name:
            item["params"].update(changes)
    return json.dumps(raw)


def test_honest_distributed_instructions_meet_the_honest_policy_and_a_full_round_runs() -> None:
    server = _distributed_server()
    pipeline = server.upload_pipeline()
    policy = NodePolicy.honest(pipeline=pipeline, sample_dp=None, max_record_epsilon=None, record_delta=None)
    plan = server.distributed
    assert plan is not None and policy.min_local_noise_multiplier is not None
    # the share's std over the clip is at least the credited z / sqrt(shares) (the clip C' <= C kept / rotated)
    assert policy.min_local_noise_multiplier >= plan.noise_multiplier / math.sqrt(plan.shares)
    assert policy.max_clip_norm == server.upload_clip_norm()
    assert policy.check_upload(pipeline) is None
    trainer = _Trainer(dp=None, config=CLIENT, dim=8)
    nodes = [ClientNode(client_id=i, trainer=trainer, data=[0] * 4, seed=0, policy=policy) for i in range(6)]  # type: ignore[arg-type]
    result = server.run_round(1, SimulationTransport(nodes=nodes))
    assert result.aborted is None and result.num_clients == 6 and result.rejected_updates == 0
    assert all(n.refusal is None for n in nodes)


@pytest.mark.parametrize(
    ("stage", "changes", "reason"),
    [
        ("distributed_noise", {"local_stddev_factor": 0.5}, "distributed noise share std .* is below"),
        ("clip", {"max_norm_factor": 2.0}, "clip norm .* is above this node's maximum"),
        ("distributed_noise", {"dim_minus": 1}, "the noise stage covers"),
    ],
)
def test_a_server_asking_for_less_noise_or_a_larger_clip_is_refused(
    stage: str, changes: dict[str, float], reason: str
) -> None:
    server = _distributed_server()
    honest = server.upload_pipeline()
    policy = NodePolicy.honest(pipeline=honest, sample_dp=None, max_record_epsilon=None, record_delta=None)
    params = next(s.params() for s in honest.stages if s.name == stage)
    if "local_stddev_factor" in changes:
        weaker = _with_stage(honest, stage, local_stddev=params["local_stddev"] * changes["local_stddev_factor"])
    elif "max_norm_factor" in changes:
        weaker = _with_stage(honest, stage, max_norm=params["max_norm"] * changes["max_norm_factor"])
    else:
        weaker = _with_stage(honest, stage, dim=params["dim"] - 1)
    trainer = _Trainer(dp=None, config=CLIENT, dim=8)
    node = ClientNode(client_id=0, trainer=trainer, data=[0] * 4, seed=0, policy=policy)  # type: ignore[arg-type]
    request = SecureRoundRequest(round=1, vector=np.zeros(8, np.float32), stages=weaker, setup=b"")
    reply = node.handle(request.to_bytes())
    assert node.refusal is not None and node.refusal.startswith("node policy: ")
    # the reply says why: the server counts the node's reason (metrics.jsonl "declines")
    assert reply is not None and Decline.from_bytes(reply) == Decline(round=1, client_id=0, reason=node.refusal)
    assert trainer.runs == 0 and node.secagg_client is None
    assert re.search(reason, node.refusal), node.refusal
    assert local_noise_multiplier(UploadPipeline.from_json(weaker)) != policy.min_local_noise_multiplier
    # without a policy a node trains on whatever it is sent (then fails here only on the empty SecAgg+ setup)
    bare_trainer = _Trainer(dp=None, config=CLIENT, dim=8)
    bare = ClientNode(client_id=0, trainer=bare_trainer, data=[0] * 4, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        bare.handle(request.to_bytes())
    assert bare_trainer.runs == 1


def test_an_upload_without_a_noise_stage_or_clip_is_refused_under_a_noise_floor() -> None:
    policy = NodePolicy(min_local_noise_multiplier=0.1, max_clip_norm=1.0)
    assert policy.check_upload(UploadPipeline([])) == (
        "node policy: the upload has no clip stage; this node clips to at most 1"
    )
    only_clip = UploadPipeline([ClipStage(max_norm=0.5)])
    reason = policy.check_upload(only_clip)
    assert reason is not None and "0 distributed noise stages" in reason
    noise_first = UploadPipeline(
        [
            ClipStage(max_norm=0.5),
            DistributedNoiseStage(mechanism="skellam", local_stddev=9.0, bits=16, dim=4, min_contributors=2),
        ]
    )
    reason = policy.check_upload(noise_first)
    assert reason is not None and "does not directly follow the one fixed-point stage" in reason


def test_honest_policy_sets_no_floor_without_distributed_noise() -> None:
    policy = NodePolicy.honest(
        pipeline=UploadPipeline([ClipStage(max_norm=0.5)]),
        sample_dp=_dp(0.9),
        max_record_epsilon=2.0,
        record_delta=1e-5,
    )
    assert dataclasses.astuple(policy) == (2.0, 1e-5, 0.9, None, None, "rdp")


# --- an honest in-process run is unchanged ----------------------------------------------------------------------------

HONEST_RUNS = {
    "record-level": {"privacy.mode": "sample", "privacy.delta": 1e-3, "privacy.sample.target_epsilon": 8.0},
    "distributed": {
        "server.weighting": "uniform",
        "partition.num_clients": 6,
        "server.clients_per_round": 6,
        "secagg.enabled": True,
        "secagg.bits": 24,
        "secagg.clip": 0.05,
        "privacy.mode": "user",
        "privacy.delta": 1e-2,
        "privacy.user.clip_norm": 0.1,
        "privacy.user.target_epsilon": 8.0,
        "privacy.user.mechanism": "distributed_gaussian",
    },
}


@pytest.mark.slow  # two pairs of tiny-bert runs: 40-160 s on 2 shared cores
@pytest.mark.parametrize("extra", list(HONEST_RUNS.values()), ids=list(HONEST_RUNS))
def test_an_honest_in_process_run_never_declines_and_matches_a_run_without_policies(
    tmp_path: Path, extra: dict[str, Any]
) -> None:
    from privfed.experiments import run_experiment
    from tests.conftest import tiny_config

    config = tiny_config(**{"server.rounds": 2, "data.max_train_examples": 120, "data.max_eval_examples": 30, **extra})
    seen: list[ClientNode] = []

    def keep(t: Any) -> Any:
        seen.extend(t.nodes)
        return t

    def without_policy(t: Any) -> Any:
        nodes = [ClientNode(client_id=n.client_id, trainer=n.trainer, data=n.data, seed=n.seed) for n in t.nodes]
        return SimulationTransport(nodes=nodes)

    run_experiment(config, tmp_path / "policy", quiet=True, transport_hook=keep)
    run_experiment(config, tmp_path / "bare", quiet=True, transport_hook=without_policy)
    policy = seen[0].policy
    assert policy is not None
    if config.privacy.sample_level:  # the node's own budget is the config's, and it spent some of it
        assert policy.max_record_epsilon == 8.0 and policy.min_sample_noise_multiplier is not None
        assert max(n.record_epsilon or 0.0 for n in seen) > 0
    else:
        assert policy.min_local_noise_multiplier is not None and policy.max_clip_norm is not None
    assert all(n.refusal is None for n in seen)
    lines = [
        [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("policy", "bare")
    ]
    drop = {"seconds", "seconds_train", "seconds_eval", "seconds_waiting_slowest"}
    with_policy, bare = ([{k: v for k, v in r.items() if k not in drop} for r in run] for run in lines)
    assert with_policy == bare and len(bare) == 2
    assert all(r["clients_rejected"] == 0 for r in bare)
