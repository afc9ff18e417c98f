"""Auditing a Flower deployment with canary SuperNodes (``privfed audit --deployment``).

The simulated audit (:mod:`attacks.audit.federated`) wraps the transport; a deployment
has no transport to wrap, so the auditor's canaries join as ordinary SuperNodes:

1. ``plan``: from the auditor's secret seed, :func:`plan_deployment_audit` draws the same
   plan as the simulated audit (:func:`~attacks.audit.federated.canary_plan`: each of
   ``num_canaries`` candidates inserted with probability 1/2) and writes the node config of
   each inserted canary, client slots ``0..k-1``, for the operator to start
   (``canary_nodes.txt``), and the plan itself (``audit_plan.json``, kept by the auditor).
2. Each canary SuperNode runs :func:`canary` (its node config's ``behaviour``, a
   :class:`privfed.transport.flower.client_app.NodeBehaviour`): in every round it is sampled
   it trains on its slot's data like any client (so its reported loss, timing and record-level
   DP spending are a client's), then uploads its candidate's unit direction scaled to
   ``canary_norm`` instead of the trained delta, through the round's upload pipeline and
   SecAgg+, with the FedAvg weight of a typical client. It keeps the global model it received
   (``audit-record-dir``): what any participant sees.
3. ``score``: :func:`score_deployment` reads those received models and the released final
   model (the run directory's checkpoint, with ``summary.json`` and ``metrics.jsonl``) and
   scores them with :func:`~attacks.audit.federated.score_canaries`, the simulated audit's own
   scoring, into ``audit_results.json`` with the same fields.

Node config keys of a canary (all written by the plan)::

    behaviour = "attacks.audit.deployment:canary"
    audit-canary-seed      the auditor's secret seed (int)
    audit-canary-index     which candidate direction this node uploads (int)
    audit-num-canaries     candidates in the plan (int; fixes the random stream)
    audit-canary-norm      L2 norm of the upload (float)
    audit-canary-examples  FedAvg weight it reports (int)
    audit-record-dir       where it keeps the global models it receives (optional)
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from attacks.audit.bounds import canary_directions
from attacks.audit.federated import (
    AuditSettings,
    audit_verdict,
    canary_plan,
    plot_audit,
    score_canaries,
)
from privfed import ConfigError, DataError, ExperimentConfig, RunDirectory
from privfed.client import ClientTrainer, ExampleSet, LocalResult
from privfed.rng import generator

__all__ = [
    "BEHAVIOUR",
    "OBSERVERS_KEY",
    "PLAN_FILE",
    "CanaryTrainer",
    "canary",
    "canary_direction",
    "node_config_arg",
    "plan_deployment_audit",
    "run_config_for",
    "score_deployment",
]

#: The ``behaviour`` node config value of a canary SuperNode.
BEHAVIOUR = "attacks.audit.deployment:canary"
#: The auditor's plan (secret: it says which candidates were inserted).
PLAN_FILE = "audit_plan.json"
#: The ServerApp run config key that shows nodes every round's model (privfed.transport.flower.server_app).
OBSERVERS_KEY = "observers"
_KEYS = {
    "seed": "audit-canary-seed",
    "index": "audit-canary-index",
    "num_canaries": "audit-num-canaries",
    "norm": "audit-canary-norm",
    "examples": "audit-canary-examples",
    "record_dir": "audit-record-dir",
}


def canary_direction(seed: int, index: int, *, num_canaries: int, dim: int) -> npt.NDArray[np.float32]:
    """Candidate ``index`` of the plan of ``seed``: float32[dim], unit L2 norm.

    Row ``index`` of :func:`~attacks.audit.federated.canary_plan`'s directions, drawn alone:
    the rows before it are drawn and dropped one at a time (memory ``O(dim)``, not ``O(index * dim)``).
    """
    if not 0 <= index < num_canaries:
        raise ConfigError(f"{_KEYS['index']} must be in 0..{num_canaries - 1} ({_KEYS['num_canaries']}); got {index}")
    rng = generator(seed, "audit", "canaries")
    rng.random(num_canaries)  # the inclusion draw comes first in the plan's stream
    for _ in range(index):
        rng.standard_normal((1, dim))
    row: npt.NDArray[np.float32] = canary_directions(dim, 1, rng)[0]
    return row


class CanaryTrainer(ClientTrainer):
    """A client trainer whose update is a fixed vector: the cover trainer runs, its delta is dropped.

    Args:
        cover: the run's trainer (its model, DP-SGD and hooks are shared, not copied).
        upload: float32[dim], the update to send.
        num_examples: the FedAvg weight to report.
        record: where to save the global model it trains from (``None``: nowhere).
    """

    def __init__(
        self, cover: ClientTrainer, upload: npt.NDArray[np.float32], *, num_examples: int, record: Path | None
    ) -> None:
        # Not ClientTrainer.__init__: that would register Opacus' hooks on the shared model a second time.
        self.__dict__.update(vars(cover))
        self.upload = np.asarray(upload, dtype=np.float32)
        self.num_examples = num_examples
        self.record = record

    def train(self, *, global_vector: npt.NDArray[np.float32], data: ExampleSet, seed: int) -> LocalResult:
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            np.save(self.record, np.asarray(global_vector, dtype=np.float32))
        if global_vector.shape != self.upload.shape:
            raise DataError(f"the canary has {self.upload.size} values; the global model has {global_vector.size}")
        cover = super().train(global_vector=global_vector, data=data, seed=seed)
        return LocalResult(
            delta=self.upload.copy(), num_examples=self.num_examples, train_loss=cover.train_loss, steps=cover.steps
        )


def _key(node_config: Mapping[str, Any], name: str, kind: type) -> Any:
    key = _KEYS[name]
    value = node_config.get(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"{key} in this canary node's config must be {kind.__name__}; got {value!r}")
    return value


class _NodeSide(Protocol):
    """What a canary needs of the node's ``ClientSide`` (privfed's Flower package is not public API)."""

    @property
    def trainer(self) -> ClientTrainer: ...


def canary(side: _NodeSide, *, node_config: Mapping[str, Any], client_id: int, round: int) -> ClientTrainer:
    """The canary node's behaviour (``behaviour = "attacks.audit.deployment:canary"``)."""
    seed, index = _key(node_config, "seed", int), _key(node_config, "index", int)
    norm, examples = _key(node_config, "norm", float), _key(node_config, "examples", int)
    if not (math.isfinite(norm) and norm > 0) or examples < 1:
        raise ConfigError(f"{_KEYS['norm']} must be > 0 and {_KEYS['examples']} >= 1; got {norm!r}, {examples!r}")
    trainer = side.trainer
    direction = canary_direction(
        seed, index, num_canaries=_key(node_config, "num_canaries", int), dim=trainer.layout.dim
    )
    record_dir = node_config.get(_KEYS["record_dir"])
    record = None if record_dir is None else Path(str(record_dir)) / f"canary-{index}" / f"round-{round:05d}.npy"
    return CanaryTrainer(trainer, direction * np.float32(norm), num_examples=examples, record=record)


