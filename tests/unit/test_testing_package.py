"""privfed.testing: each checker passes on privfed's implementation and FAILS on a deliberately broken one;
the strategies draw values that privfed accepts; privfed itself never imports hypothesis."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.client.stages import (
    AppendMetricsStage,
    ClipStage,
    FixedPointStage,
    RotateStage,
    SparsifyStage,
    StageContext,
    TopKStage,
    Upload,
    UploadPipeline,
)
from privfed.compression import FixedPointCodec
from privfed.config import config_from_dict
from privfed.privacy import DPFedAvgServer, SecureNoise, SeededNoise, calibrate_noise_multiplier, clip_to_norm
from privfed.secagg import DropoutPlan, SecAggClient, SecAggOutcome, SecAggServer, run_secagg_round
from privfed.testing import (
    check_accountant,
    check_aggregate_from_sum,
    check_clipped_norm,
    check_decode_of_sum,
    check_noise_std,
    check_secure_sum_of_survivors,
    decode_error_bound,
    expected_survivors,
    noise_std_interval,
)
from privfed.testing import strategies as pst

ROOT = Path(__file__).resolve().parents[2]


def updates(clients: int, dim: int, *, scale: float = 0.1, seed: int = 0) -> list[npt.NDArray[np.float64]]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=dim) * scale for _ in range(clients)]


# --- hypothesis stays out of privfed's core ------------------------------------------------------------


def test_privfed_core_never_imports_hypothesis() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "privfed").rglob("*.py"))
        if "testing" not in path.relative_to(ROOT / "privfed").parts
        and re.search(r"^\s*(import|from)\s+hypothesis\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []
    # With hypothesis made unimportable: privfed's core and the checkers import, the strategies say what to install.
    code = """
import sys
sys.modules["hypothesis"] = None
import privfed, privfed.client.stages, privfed.privacy, privfed.secagg, privfed.compression
import privfed.testing
from privfed.testing import check_noise_std, noise_std_interval
low, high = noise_std_interval(samples=1000, false_alarm=0.01)
assert low < 1 < high
try:
    import privfed.testing.strategies
except ImportError as exc:
    assert "pip install" in str(exc), exc
else:
    raise AssertionError("privfed.testing.strategies imported without hypothesis")
"""
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- check_decode_of_sum --------------------------------------------------------------------------------


class OffByOneStep(FixedPointCodec):
    """Encodes every coordinate one quantization step too high (a ``floor`` that should have been ``round``)."""

    def encode(self, values: npt.ArrayLike, *, rng: np.random.Generator, **kwargs: Any) -> npt.NDArray[Any]:
        codes = super().encode(values, rng=rng, **kwargs)
        return ((codes.astype(np.int64) + 1) & ((1 << self.bits) - 1)).astype(codes.dtype)


class Scale:
    """A user's lossless stage: multiply by a public factor, divide the decoded sum by it."""

    name: ClassVar[str] = "scale"

    def __init__(self, factor: float, *, decode_factor: float | None = None) -> None:
        self.factor = factor
        self.decode_factor = factor if decode_factor is None else decode_factor
        self.decode_gain = 1 / factor

    def params(self) -> dict[str, Any]:
        return {"factor": self.factor}

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        return Upload(values=upload.values * self.factor, metrics=upload.metrics)

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        return Upload(values=np.asarray(upload.values) / self.decode_factor, metrics=upload.metrics)


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_decode_of_sum_passes_on_the_codec_and_fails_one_step_off(bits: int) -> None:
    xs = updates(4, 64)
    check_decode_of_sum(FixedPointCodec(bits=bits, clip=1.0, num_summands=4), xs)
    with pytest.raises(AssertionError, match=r"off by .* at coordinate \d+"):
        check_decode_of_sum(OffByOneStep(bits=bits, clip=1.0, num_summands=4), xs)


