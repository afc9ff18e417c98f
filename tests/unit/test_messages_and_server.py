"""Wire messages and the server's validation of client replies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privfed.adapters import AdapterLayout
from privfed.errors import ProtocolError
from privfed.server import FedAvg, FederatedServer, sample_cohort
from privfed.transport import ClientUpdate, Exchange, GlobalModel, Reply
from tests.fakes import ScriptedTransport


def update(round: int, client: int, delta: np.ndarray, n: int = 10, loss: float = 1.0) -> bytes:
    return ClientUpdate(round=round, client_id=client, num_examples=n, train_loss=loss, delta=delta).to_bytes()


def test_messages_round_trip() -> None:
    vec = np.arange(5, dtype=np.float32) / 3
    g = GlobalModel.from_bytes(GlobalModel(round=4, vector=vec).to_bytes())
    assert g.round == 4 and g.vector.tobytes() == vec.tobytes()
    u = ClientUpdate.from_bytes(update(2, 9, vec, n=17, loss=0.25))
    assert (u.round, u.client_id, u.num_examples, u.train_loss) == (2, 9, 17, 0.25)
    assert u.delta.tobytes() == vec.tobytes()
    assert len(GlobalModel(round=1, vector=vec).to_bytes()) == 6 + 12 + 4 * 5


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b[:-1],  # truncated payload
        lambda b: b[:10],  # truncated header
        lambda b: b"XXXX" + b[4:],  # wrong magic
        lambda b: b[:4] + b"\x09" + b[5:],  # wrong version
        lambda b: b[:5] + b"\x01" + b[6:],  # a GlobalModel kind where an update is expected
        lambda b: b + b"\x00\x00\x00\x00",  # trailing bytes
    ],
)
def test_malformed_updates_raise_protocol_error(mutate: Callable[[bytes], bytes]) -> None:
    raw = update(1, 0, np.ones(3, dtype=np.float32))
    with pytest.raises(ProtocolError):
        ClientUpdate.from_bytes(mutate(raw))


@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    for cls in (ClientUpdate, GlobalModel):
        with contextlib.suppress(ProtocolError):
            cls.from_bytes(data)


def make_server(dim: int = 4) -> FederatedServer:
    layout = AdapterLayout.from_shapes([("w", (dim,))])
    return FederatedServer(
        layout=layout,
        global_vector=np.zeros(dim, dtype=np.float32),
        strategy=FedAvg(),
        num_clients=5,
        clients_per_round=3,
        seed=0,
    )


def test_server_averages_valid_updates_weighted_by_examples() -> None:
    server = make_server()
    transport = ScriptedTransport(
        lambda cohort: [update(1, c, np.full(4, float(c), dtype=np.float32), n=c + 1) for c in cohort]
    )
    result = server.run_round(1, transport)
    cohort = sample_cohort(seed=0, round=1, num_clients=5, clients_per_round=3)
    expected = sum((c + 1) * c for c in cohort) / sum(c + 1 for c in cohort)
    np.testing.assert_allclose(server.global_vector, np.full(4, expected), rtol=1e-6)
    assert result.num_clients == 3 and result.rejected_updates == 0


def test_server_rejects_bad_updates_and_counts_them() -> None:
    server = make_server()
    cohort = sample_cohort(seed=0, round=1, num_clients=5, clients_per_round=3)
    outsider = next(c for c in range(5) if c not in cohort)
    good = int(cohort[0])
    nan = np.array([np.nan, 0, 0, 0], dtype=np.float32)
    inf = np.array([np.inf, 0, 0, 0], dtype=np.float32)
    replies = [
        update(1, good, np.ones(4, dtype=np.float32)),
        update(1, good, np.full(4, 100.0, dtype=np.float32)),  # replay from the same client
        update(1, int(cohort[1]), nan),
        update(1, int(cohort[2]), inf),
        update(2, int(cohort[2]), np.ones(4, dtype=np.float32)),  # wrong round
        update(1, outsider, np.ones(4, dtype=np.float32)),  # not selected
        update(1, int(cohort[2]), np.ones(5, dtype=np.float32)),  # wrong length
        b"garbage",
    ]
    result = server.run_round(1, ScriptedTransport(lambda _: replies))
    assert result.num_clients == 1
    assert result.rejected_updates == 7
    np.testing.assert_array_equal(server.global_vector, np.ones(4, dtype=np.float32))


def test_server_keeps_global_when_every_update_is_rejected() -> None:
    server = make_server()
    result = server.run_round(1, ScriptedTransport(lambda cohort: [b"junk" for _ in cohort]))
    assert result.num_clients == 0 and result.rejected_updates == 3
    np.testing.assert_array_equal(server.global_vector, np.zeros(4, dtype=np.float32))


def test_cohorts_depend_only_on_seed_and_round() -> None:
    a = [sample_cohort(seed=1, round=r, num_clients=100, clients_per_round=10) for r in range(1, 6)]
    b = [sample_cohort(seed=1, round=r, num_clients=100, clients_per_round=10) for r in range(1, 6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert all(len(np.unique(x)) == 10 for x in a)
    assert not all(np.array_equal(a[0], x) for x in a[1:])


def test_an_update_claiming_another_client_is_rejected() -> None:
    """The transport knows who sent a reply; an update naming another cohort member is refused."""
    server = make_server()
    cohort = [int(c) for c in sample_cohort(seed=0, round=1, num_clients=5, clients_per_round=3)]
    forged = update(1, cohort[1], np.full(4, 100.0, dtype=np.float32))

    class Impersonation:
        def exchange(self, messages: dict[int, bytes], *, round: int, stage: str, on_reply: object = None) -> Exchange:
            honest = [Reply(c, update(1, c, np.ones(4, dtype=np.float32))) for c in messages if c != cohort[1]]
            return Exchange((Reply(cohort[0], forged), *honest), 0, 0)

    result = server.run_round(1, Impersonation())
    assert result.num_clients == 2 and result.rejected_updates == 1
    np.testing.assert_array_equal(server.global_vector, np.ones(4, dtype=np.float32))
