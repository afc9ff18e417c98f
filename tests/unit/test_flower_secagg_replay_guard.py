"""The Flower ClientApp persists a node's last answered secure round in ``context.state``:
a ClientApp rebuilt per message (a deployment) still refuses to re-run a secure round."""

from __future__ import annotations

import types
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, RecordDict

from privfed.client.stages import AppendMetricsStage, FixedPointStage, UploadPipeline
from privfed.client.trainer import LocalResult
from privfed.config import PrivacyConfig
from privfed.secagg import SecAggServer
from privfed.transport.flower import client_app
from privfed.transport.flower.grid import RECORD
from privfed.transport.messages import SecureRoundRequest


class _Trainer:
    dp = None  # no DP-SGD

    def train(self, *, global_vector: Any, data: Any, seed: int) -> LocalResult:
        del data
        r = np.random.default_rng(seed)
        return LocalResult(delta=r.normal(0, 0.1, global_vector.size).astype(np.float32), num_examples=1,
                           train_loss=0.5, steps=1)  # fmt: skip


def test_a_rerun_secure_round_is_refused_across_client_app_invocations(monkeypatch: pytest.MonkeyPatch) -> None:
    config = types.SimpleNamespace(seed=3, privacy=PrivacyConfig())  # no DP: the node's policy imposes nothing
    side = client_app.ClientSide(config=config, client_data=[None] * 3, trainer=_Trainer())  # type: ignore[arg-type, list-item]
    monkeypatch.setattr(client_app, "client_side", lambda config_toml: side)
    # Building a real flwr Message needs a running Flower task; the reply is inspected as its fields.
    monkeypatch.setattr(client_app, "_reply", lambda msg, fields: fields)
    fixed_point = FixedPointStage(bits=32, clip=1.0, extra_clip=10.0, dim=4, extra=1, num_summands=3)
    pipeline = UploadPipeline([AppendMetricsStage(names=["train_loss"]), fixed_point])
    state = RecordDict()

    def serve(rnd: int) -> dict[str, Any]:
        server = SecAggServer(round=rnd, cohort=[0, 1, 2], degree=2, threshold=2, bits=32, dim=5, session=b"s" * 16)
        setup = server.start()[0]
        request = SecureRoundRequest(round=rnd, vector=np.zeros(4, np.float32), stages=pipeline.to_json(), setup=setup)
        content = RecordDict(
            {
                RECORD: ConfigRecord(
                    {"client-id": 0, "data": request.to_bytes(), "config": "", "round": rnd, "stage": "advertise"}
                )
            }
        )
        msg = types.SimpleNamespace(content=content)
        context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=state, run_config={})
        fields: dict[str, Any] = client_app._serve(msg, context)  # type: ignore[arg-type, assignment]
        return fields

    assert "data" in serve(7)  # answered: the node's AdvertiseKeys
    assert state.config_records["privfed-answered"]["last-secure-round"] == 7
    assert "data" not in serve(7)  # a new ClientApp invocation, same node state: silent
    assert "data" not in serve(5)
    assert "data" in serve(8)
    assert state.config_records["privfed-answered"]["last-secure-round"] == 8