class WrongRoundRotation(RotateStage):
    """Un-rotates the sum with the signs of the next round."""

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        return super().decode_sum(upload, dataclasses.replace(ctx, round=ctx.round + 1))


def test_decode_of_sum_through_sparsification_and_rotation() -> None:
    dim, clients = 100, 3
    xs = updates(clients, dim, scale=0.05, seed=1)
    sparsify = SparsifyStage.with_sparsity(dim=dim, sparsity=0.5, seed=6)

    def fixed_point(kept: int, *, broken: bool = False) -> FixedPointStage:
        stage = FixedPointStage(bits=12, clip=2.0, extra_clip=1.0, dim=kept, extra=0, num_summands=clients)
        if broken:
            stage.codec = OffByOneStep(bits=12, clip=stage.codec.clip, num_summands=clients)
        return stage

    # Sparsification: the decoded sum stands for the sparsified truth (the same stages, no rounding),
    # checked coordinate by coordinate, so one step off per client shows.
    truth = sparsify.decode_sum(
        Upload(values=np.sum([sparsify.encode(Upload(values=x), StageContext(round=0)).values for x in xs], axis=0)),
        StageContext(round=0),
    ).values
    check_decode_of_sum(UploadPipeline([sparsify, fixed_point(sparsify.kept)]), xs, expected=truth)
    with pytest.raises(AssertionError, match=r"off by .* at coordinate"):
        check_decode_of_sum(UploadPipeline([sparsify, fixed_point(sparsify.kept, broken=True)]), xs, expected=truth)
    with pytest.raises(AssertionError):  # and the sparsified sum is not the sum itself
        check_decode_of_sum(UploadPipeline([sparsify, fixed_point(sparsify.kept)]), xs)
    # Rotation mixes coordinates: the bound is on the L2 norm.
    rotate = RotateStage(dim=dim, seed=5)
    check_decode_of_sum(UploadPipeline([rotate, fixed_point(rotate.padded)]), xs)
    wrong = WrongRoundRotation(dim=dim, seed=5)
    with pytest.raises(AssertionError, match=r"off by .* \(L2\)"):
        check_decode_of_sum(UploadPipeline([wrong, fixed_point(rotate.padded)]), xs)


def test_decode_of_sum_holds_a_user_stage_to_exactness_and_composes_its_gain() -> None:
    xs = updates(5, 16, scale=0.05)
    check_decode_of_sum(Scale(4.0), xs)
    with pytest.raises(AssertionError, match="lossless stage"):
        check_decode_of_sum(Scale(4.0, decode_factor=4.001), xs)
    fixed = FixedPointStage(bits=20, clip=8.0, extra_clip=1.0, dim=16, extra=0, num_summands=5)
    check_decode_of_sum(UploadPipeline([Scale(4.0), fixed]), xs)
    assert decode_error_bound(UploadPipeline([Scale(4.0), fixed]), contributors=5, dim=16) == pytest.approx(
        decode_error_bound(fixed, contributors=5, dim=16) / 4
    )
    with pytest.raises(AssertionError):
        check_decode_of_sum(UploadPipeline([Scale(4.0, decode_factor=4.1), fixed]), xs)
    gainless = Scale(4.0)
    del gainless.decode_gain
    with pytest.raises(AssertionError, match="decode_gain"):
        check_decode_of_sum(UploadPipeline([gainless, fixed]), xs)


def test_decode_of_sum_sums_metrics_and_refuses_per_client_supports() -> None:
    xs = updates(3, 6)
    pipeline = UploadPipeline(
        [
            ClipStage(max_norm=10.0),
            AppendMetricsStage(names=["train_loss", "unclipped"]),
            FixedPointStage(bits=24, clip=1.0, extra_clip=4.0, dim=6, extra=2, num_summands=3),
        ]
    )
    decoded = check_decode_of_sum(pipeline, xs, metrics=[{"train_loss": 0.5}] * 3)
    assert decoded.metrics["train_loss"] == pytest.approx(1.5, abs=1e-5)
    assert decoded.metrics["unclipped"] == pytest.approx(1.5, abs=1e-5)
    with pytest.raises(AssertionError, match="support"):
        check_decode_of_sum(TopKStage(dim=6, kept=2), xs)


