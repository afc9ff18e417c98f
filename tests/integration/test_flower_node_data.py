"""A SuperNode's own data (``data-path`` in its node config), through privfed's Flower apps.

Flower's Simulation Engine gives every virtual node a fixed node config (``partition-id``,
``num-partitions``), so these tests drive privfed's ``ServerApp`` main and ``ClientApp`` in
this process over a loopback grid: each push hands the message to ``ClientApp.__call__``
with that node's own ``Context`` (its node config and persistent state), as a SuperNode
does; a raising ClientApp becomes an error reply, as in Flower. The same code on real
SuperNodes is tested in ``test_flower_deployment.py`` (slow).
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from conftest import tiny_config
from flwr.app import Context, Error, Message, RecordDict
from safetensors.numpy import load_file

from privfed.config import dump_config, replace_path
from privfed.errors import DataError
from privfed.experiments.runner import build_experiment, run_experiment
from privfed.transport.messages import Decline, message_kind

NUM_NODES = 5  # 0, 1: own files; 2: a missing file; 3: wrong columns; 4: no data-path (its partition)
USER_DP_SECAGG = {
    "secagg.enabled": True,
    "server.weighting": "uniform",
    "privacy.mode": "user",
    "privacy.delta": 1e-2,
    "privacy.user.target_epsilon": 3.0,
}


@pytest.fixture
def server_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task identity a ServerApp process has (Flower sets it before calling main)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class LoopbackGrid:
    """A Flower ``Grid`` whose nodes are privfed's ClientApp called in this process."""

    def __init__(self, node_configs: dict[int, dict[str, Any]]) -> None:
        from privfed.transport.flower.client_app import app

        self.app = app
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config=config, state=RecordDict(), run_config={})
            for node, config in node_configs.items()
        }
        self.replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as Flower's grids do
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # Flower turns a raising ClientApp into an error reply
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def _write_csv(path: Path, header: list[str], rows: Iterable[Sequence[str]]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _partition_rows(exp: Any, client: int, keep: slice = slice(None)) -> tuple[list[list[str]], np.ndarray]:
    """Client ``client``'s rows of the run's dataset as (label name, text), and their positions in its partition."""
    rows = exp.client_indices[client]
    positions = np.arange(len(rows), dtype=np.int64)[keep]
    names = exp.dataset.label_names
    return [[names[exp.dataset.labels[r]], exp.dataset.texts[r]] for r in rows[keep]], positions


class _Declines:
    """An in-process node that declines every round (the reference for a node that cannot read its data)."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id

    def handle(self, data: bytes) -> bytes:
        from privfed.transport.messages import CompressedRoundRequest, GlobalModel, SecureRoundRequest

        kinds = {m.KIND: m for m in (GlobalModel, SecureRoundRequest, CompressedRoundRequest)}
        round = kinds[message_kind(data)].from_bytes(data).round  # type: ignore[index]
        return Decline(round=round, client_id=self.client_id).to_bytes()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _adapter(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow  # 16-90 s on 2 shared cores: four runs of the tiny model (Flower, two references)
@pytest.mark.parametrize("extra", [{}, USER_DP_SECAGG], ids=["plain", "secagg-user-dp"])
def test_nodes_train_on_their_own_files_and_bad_files_are_rejected(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], extra: dict[str, Any], server_identity: None
) -> None:
    from privfed.transport.flower import server_app
    from privfed.transport.simulation import SimulationTransport

    config = tiny_config(
        **{
            "server.rounds": 2,
            "partition.num_clients": NUM_NODES,
            "server.clients_per_round": NUM_NODES,
            **extra,
        }
    )
    exp = build_experiment(config)
    rows0, _ = _partition_rows(exp, 0)
    half = slice(0, len(exp.client_indices[1]) // 2)
    rows1, kept1 = _partition_rows(exp, 1, half)
    data = tmp_path / "node-data"
    data.mkdir()
    # columns in another order, plus one the run does not read
    node0 = _write_csv(data / "client0.csv", ["label", "note", "text"], ([lab, "x", txt] for lab, txt in rows0))
    node1 = _write_csv(data / "client1.csv", ["label", "text"], rows1)
    wrong = _write_csv(data / "client3.csv", ["category", "body"], rows0)
    missing = data / "client2.csv"
    grid = LoopbackGrid(
        {
            100 + k: {"partition-id": k, **({"data-path": str(path)} if path else {})}
            for k, path in enumerate([node0, node1, missing, wrong, None])
        }
    )
    config_path = tmp_path / "experiment.toml"
    config_path.write_text(dump_config(config))
    out = tmp_path / "flower_run"
    run_config = {"config": str(config_path), "out-dir": str(out)}
    server_app.main(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))  # type: ignore[arg-type]

    records = _records(out)
    assert len(records) == 2 and json.loads((out / "summary.json").read_text())["completed"]
    for record in records:
        assert record["clients_sampled"] == NUM_NODES
        assert record["clients_rejected"] == 2 and record["num_clients"] == 3  # nodes 2 and 3 declined
        assert record["secagg_aborted"] is None
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("privfed: client")]
    assert sorted(lines) == [  # one line per failing node, not one per round
        f"privfed: client 2 rejected in round 1: DataError: data-path '{missing}' of this SuperNode does not exist",
        f"privfed: client 3 rejected in round 1: DataError: data file '{wrong}' has no column 'text' "
        "(data.text_column); columns found: 'category', 'body'",
    ], err[-2000:]

    # The same run in process: node 0 holds its partition, node 1 the first half of its own, 2 and 3 decline,
    # node 4 its partition.
    def local_nodes(t: Any) -> SimulationTransport:
        from privfed.client.node import ClientNode

        n0, n1, n4 = t.nodes[0], t.nodes[1], t.nodes[4]
        return SimulationTransport(
            nodes=[
                ClientNode(client_id=0, trainer=n0.trainer, data=n0.data, seed=config.seed),
                ClientNode(client_id=1, trainer=n1.trainer, data=n1.data.subset(kept1), seed=config.seed),
                _Declines(2),  # type: ignore[list-item]
                _Declines(3),  # type: ignore[list-item]
                n4,
            ]
        )

    reference = tmp_path / "in_process"
    run_experiment(
        replace_path(config, "transport.kind", "simulation"), reference, quiet=True, transport_hook=local_nodes
    )
    for a, b in zip(_records(reference), records, strict=True):
        assert (b["num_clients"], b["clients_rejected"]) == (a["num_clients"], a["clients_rejected"])
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5)
    want, got = _adapter(reference), _adapter(out)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
    # node 1 really trained on its half: with its whole partition the result differs
    whole = tmp_path / "whole_partition"
    run_experiment(
        replace_path(config, "transport.kind", "simulation"),
        whole,
        quiet=True,
        transport_hook=lambda t: SimulationTransport(nodes=[*t.nodes[:2], _Declines(2), _Declines(3), t.nodes[4]]),  # type: ignore[attr-defined, list-item]
    )
    differs = max(float(np.abs(_adapter(whole)[k] - got[k]).max()) for k in got)
    assert differs > 1e-4


def test_local_examples_map_labels_by_name_and_refuse_what_the_run_cannot_use(tmp_path: Path) -> None:
    from privfed.transport.flower.client_app import client_side, local_examples

    config = tiny_config(**{"partition.num_clients": NUM_NODES})
    side = client_side(dump_config(config))
    names = side.label_names
    texts = ["first text here", "second text here", "third text here"]
    labels = [names[-1], names[0], names[-1]]
    path = _write_csv(tmp_path / "mine.csv", ["text", "label"], zip(texts, labels, strict=True))
    examples = local_examples(side, str(path))
    # the file's classes (2 of the run's) are mapped onto the run's class indices by name
    assert examples.labels.tolist() == [len(names) - 1, 0, len(names) - 1]
    assert len(examples) == 3 and len(examples.tokens) == 3

    strange = _write_csv(tmp_path / "strange.csv", ["text", "label"], [["a text", names[0]], ["b text", "nope"]])
    with pytest.raises(DataError, match=r"label\(s\) 'nope' that are not classes of this run; allowed: "):
        local_examples(side, str(strange))

    record_dp = tiny_config(
        **{"partition.num_clients": NUM_NODES, "privacy.mode": "sample", "privacy.sample.noise_multiplier": 1.0}
    )
    # record-level DP on a node's own data: allowed, the node's own ledger accounts it (test_flower_policy.py)
    assert len(local_examples(client_side(dump_config(record_dp)), str(path))) == 3


def _fake_message(fields: dict[str, Any]) -> Any:
    """A stand-in for a Flower ``Message`` (building a real one needs a running Flower task)."""
    import types

    from flwr.app import ConfigRecord

    from privfed.transport.flower.grid import RECORD

    return types.SimpleNamespace(content=RecordDict({RECORD: ConfigRecord(fields)}))


def test_a_node_with_its_own_single_class_file_never_reads_the_servers_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's data.path is not on this node; it gets the classes from the server's record, builds
    the model and trainer from the config alone, trains on its one-class file, and its update equals
    the in-process client's on the same examples."""
    import privfed.data.files
    import privfed.experiments.runner as runner
    from privfed.client.node import ClientNode
    from privfed.transport.flower import client_app
    from privfed.transport.messages import ClientUpdate, GlobalModel

    config = tiny_config(**{"partition.num_clients": NUM_NODES})
    exp = build_experiment(config)
    reference_trainer = runner._prepare_privacy(exp).trainer
    names = exp.dataset.label_names
    client = exp.client_data[0]
    label = int(np.bincount(client.labels).argmax())
    positions = np.flatnonzero(client.labels == label)
    rows, _ = _partition_rows(exp, 0)
    own = _write_csv(tmp_path / "mine.csv", ["text", "label"], ([rows[p][1], rows[p][0]] for p in positions))

    calls: list[str] = []

    def no_dataset(*args: Any, **kwargs: Any) -> Any:
        calls.append("read")
        raise AssertionError("a node with its own data read the run's dataset")

    monkeypatch.setattr(runner, "build_experiment", no_dataset)
    monkeypatch.setattr(runner, "load_data", no_dataset)
    monkeypatch.setattr(privfed.data.files, "load_data", no_dataset)
    monkeypatch.setattr(client_app, "_reply", lambda msg, fields: fields)
    # the server's own file, on the server's machine only
    server_file = tmp_path / "server-only" / "news.csv"
    node_toml = dump_config(replace_path(config, "data.path", str(server_file)))
    context = Context(
        run_id=1, node_id=7, node_config={"partition-id": 0, "data-path": str(own)}, state=RecordDict(), run_config={}
    )
    common = {"config": node_toml, "label-names": list(names)}
    hello = client_app.hello(
        _fake_message({**common, "warm-up": True, "client-id": -1, "round": 0, "stage": "hello"}), context
    )
    assert hello["client-id"] == 0  # type: ignore[index]
    side = client_app.client_side(node_toml)
    assert side._trainer is not None and not side.built_partition  # warmed up without the dataset

    start = GlobalModel(round=1, vector=exp.initial_vector).to_bytes()
    fields: dict[str, Any] = client_app._serve(  # type: ignore[assignment]
        _fake_message({**common, "client-id": 0, "round": 1, "stage": "train", "data": start}), context
    )
    assert "error" not in fields, fields.get("error")
    got = ClientUpdate.from_bytes(fields["data"])
    assert calls == [] and not side.built_partition and not server_file.parent.exists()

    examples = client_app.local_examples(side, str(own))  # cached: what the node trained on
    assert examples.labels.tolist() == [label] * len(positions)  # the one class, at its index in the run
    reference = ClientNode(client_id=0, trainer=reference_trainer, data=client.subset(positions), seed=config.seed)
    want = ClientUpdate.from_bytes(reference.handle(start))  # type: ignore[arg-type]
    assert got.num_examples == want.num_examples == len(positions)
    assert got.train_loss == pytest.approx(want.train_loss, abs=1e-6)
    assert float(np.abs(got.delta).max()) > 1e-4  # it trained
    np.testing.assert_allclose(got.delta, want.delta, rtol=0, atol=1e-6)

    # a server naming other classes: the node declines with the reason, in one line
    other_run = dump_config(replace_path(replace_path(config, "data.path", str(server_file)), "name", "other"))
    other = {"config": other_run, "label-names": ["x", "y"], "client-id": 0, "round": 1, "stage": "train"}
    fields = client_app._serve(_fake_message({**other, "data": start}), context)  # type: ignore[assignment]
    assert message_kind(fields["data"]) == Decline.KIND
    assert f"label(s) {names[label]!r} that are not classes of this run; allowed: 'x', 'y'" in fields["error"]
    assert calls == []


@pytest.mark.parametrize("value", [[], ["a", "a"], ["a", ""], "a,b", [1, 2]])
def test_malformed_label_names_from_the_server_are_a_protocol_error(value: Any) -> None:
    from flwr.app import ConfigRecord

    from privfed.errors import ProtocolError
    from privfed.transport.flower.node_data import record_label_names

    assert record_label_names(ConfigRecord({"config": ""})) is None
    assert record_label_names(ConfigRecord({"label-names": ["b", "a"]})) == ("b", "a")
    with pytest.raises(ProtocolError, match="'label-names' must be a non-empty list of distinct class names"):
        record_label_names({"label-names": value})


@pytest.mark.slow  # 24-48 s on 2 loaded cores: sigma calibration, two model builds, two DP-SGD runs
def test_record_level_dp_node_trains_with_the_servers_noise_multiplier_not_its_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under record-level DP with a target epsilon, sigma is calibrated on the partition's sizes: the
    node takes the server's sigma from the message and its DP-SGD update equals the in-process one."""
    import privfed.data.files
    import privfed.experiments.runner as runner
    from privfed.transport.flower.node_data import RunFacts, client_side, local_examples

    config = tiny_config(
        **{
            "partition.num_clients": NUM_NODES,
            "privacy.mode": "sample",
            "privacy.delta": 1e-3,
            "privacy.sample.target_epsilon": 4.0,
        }
    )
    exp = build_experiment(config)
    reference = runner._prepare_privacy(exp).trainer
    assert reference.dp is not None
    sigma = reference.dp.noise_multiplier
    rows, _ = _partition_rows(exp, 2)
    own = _write_csv(tmp_path / "mine.csv", ["text", "label"], ([text, label] for label, text in rows))

    def no_dataset(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a node with its own data read the run's dataset")

    monkeypatch.setattr(runner, "build_experiment", no_dataset)
    monkeypatch.setattr(runner, "load_data", no_dataset)
    monkeypatch.setattr(privfed.data.files, "load_data", no_dataset)
    node_config = replace_path(config, "data.path", str(tmp_path / "server-only" / "news.csv"))
    names = exp.dataset.label_names

    # without the server's sigma the node could only calibrate on the partition: it would need the dataset
    blind = client_side(dump_config(replace_path(node_config, "name", "blind")))
    blind_examples = local_examples(blind, str(own), run=RunFacts(label_names=names))
    assert len(blind_examples) == len(rows)
    with pytest.raises(AssertionError, match="read the run's dataset"):
        _ = blind.trainer

    side = client_side(dump_config(node_config))
    examples = local_examples(side, str(own), run=RunFacts(label_names=names, sample_noise_multiplier=sigma))
    assert side.trainer.dp == reference.dp and not side.built_partition
    np.testing.assert_array_equal(examples.labels, exp.client_data[2].labels)
    got = side.trainer.train(global_vector=exp.initial_vector, data=examples, seed=11)
    want = reference.train(global_vector=exp.initial_vector, data=exp.client_data[2], seed=11)
    assert got.steps == want.steps > 0 and float(np.abs(got.delta).max()) > 1e-4
    np.testing.assert_allclose(got.delta, want.delta, rtol=0, atol=1e-6)


def test_the_server_sends_its_classes_and_record_level_sigma_with_every_message() -> None:
    import types

    from privfed.errors import ProtocolError
    from privfed.transport.flower.grid import RECORD, GridExchanger, active_grid_transport, serving_grid
    from privfed.transport.flower.node_data import run_facts

    config = tiny_config(**{"partition.num_clients": NUM_NODES})
    exchanger = GridExchanger(None, config=config, reply_timeout=1.0)  # type: ignore[arg-type]
    plain = exchanger._content(client_id=0, round=1, stage="train", data=b"").config_records[RECORD]
    facts = run_facts(plain)
    assert facts.label_names == build_experiment(config).dataset.label_names
    assert facts.sample_noise_multiplier is None and "sample-noise-multiplier" not in plain
    node = types.SimpleNamespace(trainer=types.SimpleNamespace(dp=types.SimpleNamespace(noise_multiplier=1.25)))
    with serving_grid(exchanger):
        active_grid_transport(config=config, nodes=[node])
    record = exchanger._content(client_id=0, round=1, stage="train", data=b"").config_records[RECORD]
    assert run_facts(record).sample_noise_multiplier == 1.25
    for bad in (0.0, -1.0, float("nan"), "1.0", True):
        with pytest.raises(ProtocolError, match="'sample-noise-multiplier' must be a finite number > 0"):
            run_facts({"sample-noise-multiplier": bad})
