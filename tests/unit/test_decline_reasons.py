"""A node that sits a round out says why (``Decline.reason``); the server counts the reasons.

The reason is the client's own text: the wire bounds it (UTF-8, no control characters, at
most ``Decline.MAX_REASON_BYTES``), the server only counts it, per round, in
``RoundResult.declines`` / ``metrics.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privfed.errors import ProtocolError
from privfed.experiments import RoundMetrics
from privfed.server import sample_cohort
from privfed.transport import ClientUpdate, Decline, Exchange, GlobalModel, Reply
from privfed.transport.messages import _one_line, message_kind
from tests.conftest import tiny_config
from tests.unit.test_messages_and_server import make_server, update
from tests.unit.test_records import _check

_HEAD = 6 + 8  # prefix (magic, version, kind) + round, client id


def test_a_reason_round_trips_and_a_decline_without_one_is_the_old_layout() -> None:
    d = Decline(round=3, client_id=7, reason="record-level budget: round 3 would spend 8.2 > 8")
    assert Decline.from_bytes(d.to_bytes()) == d
    bare = Decline(round=3, client_id=7).to_bytes()
    assert len(bare) == _HEAD and Decline.from_bytes(bare) == Decline(3, 7, "")


def test_control_characters_become_spaces_and_long_reasons_are_cut_on_a_character_boundary() -> None:
    assert Decline.from_bytes(Decline(1, 2, " a\nb\tc\x00 ").to_bytes()).reason == "a b c"
    long = Decline(1, 2, "é" * 500).to_bytes()
    reason = Decline.from_bytes(long).reason
    assert len(long) == _HEAD + 2 + len(reason.encode()) and len(reason.encode()) <= Decline.MAX_REASON_BYTES
    assert reason.endswith("...") and set(reason[:-3]) == {"é"}


@given(st.text(max_size=400))
def test_any_text_is_sent_as_its_one_line_form_within_the_bound(text: str) -> None:
    raw = Decline(5, 6, text).to_bytes()
    got = Decline.from_bytes(raw).reason
    assert len(got.encode()) <= Decline.MAX_REASON_BYTES and _one_line(got) == got
    one = _one_line(text)
    assert got == one or (got.endswith("...") and one.startswith(got[:-3].rstrip()))


def _with_reason(body: bytes) -> bytes:
    return Decline(1, 2).to_bytes() + body


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (_with_reason(b"\x05"), "truncated reason length"),
        (_with_reason(struct.pack("<H", 0)), "1..240 bytes"),
        (_with_reason(struct.pack("<H", 4) + b"abc"), "header says 4, message holds 3"),
        (_with_reason(struct.pack("<H", 3) + b"abcd"), "header says 3, message holds 4"),
        (_with_reason(struct.pack("<H", 241) + b"a" * 241), "1..240 bytes"),
        (_with_reason(struct.pack("<H", 2) + b"\xff\xfe"), "not UTF-8"),
        (_with_reason(struct.pack("<H", 3) + b"a\nb"), "control characters"),
        (_with_reason(struct.pack("<H", 2) + b" a"), "surrounding whitespace"),
    ],
)
def test_a_damaged_reason_is_a_one_line_protocol_error(raw: bytes, says: str) -> None:
    with pytest.raises(ProtocolError, match=says):
        Decline.from_bytes(raw)


@given(st.binary(max_size=300))
def test_random_bytes_after_a_decline_header_only_ever_raise_protocol_error(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        got = Decline.from_bytes(_with_reason(body))
        # Accepted: exactly a well-formed reason, which re-encodes to the same bytes.
        assert got.to_bytes() == _with_reason(body)


class _Replies:
    """Replies with an explicit sender each (what a transport reports)."""

    def __init__(self, replies: list[tuple[int, bytes]]) -> None:
        self.replies = replies

    def exchange(self, messages: Mapping[int, bytes], *, round: int, stage: str, on_reply: object = None) -> Exchange:
        return Exchange(tuple(Reply(s, d) for s, d in self.replies), 0, 0)


def test_the_server_counts_each_valid_decline_under_its_reason_and_rejects_forged_ones() -> None:
    server = make_server()
    a, b, c = (int(x) for x in sample_cohort(seed=0, round=1, num_clients=5, clients_per_round=3))
    outsider = next(x for x in range(5) if x not in (a, b, c))
    result = server.run_round(
        1,
        _Replies(
            [
                (a, update(1, a, np.ones(4, dtype=np.float32))),
                (b, Decline(1, b, "budget spent").to_bytes()),
                (c, Decline(1, c).to_bytes()),
                (b, Decline(1, b, "budget spent").to_bytes()),  # a repeat: rejected, not counted
                (c, Decline(1, a, "posing as a").to_bytes()),  # names another client
                (a, Decline(2, a, "wrong round").to_bytes()),
                (outsider, Decline(1, outsider, "not sampled").to_bytes()),
                (b, Decline(1, b).to_bytes()[:-1]),  # truncated
            ]
        ),
    )
    assert result.declines == {"budget spent": 1, "": 1}
    assert result.num_clients == 1 and result.rejected_updates == 7
    np.testing.assert_array_equal(server.global_vector, np.ones(4, dtype=np.float32))


def test_a_client_that_declined_cannot_also_send_an_update_in_the_round() -> None:
    server = make_server()
    a, b, c = (int(x) for x in sample_cohort(seed=0, round=1, num_clients=5, clients_per_round=3))
    replies = [(b, Decline(1, b, "no").to_bytes()), (b, update(1, b, np.full(4, 9.0, dtype=np.float32)))]
    replies += [(x, update(1, x, np.ones(4, dtype=np.float32))) for x in (a, c)]
    result = server.run_round(1, _Replies(replies))
    assert result.declines == {"no": 1} and result.num_clients == 2 and result.rejected_updates == 2
    np.testing.assert_array_equal(server.global_vector, np.ones(4, dtype=np.float32))


def test_a_client_update_is_not_a_decline() -> None:
    raw = ClientUpdate(round=1, client_id=0, num_examples=1, train_loss=0.0, delta=np.zeros(2, np.float32))
    with pytest.raises(ProtocolError, match="expected message kind 4"):
        Decline.from_bytes(raw.to_bytes())


class _DeclinesIn:
    """A client node that declines one round with a reason, and trains the others."""

    def __init__(self, node: Any, round: int, reason: str) -> None:
        self.node, self.round, self.reason = node, round, reason

    def __getattr__(self, name: str) -> Any:
        return getattr(self.node, name)

    def handle(self, data: bytes) -> bytes | None:
        if message_kind(data) == GlobalModel.KIND and GlobalModel.from_bytes(data).round == self.round:
            return Decline(round=self.round, client_id=self.node.client_id, reason=self.reason).to_bytes()
        return self.node.handle(data)


def test_a_run_writes_the_declines_of_a_round_to_metrics_jsonl(tmp_path: Path) -> None:
    from privfed.experiments.runner import run_experiment
    from privfed.transport.simulation import SimulationTransport

    config = tiny_config(**{"server.rounds": 2, "partition.num_clients": 3, "server.clients_per_round": 3})

    def hook(t: Any) -> Any:
        nodes = [_DeclinesIn(n, 1, "battery\nlow") if i == 1 else n for i, n in enumerate(t.nodes)]
        return SimulationTransport(nodes=nodes)

    run_experiment(config, tmp_path / "run", quiet=True, transport_hook=hook)
    first, second = (json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
    assert first["declines"] == {"battery low": 1} and first["rejected_updates"] == 1 and first["num_clients"] == 2
    assert "declines" not in second and second["num_clients"] == 3
    _check(first, RoundMetrics, {"declines"})
