"""The privfed ``ClientApp``: one :class:`~privfed.client.node.ClientNode` per Flower node.

Each message carries privfed's bytes and the experiment config (TOML). A node is
the client whose id is its ``partition-id`` (``--node-config`` in a deployment; set
per virtual node by the Simulation Engine). The experiment built from a config
(model, data, trainer) is cached per process, keyed by the config's SHA-256: a Ray
actor builds it once however many messages it serves; a deployment starts a fresh
ClientApp process per message and rebuilds it (seconds on the tiny models).

Secure aggregation spans four messages, which may reach different processes (Ray
actors are shared by all virtual nodes; a deployment has no long-lived process), so
the node's SecAgg+ state lives in Flower's per-node ``context.state``, as Flower's
own ``secaggplus_mod`` keeps its state: the round's encoded input, its setup message,
the messages received so far and a 32-byte secret from the OS that keys the round's
randomness. A later stage rebuilds the SecAgg+ client by replaying them; the
replay draws exactly the keys and nonces of the first pass. The state never leaves
the client's machine (in a deployment ``context.state`` is kept by its SuperNode).

A SuperNode's own data: with ``data-path`` in its node config (``--node-config
"partition-id=3 data-path='/data/client3.csv'"``) a node trains on that file (``.csv``,
``.tsv``, ``.jsonl``, ``.parquet``, or a directory saved with ``datasets``'
``save_to_disk``), read with privfed's file loaders (:mod:`privfed.data.files`) and the
run's ``data.text_column`` / ``data.label_column``, its labels mapped by name onto the
run's classes; without it, the node takes partition ``partition-id`` of the config's
dataset. A file the node cannot use (missing, wrong columns, a label that is not a class
of the run) makes it answer each round with a ``Decline`` and the error in one line (the
reply's ``"error"`` field): the server counts it as a rejected client and prints the line;
the run goes on.

A SuperNode's own privacy policy (:class:`~privfed.client.policy.NodePolicy`): the keys of
:data:`~privfed.client.policy.POLICY_KEYS` in its node config (``max-epsilon``, ``delta``,
``min-noise-multiplier``, ``min-local-noise-multiplier``, ``max-clip``, ``accountant``),
over those of a node-local TOML file named by ``policy-path``, over what the run's config
says (record-level DP: ``privacy.sample.target_epsilon`` at ``privacy.delta``). A round
whose instructions are weaker, or whose DP-SGD steps would take the node past its
record-level budget, is declined with the reason in ``"error"``. The node's record-level
ledger (the DP-SGD it actually ran on its own data) lives in ``context.state`` like the
SecAgg+ state, and each training reply carries its spent ``"record-epsilon"`` at its
``"record-delta"``: a node with its own ``data-path`` keeps its own record-level budget.

A SuperNode's own behaviour: ``behaviour = "package.module:function"`` in its node config
names a :class:`NodeBehaviour`, imported on the node (as Flower names apps, ``module:attribute``)
and called for each training round with the node's :class:`ClientSide`, node config, client id
and round; the trainer it returns takes the place of the run's trainer for that round, so what
it produces goes through the same upload pipeline and SecAgg+ as any client's update. An
auditor's canary client is one (:mod:`attacks.audit.deployment`); privfed never imports it. A
name that cannot be imported makes the node decline with the error, like a bad ``data-path``.

An observer (the ServerApp's ``observers`` run config, see :mod:`privfed.transport.flower.grid`)
gets each round's global model in a ``train.observe`` message also when it is not sampled; with
``observe-dir`` in its node config it saves it as ``<observe-dir>/round-<r>.npy`` (five digits,
written atomically), else it only acknowledges it. It trains nothing and spends nothing.

Fault injection, for tests only: the environment variable ``PRIVFED_TEST_FAULTS`` of
a node's process (a SuperNode's, or the process that starts the Simulation Engine,
whose Ray workers inherit it) holds a JSON list of rules ``{"client": K, "stage":
"train", "round": R, "action": ...}`` (``round`` optional: every round). Actions:
``"sleep"`` (``"seconds"``: before answering), ``"reply"`` (``"reply"``: ``"nan"``,
``"garbage"``, ``"wrong-shape"`` or ``"oversized"`` replaces this client's answer),
``"marker"`` (``"path"``: after answering, append ``"<round> <stage>"`` to that file,
so a test knows when to kill the node), and ``"exit"`` (``"path"``: the process dies at
once, before answering, unless that file exists; it creates the file first, so the
process exits only once). Without the variable nothing changes.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from privfed.client.node import ClientNode
from privfed.client.policy import POLICY_KEYS, NodeLedger, NodePolicy, read_policy_file
from privfed.client.trainer import ClientTrainer
from privfed.config import ExperimentConfig, config_from_dict
from privfed.errors import ConfigError, DataError, PrivfedError, ProtocolError
from privfed.experiments.run_dir import atomic_write_bytes, atomic_write_text
from privfed.secagg.client import SecAggClient
from privfed.secagg.crypto import KEY_BYTES
from privfed.transport.base import STAGES
from privfed.transport.flower.grid import OBSERVE, RECORD, field
from privfed.transport.flower.node_data import (
    DATA_PATH_KEY,
    ClientSide,
    client_side,
    local_examples,
    run_facts,
)
from privfed.transport.messages import ClientUpdate, Decline, GlobalModel, SecureRoundRequest, message_kind

__all__ = [
    "BEHAVIOUR_KEY",
    "DATA_PATH_KEY",
    "LEDGER_PATH_KEY",
    "OBSERVE_DIR_KEY",
    "POLICY_PATH_KEY",
    "ClientSide",
    "NodeBehaviour",
    "app",
    "client_side",
    "local_examples",
    "node_behaviour",
    "node_policy",
]

app = ClientApp()

_SECAGG_STATE = "privfed-secagg"
_ANSWERED_STATE = "privfed-answered"  # {"last-secure-round": int}: ClientNode.last_secure_round
_LEDGER_STATE = "privfed-record-ledger"  # {"events": JSON}: this node's NodeLedger

#: Node config key naming a node-local TOML file with this SuperNode's privacy policy.
POLICY_PATH_KEY = "policy-path"

#: Node config key naming a node-local file that keeps this SuperNode's record-level ledger across
#: SuperNode restarts and runs (``context.state`` lives in the SuperNode's memory, per run).
LEDGER_PATH_KEY = "ledger-path"

#: Node config key naming the directory where an observer saves the round models it is shown.
OBSERVE_DIR_KEY = "observe-dir"

#: Node config key naming this SuperNode's behaviour, ``"package.module:function"`` (a :class:`NodeBehaviour`).
BEHAVIOUR_KEY = "behaviour"


class NodeBehaviour(Protocol):
    """What a SuperNode runs instead of the run's trainer in one training round (``behaviour`` key).

    Returns the trainer for this round; it may wrap ``side.trainer``. Its update is encoded,
    masked and sent exactly as an ordinary client's. A ``ConfigError`` or ``DataError`` makes
    the node decline the round with that error.
    """

    def __call__(
        self, side: ClientSide, *, node_config: Mapping[str, Any], client_id: int, round: int
    ) -> ClientTrainer: ...


def node_behaviour(context: Context) -> NodeBehaviour | None:
    """The behaviour named by this node's ``behaviour`` key, imported; ``None`` without one (``ConfigError``)."""
    value = context.node_config.get(BEHAVIOUR_KEY)
    if value is None:
        return None
    module, _, name = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not module.strip() or not name.strip():
        raise ConfigError(
            f"{BEHAVIOUR_KEY} in this Flower node's config must be 'package.module:function'; got {value!r}"
        )
    try:
        function = getattr(importlib.import_module(module.strip()), name.strip())
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{BEHAVIOUR_KEY} {value!r} in this Flower node's config cannot be imported: {exc}") from exc
    if not callable(function):
        raise ConfigError(f"{BEHAVIOUR_KEY} {value!r} in this Flower node's config is not callable")
    behaviour: NodeBehaviour = function
    return behaviour


