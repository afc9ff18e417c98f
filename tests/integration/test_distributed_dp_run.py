"""End-to-end distributed DP runs: the clients add the noise, the server never decodes a noiseless sum (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privfed.client.stages import DistributedNoiseStage, StageContext, Upload, UploadPipeline
from privfed.experiments import resume_experiment, run_experiment
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.distributed import distributed_plan
from privfed.server.aggregation import DistributedDPAggregation
from privfed.server.server import FederatedServer
from tests.conftest import tiny_config

TARGET = 8.0
BASE = {
    "server.weighting": "uniform",
    "partition.num_clients": 10,
    "server.clients_per_round": 5,
    "server.rounds": 3,
    "secagg.enabled": True,
    "secagg.bits": 24,
    "secagg.clip": 0.05,
    "compression.rotation": True,
    "privacy.mode": "user",
    "privacy.delta": 1e-2,
    "privacy.user.clip_norm": 0.1,
    "privacy.user.target_epsilon": TARGET,
}


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["distributed_gaussian", "skellam"])
def test_distributed_run_trains_charges_epsilon_and_the_server_sees_only_noised_sums(
    mechanism: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre_noise: dict[int, list[np.ndarray]] = {}
    decoded: dict[int, tuple[np.ndarray, int]] = {}
    pipelines: dict[int, UploadPipeline] = {}
    encode, from_sum, upload_pipeline = (
        DistributedNoiseStage.encode,
        DistributedDPAggregation.from_sum,
        FederatedServer.upload_pipeline,
    )

    def spy_encode(self: DistributedNoiseStage, upload: Upload, ctx: StageContext) -> Upload:
        pre_noise.setdefault(ctx.round, []).append(np.asarray(upload.values).astype(np.int64))
        return encode(self, upload, ctx)

    def spy_from_sum(self: DistributedDPAggregation, total: np.ndarray, **kw: Any) -> Any:
        decoded[kw["round"]] = (np.array(total, dtype=np.float64), kw["contributors"])
        return from_sum(self, total, **kw)

    def spy_pipeline(self: FederatedServer) -> UploadPipeline:
        pipelines[0] = upload_pipeline(self)
        return pipelines[0]

    monkeypatch.setattr(DistributedNoiseStage, "encode", spy_encode)
    monkeypatch.setattr(DistributedDPAggregation, "from_sum", spy_from_sum)
    monkeypatch.setattr(FederatedServer, "upload_pipeline", spy_pipeline)

    config = tiny_config(**BASE, **{"privacy.user.mechanism": mechanism})
    summary = run_experiment(config, tmp_path / "run", quiet=True)
    rs = records(tmp_path / "run")
    assert summary["completed"] and len(rs) == 3
    assert all(r["update_applied"] for r in rs if r["num_clients"] >= 3)
    assert np.isfinite(summary["final_eval_loss"])
    # The ledger charged the distributed event: epsilon below the target, and equal to an
    # independent evaluation of the plan the server used.
    sigma = summary["user_noise_multiplier"]
    plan = distributed_plan(
        mechanism=mechanism,
        noise_multiplier=sigma,
        clip_norm=0.1,
        dim=summary["trainable_params"],
        secagg=config.secagg,
        compression=config.compression,
        num_clients=10,
        clients_per_round=5,
    )
    assert 0 < summary["epsilon_user"] <= TARGET * (1 + 1e-9)
    expected = compute_epsilon([plan.event(steps=3)], delta=1e-2)
    assert summary["epsilon_user"] == pytest.approx(expected, rel=1e-12)
    assert rs[-1]["epsilon_user"] == pytest.approx(expected, rel=1e-12)
    # What the server decoded each round: the contributors' data plus noise of the planned scale.
    pipeline = pipelines[0]
    noiseless = UploadPipeline(pipeline.stages[:-1])
    checked = 0
    for round, (total, contributors) in decoded.items():
        uploads = pre_noise.get(round, [])
        if contributors < 3 or len(uploads) != contributors:
            continue
        clean_residues = np.sum(uploads, axis=0) % (1 << 24)
        clean = noiseless.decode_sum(
            Upload(values=clean_residues), StageContext(round=round, contributors=contributors)
        ).values
        fixed_point = pipeline.stages[-2]
        step = float(np.asarray(fixed_point.codec.scale).reshape(-1)[0])  # type: ignore[attr-defined]
        expected_std = plan.local_stddev * np.sqrt(contributors) / step
        spread = float(np.std(total - clean))
        assert 0.8 * expected_std <= spread <= 1.2 * expected_std
        assert float(np.linalg.norm(total - clean)) > 0.5 * float(np.linalg.norm(clean))  # never the data alone
        checked += 1
    assert checked >= 2


@pytest.mark.slow
def test_a_distributed_run_resumes_with_the_same_ledger(tmp_path: Path) -> None:
    config = tiny_config(**{**BASE, "privacy.user.mechanism": "skellam", "server.rounds": 2})
    whole = run_experiment(config, tmp_path / "whole", quiet=True)
    run_experiment(config, tmp_path / "split", quiet=True, stop_after_round=1)
    resumed = resume_experiment(tmp_path / "split", quiet=True)
    assert resumed["epsilon_user"] == pytest.approx(whole["epsilon_user"], rel=1e-12)
    assert resumed["final_eval_loss"] == pytest.approx(whole["final_eval_loss"], abs=1e-6)


def test_validate_prints_the_distributed_plan() -> None:
    from privfed.experiments.plan import format_plan, privacy_plan

    config = tiny_config(**{**BASE, "privacy.user.mechanism": "distributed_gaussian"})
    report = privacy_plan(config)
    (level,) = report.levels
    assert level.mechanism == "distributed_gaussian" and level.distributed is not None
    assert 0.99 * TARGET <= level.epsilon <= TARGET * (1 + 1e-9)  # calibrated to the target, as central
    assert level.epsilon == pytest.approx(compute_epsilon([level.distributed.event(steps=3)], delta=1e-2), rel=1e-12)
    text = "\n".join(format_plan(report, config))
    assert "each client adds discrete Gaussian noise under SecAgg" in text
    assert f"credits {level.distributed.shares} shares" in text
    assert "never adds noise nor sees a noiseless sum" in text


@pytest.mark.slow
def test_dropouts_leave_the_charged_epsilon_and_decode_with_enough_survivors(tmp_path: Path) -> None:
    overrides = {**BASE, "privacy.user.mechanism": "distributed_gaussian", "secagg.dropout_rate": 0.15}
    overrides["server.rounds"] = 4
    config = tiny_config(**overrides)
    summary = run_experiment(config, tmp_path / "run", quiet=True)
    rs = records(tmp_path / "run")
    assert summary["completed"]
    assert sum(r["dropped_clients"] for r in rs) > 0  # the injected dropouts happened
    plan = distributed_plan(
        mechanism="distributed_gaussian",
        noise_multiplier=summary["user_noise_multiplier"],
        clip_norm=0.1,
        dim=summary["trainable_params"],
        secagg=config.secagg,
        compression=config.compression,
        num_clients=10,
        clients_per_round=5,
    )
    for r in rs:  # a round is applied exactly when enough clients contributed for the credited shares
        enough = r["num_clients"] >= plan.min_contributors and r["secagg_aborted"] is None
        assert r["update_applied"] == enough
    assert summary["epsilon_user"] == pytest.approx(compute_epsilon([plan.event(steps=4)], delta=1e-2), rel=1e-12)


def test_calibration_beyond_the_samplers_says_why() -> None:
    """A Skellam plan whose noise share the sampler cannot draw (secagg.bits too large): the error names
    the refusal, not only 'no noise multiplier reaches epsilon'."""
    from privfed.errors import ConfigError
    from privfed.experiments.plan import privacy_plan

    config = tiny_config(**{**BASE, "privacy.user.mechanism": "skellam", "secagg.bits": 40})
    with pytest.raises(ConfigError, match=r"target_epsilon = 8 cannot be calibrated: .*secagg.bits = 40 .*Skellam"):
        privacy_plan(config)
