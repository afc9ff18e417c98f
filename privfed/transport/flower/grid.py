"""privfed exchanges over a Flower ``Grid`` (shared by the Simulation and Deployment Engines).

One exchange = one Flower ``Message`` per addressee (``message_type = "train.<stage>"``,
privfed's bytes in the ``ConfigRecord`` ``"privfed"``), then a push/pull loop until every
addressee has answered or ``reply_timeout`` seconds have passed. Error replies (a
``ClientApp`` that raised, a node the SuperLink reports unavailable) and missing replies
are both "no reply": the server treats the node as dropped. Error replies made by the
SuperLink carry the SuperLink as their source, so replies are attributed through
``reply_to_message_id`` to the node the request went to.

A node that declines a round because it cannot use its own data (``data-path``) adds
the reason to its reply (``"error"``, one line); the exchanger prints it once per client
and reason (``privfed: client K rejected in round R: ...`` on stderr) and keeps the
latest in :attr:`GridExchanger.client_errors`. The server counts the ``Decline`` as a
rejected client. A node with a record-level ledger (its own privacy policy, see
:mod:`privfed.client.policy`) reports its spent epsilon with each reply
(``"record-epsilon"``); :meth:`GridTransport.client_record_epsilon_max` is the largest
one reported so far (``client_record_epsilon_max`` in ``metrics.jsonl``).

Every message also carries the run's class names (``"label-names"``, from the server's
``data`` config, loaded once per process): a node training on its own file maps its
labels onto them by name without reading the server's dataset. Under record-level DP
they also carry the DP-SGD noise multiplier the run resolved (``"sample-noise-multiplier"``,
calibrated on the partition's sizes), so such a node trains with the server's sigma.

Node ids: each node states its privfed client id (its ``partition-id``) in the
``query.hello`` exchange that opens a run; privfed addresses clients, this module maps
them to Flower node ids.

Observers (``observers``, the ServerApp's run config): client ids that receive every
round's global model, as a participant does, also in rounds they are not sampled in. With
each round's opening exchange, an observer outside the cohort gets a ``train.observe``
message holding a :class:`~privfed.transport.messages.GlobalModel`; it trains nothing and
the round does not wait for it (its acknowledgement is taken if it has arrived by the time
the cohort has answered). An auditor's canary nodes use it (``privfed audit --deployment``):
the white-box score needs every round's model. The bytes count in ``bytes_down``.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from privfed.config import ExperimentConfig, dump_config
from privfed.errors import ConfigError, ProtocolError
from privfed.transport.base import Exchange, Reply
from privfed.transport.messages import CompressedRoundRequest, GlobalModel, SecureRoundRequest, message_kind

__all__ = [
    "HELLO",
    "OBSERVE",
    "RECORD",
    "GridExchanger",
    "GridTransport",
    "active_grid_transport",
    "field",
    "message_type_for",
    "serving_grid",
]

#: Name of the ConfigRecord that carries privfed's payload in both directions.
RECORD = "privfed"
#: The exchange that opens a run: each node builds its client and states its client id.
HELLO = "query.hello"
#: The stage of the message that shows an observer a round's global model (module docstring).
OBSERVE = "observe"
_POLL_SECONDS = 0.02
_V = TypeVar("_V")


def field(record: ConfigRecord, key: str, kind: type[_V]) -> _V:
    """``record[key]`` if it is a ``kind``; ``ProtocolError`` (one line) otherwise."""
    value = record.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"Flower record field {key!r} must be {kind.__name__}; got {type(value).__name__}")
    return value


def message_type_for(stage: str) -> str:
    """Flower message type of a privfed stage: ``train.<stage>`` (routed to one ClientApp handler)."""
    return f"train.{stage}"


class GridExchanger:
    """Moves privfed exchanges over ``grid``.

    Args:
        grid: the ServerApp's grid.
        config: the experiment config, sent to every node (TOML) with each message.
        reply_timeout: seconds to wait for the replies of one exchange.
        warm_up: have every node build its client in the opening exchange (long-lived
            client processes: the Simulation Engine's Ray actors).
        observers: client ids shown every round's global model (module docstring).
    """

    def __init__(
        self,
        grid: Grid,
        *,
        config: ExperimentConfig,
        reply_timeout: float,
        warm_up: bool = False,
        observers: Sequence[int] = (),
    ) -> None:
        self.grid = grid
        self.warm_up = warm_up
        self.observers = tuple(sorted(set(observers)))
        self.config_toml = dump_config(config)
        self.config_sha256 = hashlib.sha256(self.config_toml.encode()).hexdigest()
        self._data = config.data
        self._label_names: list[str] | None = None
        #: record-level DP-SGD noise multiplier the run resolved (sent to nodes; None: no record-level DP)
        self.sample_noise_multiplier: float | None = None
        self.reply_timeout = reply_timeout
        self.node_of: dict[int, int] = {}  # privfed client id -> Flower node id
        self.client_errors: dict[int, str] = {}  # client id -> the last error its node reported
        self.record_epsilon: dict[int, float] = {}  # client id -> the record-level epsilon its node last reported
        self._reported: set[tuple[int, str]] = set()

    @property
    def label_names(self) -> list[str]:
        """The run's class names (the server's dataset; memoised, so the runner's load is reused)."""
        if self._label_names is None:
            from privfed.data.files import load_data

            self._label_names = list(load_data(self._data).label_names)
        return self._label_names

    def _content(self, *, client_id: int, round: int, stage: str, data: bytes) -> RecordDict:
        record = ConfigRecord(
            {
                "data": data,
                "client-id": client_id,
                "round": round,
                "stage": stage,
                "config": self.config_toml,
                "config-sha256": self.config_sha256,
                "label-names": self.label_names,
            }
        )
        if self.sample_noise_multiplier is not None:
            record["sample-noise-multiplier"] = self.sample_noise_multiplier
        return RecordDict({RECORD: record})

    def discover(self, *, num_clients: int, timeout: float) -> dict[int, int]:
        """Wait for ``num_clients`` nodes, have each build its client, learn their client ids.

        Raises:
            ProtocolError: fewer nodes within ``timeout`` seconds, a client id out of range or twice.
        """
        end = time.monotonic() + timeout
        while len(nodes := sorted(self.grid.get_node_ids())) < num_clients and time.monotonic() < end:
            time.sleep(0.2)
        if len(nodes) < num_clients:
            raise ProtocolError(
                f"{len(nodes)} Flower nodes connected within {timeout:g} s; partition.num_clients = {num_clients}"
            )
        messages = []
        for node in nodes:
            content = self._content(client_id=-1, round=0, stage="hello", data=b"")
            content.config_records[RECORD]["warm-up"] = self.warm_up
            messages.append(Message(content, dst_node_id=node, message_type=HELLO))
        self.grid.push_messages(messages)  # sets the message ids in place
        dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        replies = self._pull(list(dst_of), timeout=max(1.0, end - time.monotonic()))
        node_of: dict[int, int] = {}
        failures = []
        for reply in replies:
            node = dst_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                failures.append(f"node {node}: {reply.error.reason}")
                continue
            client_id = field(reply.content.config_records[RECORD], "client-id", int)
            if not 0 <= client_id < num_clients or client_id in node_of:
                raise ProtocolError(
                    f"Flower node {node} says it is client {client_id}; allowed: one node per client id "
                    f"0..{num_clients - 1} (set partition-id in each SuperNode's --node-config)"
                )
            node_of[client_id] = node
        if len(node_of) < num_clients:
            missing = sorted(set(range(num_clients)) - set(node_of))
            detail = f"; errors: {'; '.join(failures)[:500]}" if failures else ""
            raise ProtocolError(f"clients {missing} did not answer the opening exchange{detail}")
        self.node_of = node_of
        return node_of

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        """Send ``messages[client id]`` to each client's node; return the replies within the timeout."""
        out: list[Message] = []
        client_of_node: dict[int, int] = {}
        down = 0
        for client_id, data in messages.items():
            node = self.node_of.get(client_id)
            down += len(data)
            if node is None:  # no such node (it never said hello): it cannot answer
                continue
            client_of_node[node] = client_id
            out.append(
                Message(
                    self._content(client_id=client_id, round=round, stage=stage, data=data),
                    dst_node_id=node,
                    message_type=message_type_for(stage),
                    group_id=str(round),
                    ttl=self.reply_timeout + 60.0,
                )
            )
        observing, observed_bytes = self._observe_messages(messages, round=round)
        down += observed_bytes
        dst_of: dict[str, int] = {}

        def report(reply: Message) -> None:
            if on_reply is not None and not reply.has_error():
                client = client_of_node.get(dst_of.get(reply.metadata.reply_to_message_id, -1))
                if client is not None:
                    on_reply(client)

        replies_in: list[Message] = []
        waited = 0.0
        if out or observing:
            started = time.monotonic()
            self.grid.push_messages([*out, *observing])  # sets the message ids in place
            dst_of = {m.metadata.message_id: m.metadata.dst_node_id for m in out}
            seen = [m.metadata.message_id for m in observing]
            replies_in = self._pull(list(dst_of), timeout=self.reply_timeout, report=report, optional=seen)
            waited = time.monotonic() - started  # to the last reply, or to the timeout
        replies: list[Reply] = []
        up = 0
        for reply in replies_in:
            node = dst_of.get(reply.metadata.reply_to_message_id)
            if node is None or reply.has_error():
                continue
            record = reply.content.config_records.get(RECORD)
            payload = None if record is None else record.get("data")
            if not isinstance(payload, bytes):
                continue  # the node stayed silent (it refused the message)
            error = record.get("error") if record is not None else None
            if isinstance(error, str):
                self._report(client_of_node[node], round, error)
            spent = record.get("record-epsilon") if record is not None else None
            if isinstance(spent, float) and spent >= 0:
                self.record_epsilon[client_of_node[node]] = spent
            up += len(payload)
            replies.append(Reply(sender=client_of_node[node], data=payload))
        return Exchange(replies=tuple(replies), bytes_down=down, bytes_up=up, seconds_waiting=waited)

    def _report(self, client_id: int, round: int, error: str) -> None:
        """Print a node's reason for declining, once per client and reason."""
        error = " ".join(error.split())[:1000]
        self.client_errors[client_id] = error
        if (client_id, error) not in self._reported:
            self._reported.add((client_id, error))
            print(f"privfed: client {client_id} rejected in round {round}: {error}", file=sys.stderr, flush=True)

    def _pull(
        self,
        ids: list[str],
        *,
        timeout: float,
        report: Callable[[Message], None] | None = None,
        optional: Sequence[str] = (),
    ) -> list[Message]:
        """Pull replies to ``ids`` every 20 ms until all are in or ``timeout`` s have passed.

        Replies to ``optional`` ids are pulled along while waiting, never waited for, and not returned.
        ``grid.send_and_receive`` does the same, but the deployment grid sleeps 3 s between pulls.
        """
        pending, extra, got = set(ids), set(optional), []
        end = time.monotonic() + timeout
        while pending or extra:
            for reply in self.grid.pull_messages([*pending, *extra]):
                answered = reply.metadata.reply_to_message_id
                extra.discard(answered)
                if answered not in pending:
                    continue
                got.append(reply)
                pending.discard(answered)
                if report is not None:
                    report(reply)
            if not pending or time.monotonic() >= end:
                break
            time.sleep(_POLL_SECONDS)
        return got

    def _observe_messages(self, messages: Mapping[int, bytes], *, round: int) -> tuple[list[Message], int]:
        """``train.observe`` messages of a round's opening exchange for the observers outside its cohort,
        and their payload bytes."""
        first = next(iter(messages.values()), None)
        if not self.observers or first is None:
            return [], 0
        kind = message_kind(first)
        if kind == GlobalModel.KIND:
            vector = GlobalModel.from_bytes(first).vector
        elif kind == CompressedRoundRequest.KIND:
            vector = CompressedRoundRequest.from_bytes(first).vector
        elif kind == SecureRoundRequest.KIND:
            vector = SecureRoundRequest.from_bytes(first).vector
        else:
            return [], 0  # a later SecAgg+ stage: the round's model went out with its opening
        model = GlobalModel(round=round, vector=vector).to_bytes()
        sent = [
            Message(
                self._content(client_id=client_id, round=round, stage=OBSERVE, data=model),
                dst_node_id=self.node_of[client_id],
                message_type=message_type_for(OBSERVE),
                group_id=str(round),
                ttl=self.reply_timeout + 60.0,
            )
            for client_id in self.observers
            if client_id not in messages and client_id in self.node_of
        ]
        return sent, len(model) * len(sent)


class GridTransport:
    """The privfed transport of a ServerApp: exchanges over the grid it runs on."""

    def __init__(self, exchanger: GridExchanger) -> None:
        self.exchanger = exchanger

    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        return self.exchanger.exchange(messages, round=round, stage=stage, on_reply=on_reply)

    def client_record_epsilon_max(self) -> float | None:
        """The largest record-level epsilon any node has reported (``None``: none reported one)."""
        return max(self.exchanger.record_epsilon.values(), default=None)


_ACTIVE: list[GridExchanger] = []


@contextlib.contextmanager
def serving_grid(exchanger: GridExchanger) -> Iterator[GridExchanger]:
    """Within this block, ``transport.kind = "flower-deployment"`` exchanges over ``exchanger``."""
    _ACTIVE.append(exchanger)
    try:
        yield exchanger
    finally:
        _ACTIVE.remove(exchanger)


def active_grid_transport(*, config: Any, nodes: Sequence[Any] = ()) -> GridTransport:
    """The transport of the ServerApp this runs in (``transport.kind = "flower-deployment"``).

    ``nodes`` are the runner's in-process client nodes: their trainer's DP-SGD noise multiplier
    (record-level DP, as the runner resolved it) goes to the remote nodes with every message.
    """
    if not _ACTIVE:
        raise ConfigError(
            "transport.kind = 'flower-deployment' runs only inside privfed's Flower ServerApp "
            "(flwr run examples/flower_app); use 'simulation' or 'flower-simulation' here"
        )
    exchanger = _ACTIVE[-1]
    dp = getattr(getattr(nodes[0], "trainer", None), "dp", None) if nodes else None
    if dp is not None:
        exchanger.sample_noise_multiplier = float(dp.noise_multiplier)
    return GridTransport(exchanger)