def _node_path(context: Context, key: str, *, error: type[PrivfedError] = ConfigError) -> str | None:
    """The path this node's config gives under ``key`` (``None``: not given); ``error`` unless a non-empty string."""
    value = context.node_config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise error(f"{key} in this Flower node's config must be a non-empty path; got {value!r}")
    return value


def _ledger_file(context: Context) -> Path | None:
    path = _node_path(context, LEDGER_PATH_KEY)
    return None if path is None else Path(path)


def _load_ledger(ledger: NodeLedger, context: Context, path: Path | None) -> None:
    """The node's spent record-level events: its ``ledger-path`` file when it has one (it outlives the
    SuperNode process), else what ``context.state`` kept. A file that cannot be read is a ``DataError``:
    the node declines rather than train without knowing what it has spent."""
    if path is not None and path.exists():
        try:
            ledger.load_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ProtocolError) as exc:
            raise DataError(f"{LEDGER_PATH_KEY} {str(path)!r} of this SuperNode cannot be used: {exc}") from None
        return
    saved = context.state.config_records.get(_LEDGER_STATE)
    if saved is not None:
        ledger.load_json(field(saved, "events", str))


def node_policy(context: Context, config: ExperimentConfig) -> NodePolicy:
    """This SuperNode's privacy policy: its node config's policy keys, over its ``policy-path``
    file's, over what the run's ``config`` says (``ConfigError`` for a bad key or file)."""
    p = config.privacy
    defaults = NodePolicy(
        max_record_epsilon=(p.sample.target_epsilon or None) if p.sample_level else None,
        record_delta=p.delta if p.sample_level else None,
        accountant=p.accountant,
    )
    raw: dict[str, Any] = {}
    path = _node_path(context, POLICY_PATH_KEY)
    if path is not None:
        raw.update(read_policy_file(path))
    raw.update({key: value for key, value in context.node_config.items() if key in POLICY_KEYS})
    return NodePolicy.from_mapping(raw, source="node config", defaults=defaults)


