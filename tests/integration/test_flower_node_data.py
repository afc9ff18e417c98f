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


@pytest.mark.slow  # 16-65 s on 2 shared cores: four runs of the tiny model (Flower, two references)
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
    with pytest.raises(DataError, match=r"does not support record-level DP yet .*'sample'"):
        local_examples(client_side(dump_config(record_dp)), str(path))