# --- check_clipped_norm --------------------------------------------------------------------------------


def clip(delta: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return clip_to_norm(delta, max_norm=1.0)[0]


def test_clipped_norm_passes_on_clip_to_norm_and_fails_on_broken_clips() -> None:
    rng = np.random.default_rng(0)
    long, short = rng.normal(size=32).astype(np.float32) * 3, rng.normal(size=32).astype(np.float32) * 0.01
    for x in (long, short, np.zeros(4, dtype=np.float32)):
        check_clipped_norm(clip, x, max_norm=1.0)
    with pytest.raises(AssertionError, match="exceeds the bound"):
        check_clipped_norm(lambda d: 1.01 * clip(d), long, max_norm=1.0)
    with pytest.raises(AssertionError, match="scales it to C"):
        check_clipped_norm(lambda d: np.zeros_like(d), long, max_norm=1.0)
    with pytest.raises(AssertionError, match="unchanged"):
        check_clipped_norm(lambda d: d / np.linalg.norm(d), short, max_norm=1.0)  # normalises instead of clipping
    with pytest.raises(AssertionError, match="direction"):
        check_clipped_norm(lambda d: np.roll(clip(d), 1), long, max_norm=1.0)


def test_clipped_norm_allows_no_float32_excess() -> None:
    """Scaling by C / norm in float64 and casting to float32 overshoots C by a few ulps for about 1 in 100
    vectors; rtol = 0 catches it (privfed's clip_to_norm shrinks such a vector until it fits)."""

    def naive(delta: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        d = delta.astype(np.float64)
        return (d * min(1.0, 1.0 / float(np.linalg.norm(d)))).astype(np.float32)

    rng = np.random.default_rng(3)
    caught = 0
    for _ in range(1000):
        x = rng.normal(size=rng.integers(2, 64)).astype(np.float32) * 10
        check_clipped_norm(clip, x, max_norm=1.0)
        try:
            check_clipped_norm(naive, x, max_norm=1.0)
        except AssertionError:
            caught += 1
    assert caught >= 1


# --- check_noise_std -----------------------------------------------------------------------------------


def dp_fedavg_noise(source: Any, *, z: float = 1.3, c: float = 0.25) -> Any:
    server = DPFedAvgServer(noise_multiplier=z, clip_norm=c, expected_clients=1.0, adaptive=None)
    return lambda n: server.from_sums(clipped_sum=np.zeros(n), centred_count=0, noise=source).noised_sum


@pytest.mark.parametrize("source", [SeededNoise(7, "test"), SecureNoise()], ids=["seeded", "secure"])
def test_noise_std_passes_on_dp_fedavg_noise(source: Any) -> None:
    check_noise_std(dp_fedavg_noise(source), 1.3 * 0.25)


def test_noise_std_fails_on_wrong_std_bias_and_shape() -> None:
    std = 1.3 * 0.25
    rng = np.random.default_rng(11)
    with pytest.raises(AssertionError, match="noise std"):
        check_noise_std(dp_fedavg_noise(SeededNoise(1), z=1.3 * 1.05), std)  # 5% too much noise
    with pytest.raises(AssertionError, match="noise std"):
        check_noise_std(dp_fedavg_noise(SeededNoise(1), z=1.3 * 0.95), std)  # 5% too little: weaker privacy
    with pytest.raises(AssertionError, match="biased"):
        check_noise_std(lambda n: rng.normal(0.05 * std, std, size=n), std)
    with pytest.raises(AssertionError, match="Gaussian"):  # right mean and std, wrong distribution
        check_noise_std(lambda n: rng.uniform(-std * 3**0.5, std * 3**0.5, size=n), std)


def test_noise_std_interval_is_derived_from_the_sample_size_and_false_alarm_rate() -> None:
    low, high = noise_std_interval(samples=40_000, false_alarm=1e-4)
    assert 0.98 < low < 1 < high < 1.02
    wider = noise_std_interval(samples=4_000, false_alarm=1e-4)
    stricter = noise_std_interval(samples=40_000, false_alarm=1e-8)
    assert wider[0] < low and wider[1] > high and stricter[0] < low and stricter[1] > high
    # The false-alarm rate is what it says: 2,000 honest sources of 500 draws at 10% fail about 200 times.
    rng = np.random.default_rng(5)
    failures = 0
    for _ in range(2000):
        try:
            check_noise_std(lambda n: rng.normal(0, 2.0, size=n), 2.0, samples=500, false_alarm=0.1, check_shape=False)
        except AssertionError:
            failures += 1
    assert 140 <= failures <= 260  # binomial(2000, 0.1): mean 200, sd 13.4


# --- check_secure_sum_of_survivors ---------------------------------------------------------------------

INPUTS = {c: np.arange(6, dtype=np.uint32) * (c + 1) + 65_000 for c in (3, 9, 11, 40, 41, 77)}


def test_secure_sum_passes_on_the_driver_and_expects_aborts() -> None:
    outcome = check_secure_sum_of_survivors(INPUTS, bits=16, dropouts=DropoutPlan({"collect": frozenset({3})}))
    assert outcome is not None and outcome.contributors == (9, 11, 40, 41, 77)
    below = DropoutPlan({"collect": frozenset({3, 9, 11})})  # 3 of 6 left, threshold 4
    assert check_secure_sum_of_survivors(INPUTS, bits=16, dropouts=below) is None


def off_by_one(server: SecAggServer, clients: Mapping[int, SecAggClient], dropouts: DropoutPlan) -> SecAggOutcome:
    outcome = run_secagg_round(server, clients, dropouts=dropouts)
    return dataclasses.replace(outcome, result=(outcome.result + 1) & np.uint32(0xFFFF))


def ignores_dropouts(server: SecAggServer, clients: Mapping[int, SecAggClient], dropouts: DropoutPlan) -> SecAggOutcome:
    return run_secagg_round(server, clients, dropouts=DropoutPlan())


def test_secure_sum_fails_on_broken_drivers() -> None:
    plan = DropoutPlan({"collect": frozenset({3})})
    with pytest.raises(AssertionError, match="differs from the survivors' modular sum"):
        check_secure_sum_of_survivors(INPUTS, bits=16, dropouts=plan, driver=off_by_one)
    with pytest.raises(AssertionError, match="the survivors are"):
        check_secure_sum_of_survivors(INPUTS, bits=16, dropouts=plan, driver=ignores_dropouts)
    below = DropoutPlan({"collect": frozenset({3, 9, 11})})
    with pytest.raises(AssertionError, match="should abort"):
        check_secure_sum_of_survivors(INPUTS, bits=16, dropouts=below, driver=ignores_dropouts)


def test_expected_survivors_models_each_stage() -> None:
    graph = {c: tuple(d for d in range(5) if d != c) for c in range(5)}  # complete graph, 5 clients
    assert expected_survivors(graph, threshold=3, dropouts=DropoutPlan()) == (0, 1, 2, 3, 4)
    assert expected_survivors(graph, threshold=3, dropouts=DropoutPlan({"advertise": frozenset({0, 1})})) == (2, 3, 4)
    assert expected_survivors(graph, threshold=3, dropouts=DropoutPlan({"unmask": frozenset({0, 1})})) == (
        0,
        1,
        2,
        3,
        4,
    )  # dropping after the masked input still counts them in
    assert expected_survivors(graph, threshold=3, dropouts=DropoutPlan({"unmask": frozenset({0, 1, 2})})) is None


# --- check_accountant ----------------------------------------------------------------------------------


def test_accountant_passes_on_rdp_and_prv() -> None:
    eps = check_accountant(
        "rdp", noise_multiplier=1.1, sample_rate=0.05, delta=1e-5, steps=[0, 1, 10, 100], target_epsilon=3.0
    )
    assert eps[0] == 0 and eps[-1] > eps[1] > 0
    assert check_accountant("prv", noise_multiplier=1.1, sample_rate=0.05, delta=1e-5, steps=[1, 10])[1] > 0


def test_accountant_fails_on_broken_accountants_and_calibration() -> None:
    from privfed.privacy import compute_epsilon

    def per_step(events: Any, delta: float) -> float:  # forgets to compose: "averages" instead
        steps = sum(e.steps for e in events)
        return compute_epsilon(events, delta=delta) / steps if steps else 0.0

    def offset(events: Any, delta: float) -> float:
        return compute_epsilon(events, delta=delta) + 0.1

    with pytest.raises(AssertionError, match="decreased"):
        check_accountant(per_step, noise_multiplier=1.0, sample_rate=0.1, delta=1e-5, steps=[1, 10, 100])
    with pytest.raises(AssertionError, match="no steps"):
        check_accountant(offset, noise_multiplier=1.0, sample_rate=0.1, delta=1e-5, steps=[1, 10])

    def too_little_noise(target: float, steps: int) -> float:
        sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=0.1, steps=steps)
        return 0.9 * sigma

    common: dict[str, Any] = {"noise_multiplier": 1.0, "sample_rate": 0.1, "delta": 1e-5, "steps": [10, 200]}
    check_accountant("rdp", target_epsilon=2.0, **common)
    with pytest.raises(AssertionError, match="above the target"):
        check_accountant("rdp", target_epsilon=2.0, calibrate_fn=too_little_noise, **common)


# --- check_aggregate_from_sum -------------------------------------------------------------------------


def test_aggregate_from_sum_passes_on_fedavg_and_fails_on_a_biased_sum_hook() -> None:
    from privfed.server import FedAvg

    deltas = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_allclose(check_aggregate_from_sum(FedAvg(), deltas), deltas.mean(axis=0), rtol=1e-6)

    class OffByOneCohort(FedAvg):
        def aggregate_sum(self, total: Any, *, weight: float) -> Any:
            return super().aggregate_sum(total, weight=weight + 1)  # counts the server as a client

    class NoSum:
        def aggregate(self, deltas: Any, *, weights: Any) -> Any:
            return np.median(deltas, axis=0)

    with pytest.raises(AssertionError, match="differs from aggregate"):
        check_aggregate_from_sum(OffByOneCohort(), deltas)
    with pytest.raises(AssertionError, match="no aggregate_sum"):
        check_aggregate_from_sum(NoSum(), deltas)


# --- strategies ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_config_strategies_draw_sections_that_config_from_dict_accepts(data: st.DataObject) -> None:
    num_clients = data.draw(st.integers(3, 500))
    cohort = data.draw(st.integers(3, min(num_clients, 60)))
    privacy = data.draw(pst.privacy_configs(num_clients=num_clients, secagg=True))
    user_level = privacy.mode in ("user", "both")
    secagg = data.draw(pst.secagg_configs(cohort=cohort, num_summands=num_clients if user_level else cohort))
    compression = data.draw(pst.compression_configs(secagg=True, user_dp=user_level))
    config = config_from_dict(
        {
            "name": "drawn",
            "partition": {"num_clients": num_clients},
            "server": {"clients_per_round": cohort, "weighting": "uniform"},
            "secagg": dataclasses.asdict(secagg),
            "compression": dataclasses.asdict(compression),
            "privacy": dataclasses.asdict(privacy),
        }
    )
    assert config.secagg == secagg and config.privacy == privacy and config.compression == compression
    plain = data.draw(pst.compression_configs(secagg=False))
    mode = data.draw(st.sampled_from(["none", "sample"]))
    config_from_dict(
        {
            "name": "plain",
            "compression": dataclasses.asdict(plain),
            "privacy": {"mode": mode, "sample": {"noise_multiplier": 1.0}},
        }
    )


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_sampling_rates_noise_multipliers_and_deltas_are_in_range(data: st.DataObject) -> None:
    q = data.draw(pst.sampling_rates())
    z = data.draw(pst.noise_multipliers())
    n = data.draw(st.integers(2, 10**6))
    delta = data.draw(pst.deltas(num_clients=n))
    assert 0 < q <= 1 and 0.3 <= z <= 50 and 0 < delta < 1 / n
    assert 0.1 <= data.draw(pst.target_epsilons()) <= 20


@settings(max_examples=25, deadline=None)
@given(layout=pst.adapter_layouts(), data=st.data())
def test_layouts_are_lora_shaped_and_updates_round_trip(layout: Any, data: st.DataObject) -> None:
    a = [s for s in layout.slots if s.name.endswith("lora_A.default.weight")]
    b = [s for s in layout.slots if s.name.endswith("lora_B.default.weight")]
    assert len(a) == len(b) >= 1
    assert all(sa.shape[0] == sb.shape[1] for sa, sb in zip(a, b, strict=True))  # the same rank r
    named = data.draw(pst.named_updates(layout))
    flat = layout.flatten_arrays(named)
    assert all(np.array_equal(layout.unflatten(flat)[k], v) for k, v in named.items())
    vector = data.draw(pst.update_vectors(layout))
    assert vector.shape == (layout.dim,) and vector.dtype == np.float32 and np.all(np.isfinite(vector))


@settings(max_examples=25, deadline=None)
@given(cohort=pst.secagg_cohorts(max_clients=20), data=st.data())
def test_cohorts_are_accepted_by_the_server_and_dropouts_are_cumulative(cohort: Any, data: st.DataObject) -> None:
    server = SecAggServer(
        round=1,
        cohort=cohort.client_ids,
        degree=cohort.degree,
        threshold=cohort.threshold,
        bits=cohort.bits,
        dim=cohort.dim,
        session=bytes(16),
    )
    assert sorted(server.neighbours) == list(cohort.client_ids)
    inputs = data.draw(pst.secagg_inputs(cohort))
    assert all(v.shape == (cohort.dim,) and (cohort.dim == 0 or int(v.max()) < 2**cohort.bits) for v in inputs.values())
    plan = data.draw(pst.dropout_plans(cohort.client_ids))
    seen: set[int] = set()
    for stage in ("advertise", "share", "collect", "unmask"):
        gone = plan.drops[stage]
        assert gone <= set(cohort.client_ids) and not gone & seen  # a dropped client stays dropped
        seen |= gone


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_codec_and_pipeline_strategies_leave_room_for_the_sum(data: st.DataObject) -> None:
    summands = data.draw(st.integers(1, 300))
    codec = data.draw(pst.fixed_point_codecs(num_summands=summands))
    assert codec.max_code >= 1
    pipeline = data.draw(pst.upload_pipelines(data.draw(st.integers(1, 200)), num_summands=summands, clip=1.0))
    assert isinstance(pipeline.stages[-1], FixedPointStage) and pipeline.stages[-1].codec.max_code >= 1


# --- docs ----------------------------------------------------------------------------------------------


def test_the_testing_guide_has_a_runnable_example_and_is_linked() -> None:
    guide = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    # tests/unit/test_docs_examples.py runs every marked block of docs/*.md; these must be among them.
    names = set(re.findall(r"<!-- test: ([\w-]+) -->[ \t]*\n```python\n", guide))
    assert names >= {"testing-upload-stage", "testing-strategy", "testing-mechanism", "testing-secagg"}
    assert "testing.md" in (ROOT / "docs" / "extending.md").read_text(encoding="utf-8")