class _RoundRandom:
    """The SecAgg+ client's randomness for one round: SHAKE-256 keyed by a 32-byte OS secret.

    Call ``i`` returns ``SHAKE256(secret || i)[:n]``; replaying the same calls gives the
    same bytes, which is how a later stage rebuilds the client's keys.
    """

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"secret must be {KEY_BYTES} bytes; got {len(secret)}")
        self._secret = secret
        self._calls = 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self._secret + self._calls.to_bytes(8, "little")).digest(n)
        self._calls += 1
        return out


def _client_id(context: Context) -> int:
    value = context.node_config.get("partition-id")
    if value is None:
        raise ProtocolError("this Flower node has no partition-id in its node config (--node-config partition-id=K)")
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).isdigit():
        raise ProtocolError(f"partition-id in this Flower node's config must be an integer >= 0; got {value!r}")
    return int(value)


def _reply(msg: Message, fields: dict[str, Any]) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(fields)}), reply_to=msg)


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Say which client this node is; with ``warm-up`` set, build the client now.

    A Ray actor serves many messages, so building at hello keeps model loading out of
    round 1; a deployment's ClientApp process serves one message, so it skips that.
    """
    record = msg.content.config_records[RECORD]
    client_id = _client_id(context)
    config_toml = field(record, "config", str)
    if record.get("warm-up", False):
        own_data = context.node_config.get(DATA_PATH_KEY) is not None
        num_clients = client_side(config_toml).warm_up(own_data=own_data, run=run_facts(record))
    else:
        import tomllib

        num_clients = config_from_dict(tomllib.loads(config_toml)).partition.num_clients
    if not 0 <= client_id < num_clients:
        raise ProtocolError(f"partition-id {client_id} is not a client of this run (0..{num_clients - 1})")
    return _reply(msg, {"client-id": client_id, "pid": os.getpid()})


def _save_secagg(context: Context, *, secret: bytes, request: bytes, client: SecAggClient) -> None:
    values = np.ascontiguousarray(client.values)
    context.state.config_records[_SECAGG_STATE] = ConfigRecord(
        {
            "round": client.round,
            "secret": secret,
            "values": values.tobytes(),
            "dtype": values.dtype.str,
            "setup": SecureRoundRequest.from_bytes(request).setup,
            "messages": [],
        }
    )


def _secagg_step(context: Context, client_id: int, data: bytes) -> bytes:
    state = context.state.config_records.get(_SECAGG_STATE)
    if state is None:
        raise ProtocolError(f"client {client_id} has no secure-aggregation round in progress")
    values = np.frombuffer(field(state, "values", bytes), dtype=np.dtype(field(state, "dtype", str))).copy()
    client = SecAggClient(
        client_id=client_id,
        round=field(state, "round", int),
        values=values,
        random=_RoundRandom(field(state, "secret", bytes)),
    )
    client.step(field(state, "setup", bytes))
    received = [bytes(m) for m in field(state, "messages", list)]
    for earlier in received:
        client.step(earlier)
    reply = client.step(data)  # ProtocolError leaves the stored state as it was
    state["messages"] = [*received, data]
    return reply


#: Environment variable holding test-only fault rules (see the module docstring).
FAULTS_ENV = "PRIVFED_TEST_FAULTS"


def _with_delta(raw: bytes, delta: np.ndarray) -> bytes:
    u = ClientUpdate.from_bytes(raw)
    return ClientUpdate(
        round=u.round, client_id=u.client_id, num_examples=u.num_examples, train_loss=u.train_loss, delta=delta
    ).to_bytes()


def _nan_delta(raw: bytes) -> bytes:
    delta = ClientUpdate.from_bytes(raw).delta.copy()
    delta[0] = np.nan
    return _with_delta(raw, delta)


_BAD_REPLIES: dict[str, Callable[[bytes], bytes]] = {
    "garbage": lambda raw: b"\x00not a privfed message",
    "nan": _nan_delta,
    "wrong-shape": lambda raw: _with_delta(raw, ClientUpdate.from_bytes(raw).delta[:-1]),
    "oversized": lambda raw: _with_delta(raw, np.zeros(ClientUpdate.from_bytes(raw).delta.size * 100, np.float32)),
}


def _fault_rules(client_id: int, round: int, stage: str) -> list[dict[str, Any]]:
    raw = os.environ.get(FAULTS_ENV)
    if not raw:
        return []
    rules = json.loads(raw)
    return [
        r
        for r in rules
        if r.get("client") == client_id and r.get("stage", "train") == stage and r.get("round", round) == round
    ]


def _serve(msg: Message, context: Context) -> Message:
    record = msg.content.config_records[RECORD]
    client_id = _client_id(context)
    rules = _fault_rules(client_id, field(record, "round", int), field(record, "stage", str))
    if not rules:
        return _answer(msg, context, client_id)
    for rule in rules:
        if rule["action"] == "exit" and not Path(rule["path"]).exists():
            Path(rule["path"]).write_text(f"{field(record, 'round', int)} {field(record, 'stage', str)}\n")
            os._exit(3)  # a crash: no reply, no cleanup
        if rule["action"] == "sleep":
            time.sleep(float(rule["seconds"]))
    answer = _answer(msg, context, client_id)
    for rule in rules:
        data = answer.content.config_records[RECORD].get("data")
        if rule["action"] == "reply" and isinstance(data, bytes):
            answer.content.config_records[RECORD]["data"] = _BAD_REPLIES[rule["reply"]](data)
        elif rule["action"] == "marker":
            with Path(rule["path"]).open("a") as f:
                f.write(f"{field(record, 'round', int)} {field(record, 'stage', str)}\n")
    return answer


def _answer(msg: Message, context: Context, client_id: int) -> Message:
    record = msg.content.config_records[RECORD]
    addressee = field(record, "client-id", int)
    if addressee != client_id:
        raise ProtocolError(f"message for client {addressee} reached client {client_id}")
    data = field(record, "data", bytes)
    extra: dict[str, Any] = {}  # the node's record-level epsilon, its reason for declining
    try:
        if message_kind(data) is None:  # a SecAgg+ message of the round in progress
            reply = _secagg_step(context, client_id, data)
        else:
            side = client_side(field(record, "config", str))
            context.state.config_records.pop(_SECAGG_STATE, None)
            try:
                data_path = _node_path(context, DATA_PATH_KEY, error=DataError)
                examples = (
                    side.client_data[client_id]
                    if data_path is None
                    else local_examples(side, data_path, run=run_facts(record))
                )
                policy = node_policy(context, side.config)
                behaviour = node_behaviour(context)
                own_trainer = (
                    None
                    if behaviour is None
                    else behaviour(
                        side, node_config=context.node_config, client_id=client_id, round=field(record, "round", int)
                    )
                )
                ledger = NodeLedger.for_policy(policy, client_id=client_id)
                ledger_file = _ledger_file(context)
                if ledger is not None:
                    _load_ledger(ledger, context, ledger_file)
            except (DataError, ConfigError, ImportError) as exc:  # own data or policy unusable: decline, say why
                error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
                decline = Decline(round=field(record, "round", int), client_id=client_id, reason=error).to_bytes()
                return _reply(msg, {"client-id": client_id, "data": decline, "error": error})
            secret = os.urandom(KEY_BYTES)
            answered = context.state.config_records.get(_ANSWERED_STATE)
            node = ClientNode(
                client_id=client_id,
                trainer=side.trainer if own_trainer is None else own_trainer,
                data=examples,
                seed=side.config.seed,
                crypto_random=_RoundRandom(secret),
                last_secure_round=None if answered is None else field(answered, "last-secure-round", int),
                policy=policy,
                record_ledger=ledger,
            )
            try:
                answer = node.handle(data)
            finally:  # a refused or failed request still burns its round (re-runs reveal uploads)
                if node.last_secure_round is not None:
                    context.state.config_records[_ANSWERED_STATE] = ConfigRecord(
                        {"last-secure-round": node.last_secure_round}
                    )
                if ledger is not None:  # DP-SGD that ran is spent, whatever happened next
                    context.state.config_records[_LEDGER_STATE] = ConfigRecord({"events": ledger.to_json()})
                    if ledger_file is not None:  # a crash leaves the old ledger or the new one, never half
                        atomic_write_text(ledger_file, ledger.to_json())
            if ledger is not None:
                extra.update({"record-epsilon": ledger.epsilon(), "record-delta": ledger.delta})
            if node.refusal is not None:
                extra["error"] = node.refusal
            secagg = node.secagg_client  # set by a SecureRoundRequest (none after a Decline)
            if secagg is not None:
                _save_secagg(context, secret=secret, request=data, client=secagg)
            if answer is None:
                return _reply(msg, {"client-id": client_id})
            reply = answer
    except ProtocolError:
        # The node refuses (an unsafe SecAgg+ request, a forged key): it stays silent.
        return _reply(msg, {"client-id": client_id})
    return _reply(msg, {"client-id": client_id, "data": reply, **extra})


@app.train(OBSERVE)
def observe(msg: Message, context: Context) -> Message:
    """An observer's copy of the round's global model (module docstring); silent on a malformed one."""
    record = msg.content.config_records[RECORD]
    client_id = _client_id(context)
    try:
        if field(record, "client-id", int) != client_id:
            raise ProtocolError(f"observe message for client {record.get('client-id')!r} reached client {client_id}")
        model = GlobalModel.from_bytes(field(record, "data", bytes))
        if model.round != field(record, "round", int) or model.round < 1:
            raise ProtocolError(f"observe message of round {record.get('round')!r} holds round {model.round}")
    except ProtocolError:
        return _reply(msg, {"client-id": client_id})
    directory = _node_path(context, OBSERVE_DIR_KEY)
    if directory is not None:
        path = Path(directory) / f"round-{model.round:05d}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = io.BytesIO()
        np.save(saved, model.vector, allow_pickle=False)
        atomic_write_bytes(path, saved.getvalue())
    return _reply(msg, {"client-id": client_id, "observed": model.round})


def _register(stage: str) -> None:
    def handler(msg: Message, context: Context) -> Message:
        return _serve(msg, context)

    handler.__name__ = f"serve_{stage}"
    app.train(stage)(handler)


for _stage in STAGES:
    _register(_stage)