def _canary_norm(config: ExperimentConfig, settings: AuditSettings) -> float:
    if settings.canary_norm > 0:
        return settings.canary_norm
    if config.privacy.mode in ("user", "both"):
        return config.privacy.user.clip_norm
    raise ConfigError(
        "audit.canary_norm must be > 0 to audit a deployment without user-level DP (the automatic norm, "
        f"the real clients' median, is not known before the run); got {settings.canary_norm}"
    )


def plan_deployment_audit(
    config: ExperimentConfig,
    settings: AuditSettings,
    out: Path,
    *,
    audit_seed: int | None = None,
    record_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Step 1: the node configs of the inserted canaries; writes ``audit_plan.json`` and ``canary_nodes.txt``.

    ``audit_seed``: the auditor's secret (default: 63 random bits from the OS). ``record_dir``: where
    the canary nodes keep the global models they receive (default ``out/received``).
    Returns one node config (a dict) per inserted canary, client slot ``k`` first.
    """
    from privfed import build_experiment

    seed = secrets.randbits(63) if audit_seed is None else int(audit_seed)
    included, _ = canary_plan(
        seed, num_canaries=settings.num_canaries, num_unobserved=settings.num_unobserved, dim=None
    )
    inserted = [int(i) for i in np.flatnonzero(included)]
    if len(inserted) > config.partition.num_clients // 2:
        raise ConfigError(
            f"{len(inserted)} inserted canaries need at least twice as many clients; "
            f"partition.num_clients is {config.partition.num_clients}"
        )
    norm = _canary_norm(config, settings)
    probe = build_experiment(config)
    # FedAvg weights by examples: a canary weighs as much as a typical client (as in the simulated audit).
    typical = max(1, round(float(np.mean([len(d) for d in probe.client_data]))))
    record_dir = (out / "received") if record_dir is None else record_dir
    nodes = [
        {
            "partition-id": slot,
            "behaviour": BEHAVIOUR,
            _KEYS["seed"]: seed,
            _KEYS["index"]: index,
            _KEYS["num_canaries"]: settings.num_canaries,
            _KEYS["norm"]: float(norm),
            _KEYS["examples"]: typical,
            _KEYS["record_dir"]: str(record_dir.resolve()),
            # the rounds it is not sampled in, when the ServerApp runs with observers (OBSERVERS_KEY)
            "observe-dir": str((record_dir / f"canary-{index}").resolve()),
        }
        for slot, index in enumerate(inserted)
    ]
    out.mkdir(parents=True, exist_ok=True)
    plan = {
        "audit_seed": seed,
        "settings": {k: v for k, v in vars(settings).items() if k != "epsilons"},
        "record_dir": str(record_dir.resolve()),
        "nodes": nodes,
        "run_config": run_config_for(nodes),
    }
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=2) + "\n")
    (out / "canary_nodes.txt").write_text(
        "".join(f"--node-config {node_config_arg(n)!r}\n" for n in nodes)
        + f'# and the ServerApp: flwr run ... --run-config "{plan["run_config"]}"\n'
    )
    return nodes


def run_config_for(nodes: Sequence[Mapping[str, Any]]) -> str:
    """The ServerApp's run config that shows the canaries every round's model (``observers``).

    Needed when clients are sampled: the white-box score uses each round's update, and a canary
    that is not sampled in a round receives that round's model only as an observer.
    """
    return f"{OBSERVERS_KEY}='{','.join(str(n['partition-id']) for n in nodes)}'"


def node_config_arg(node: Mapping[str, Any]) -> str:
    """``--node-config`` value of a node config: ``key=value`` pairs, strings quoted (Flower's syntax)."""
    return " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else repr(v)}" for k, v in node.items())


def score_deployment(
    config: ExperimentConfig,
    out: Path,
    *,
    run_dir: Path,
    received_dir: Path | None = None,
) -> dict[str, Any]:
    """Step 2: score the canaries of ``out/audit_plan.json`` against a finished deployment run.

    Reads the global model each canary received (``received_dir``, default the plan's
    ``record_dir``: ``canary-<index>/round-<r>.npy``), the final model of ``run_dir``
    (its checkpoint), its ``summary.json`` and ``metrics.jsonl``; writes ``audit_results.json``
    (one record, ``run = "deployment"``, the simulated audit's fields), the score files and
    ``audit.png`` into ``out``. Every round's global model must have reached some canary
    (the white-box score needs each round's update); ``DataError`` names the missing rounds.
    """
    from privfed import build_experiment
    from privfed.server import sample_cohort

    plan_path = out / PLAN_FILE
    if not plan_path.exists():
        raise DataError(f"no {PLAN_FILE} in {out}; run privfed audit --deployment plan first")
    try:  # the auditor's own file, but possibly damaged: one line, never a traceback
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        settings = AuditSettings.from_mapping(plan["settings"])
        seed = int(plan["audit_seed"])
        received = Path(plan["record_dir"]) if received_dir is None else received_dir
        slots = {int(n[_KEYS["index"]]): int(n["partition-id"]) for n in plan["nodes"]}
        planned_norm = float(plan["nodes"][0][_KEYS["norm"]]) if plan["nodes"] else None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise DataError(f"{plan_path} is not a privfed audit plan ({type(exc).__name__}: {exc})") from None
    runs = RunDirectory(run_dir)
    checkpoint = runs.load_checkpoint()
    summary: dict[str, Any] = dict(runs.read_summary()) if (run_dir / RunDirectory.SUMMARY).exists() else {}
    if checkpoint is None or not summary.get("completed"):
        raise DataError(f"the deployment run in {run_dir} did not finish (no checkpoint or summary.completed false)")
    rounds = int(checkpoint.round)
    probe = build_experiment(config)
    included, directions = canary_plan(
        seed, num_canaries=settings.num_canaries, num_unobserved=settings.num_unobserved, dim=probe.layout.dim
    )
    by_round: dict[int, npt.NDArray[np.float32]] = {}
    for index in slots:
        for path in sorted((received / f"canary-{index}").glob("round-*.npy")):
            r = int(path.stem.removeprefix("round-"))
            vector = np.load(path, allow_pickle=False)
            if r in by_round and not np.array_equal(by_round[r], vector):
                raise DataError(f"canaries received different global models in round {r} ({path})")
            by_round[r] = vector
    missing = [r for r in range(1, rounds + 1) if r not in by_round]
    if missing:
        raise DataError(
            f"no canary received the global model of round(s) {missing} (in {received}); "
            f"the white-box score needs every round's model (1..{rounds}): run the ServerApp with the "
            f"plan's run config ({run_config_for(plan['nodes'])}) so canaries see the rounds they are not sampled in"
        )
    if not np.array_equal(by_round[1], probe.initial_vector):
        raise DataError(f"round 1's global model in {received} is not the initial adapter of this config")
    cohorts = [
        sample_cohort(
            seed=config.seed,
            round=r,
            num_clients=config.partition.num_clients,
            clients_per_round=config.server.clients_per_round,
            poisson=config.privacy.mode in ("user", "both"),
        )
        for r in range(1, rounds + 1)
    ]
    real = {int(c) for cohort in cohorts for c in cohort} - set(slots.values())
    # rounds each canary was sampled in (an observer also holds the models of the others)
    participations = {slot: sum(slot in {int(c) for c in cohort} for cohort in cohorts) for slot in slots.values()}
    scored = score_canaries(
        config,
        settings,
        out=out,
        probe=probe,
        included=included,
        directions=directions,
        initial=probe.initial_vector,
        broadcasts=[by_round[r] for r in range(1, rounds + 1)],
        final=checkpoint.arrays["global"],
        participations=participations,
        real_participants=real,
        canary_norm=planned_norm if planned_norm is not None else _canary_norm(config, settings),
        summary=summary,
        metrics=runs.read_metrics(),
    )
    target = config.privacy.user.target_epsilon if config.privacy.mode in ("user", "both") else None
    result: dict[str, Any] = {"run": "deployment", "target_epsilon": target or None, **scored}
    (out / "audit_results.json").write_text(json.dumps([result], indent=2, allow_nan=True) + "\n")
    plot_audit([result], out / "audit.png")
    print(audit_verdict(result))
    return result
