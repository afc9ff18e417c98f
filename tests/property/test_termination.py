"""Every sampler and search loop terminates (or refuses with a typed error) at the extremes it accepts.

A hypothesis draw once found ``discrete_gaussian`` looping forever for a tiny sigma. Each loop here is
run at the edges of what its caller (or the config) can pass: it must return within a time limit
(``_deadline``, so a regression fails instead of hanging the suite) and give the right distribution,
or raise a typed, one-line error.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privfed.compression.quantize import ConditionalRoundingError, FixedPointCodec
from privfed.errors import ConfigError
from privfed.privacy.calibrate import calibrate, calibrate_noise_multiplier
from privfed.privacy.discrete import MAX_SIGMA, MAX_SKELLAM_VARIANCE, discrete_gaussian, skellam
from privfed.privacy.distributed import plan_distributed_noise
from privfed.privacy.dpfedavg import clip_to_norm
from privfed.secagg.graph import harary_graph, neighbour_graph, recommended_degree
from privfed.server.server import sample_cohort


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging if the block runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"did not terminate within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- discrete Gaussian -------------------------------------------------------------------------


@settings(max_examples=60)
@given(log2_sigma=st.floats(min_value=-1100.0, max_value=52.0), size=st.integers(0, 2000), seed=st.integers(0, 2**32))
def test_discrete_gaussian_terminates_for_every_accepted_sigma(log2_sigma: float, size: int, seed: int) -> None:
    sigma = min(2.0**log2_sigma, MAX_SIGMA)  # 2**-1100 is a subnormal: sigma**2 underflows to 0
    with _deadline(10):
        x = discrete_gaussian(sigma=sigma, size=size, rng=np.random.default_rng(seed))
    assert x.shape == (size,) and x.dtype == np.int64
    # |X| beyond 12 sigma + 1 has probability < 1e-31 per draw: a wrapped int64 would land there.
    assert np.all(np.abs(x) <= 12 * sigma + 1)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 2.0**30, MAX_SIGMA])
def test_discrete_gaussian_keeps_its_scale_up_to_the_largest_sigma(sigma: float) -> None:
    with _deadline(10):
        x = discrete_gaussian(sigma=sigma, size=40_000, rng=np.random.default_rng(7)).astype(np.float64)
    # Var N_Z(0, s^2) is within 1e-6 of s^2 for s >= 1 and below it for small s; the sample variance
    # of 40,000 draws is within 3% (4.2 standard errors). sigma = 1e19 used to give 0.24 s^2.
    ratio = float(x.var()) / sigma**2
    assert ratio <= 1.03
    if sigma >= 1:
        assert ratio >= 0.97


@pytest.mark.parametrize("sigma", [MAX_SIGMA * 1.0001, 1e19, 1e30, 1e155, 1.7e308, math.inf, math.nan, -1.0])
def test_discrete_gaussian_refuses_scales_it_cannot_draw(sigma: float) -> None:
    # 1e19 gave a wrong variance, 1e30 all zeros, 1e155 an OverflowError; inf/NaN/negative were already refused.
    with pytest.raises(ValueError, match="sigma must be"):
        discrete_gaussian(sigma=sigma, size=3, rng=np.random.default_rng(0))


# --- Skellam -----------------------------------------------------------------------------------


def test_skellam_below_the_split_draws_exactly_what_it_drew_before() -> None:
    # One rng.poisson call per side for means up to 2**44: the same stream as before the split existed.
    for variance in (0.5, 3.0, 1e6, 2.0**45):
        got = skellam(variance=variance, size=500, rng=np.random.default_rng(11))
        rng = np.random.default_rng(11)
        old = rng.poisson(variance / 2, size=500).astype(np.int64) - rng.poisson(variance / 2, size=500).astype(
            np.int64
        )
        assert np.array_equal(got, old), variance


@pytest.mark.parametrize("log2_variance", [46, 50, 52])
def test_skellam_keeps_its_variance_for_huge_means(log2_variance: int) -> None:
    # numpy's Poisson alone is off here (variance +4.7% at mean 2**47, +8.5% at 2**50, kurtosis 3.4+);
    # drawn in pieces of mean <= 2**44 the moments match: variance within 3% (4.7 standard errors of
    # 50,000 draws), kurtosis near 3.
    variance = 2.0**log2_variance
    with _deadline(20):
        x = skellam(variance=variance, size=50_000, rng=np.random.default_rng(3)).astype(np.float64)
    z = x / math.sqrt(variance)
    assert abs(float(z.mean())) < 0.03
    assert abs(float(z.var()) - 1) < 0.03
    assert abs(float((z**4).mean()) - 3) < 0.15


@pytest.mark.parametrize("variance", [0.0, 5e-324, 1e-300])
def test_skellam_at_vanishing_variance_is_zero(variance: float) -> None:
    assert not skellam(variance=variance, size=1000, rng=np.random.default_rng(0)).any()


@pytest.mark.parametrize("variance", [MAX_SKELLAM_VARIANCE * 1.0001, 1.8e19, 1e20, 1e300, math.inf, math.nan, -1.0])
def test_skellam_refuses_variances_it_cannot_draw(variance: float) -> None:
    # Above ~1.8e19 numpy raised "lam value too large"; between 2**52 and that, a draw took minutes.
    with pytest.raises(ValueError, match="variance must be"):
        skellam(variance=variance, size=3, rng=np.random.default_rng(0))


def test_a_skellam_plan_beyond_the_sampler_is_a_config_error() -> None:
    common = dict(
        noise_multiplier=1.0,
        coordinate_clip=1.0,
        clip_norm=1.0,
        kept=1024,
        rotated=1024,
        num_clients=100,
        sample_rate=0.1,
        dropout_rate=0.0,
    )
    ok = plan_distributed_noise(mechanism="skellam", bits=32, **common)  # type: ignore[arg-type]
    assert ok.local_stddev**2 <= MAX_SKELLAM_VARIANCE
    with pytest.raises(
        ConfigError, match=r"skellam' at secagg.bits = 40 .* lower secagg.bits or use distributed_gaussian"
    ):
        plan_distributed_noise(mechanism="skellam", bits=40, **common)  # type: ignore[arg-type]
    # The discrete Gaussian draws up to 2**52: the same plan is fine, and its share is drawable.
    gauss = plan_distributed_noise(mechanism="distributed_gaussian", bits=52, **common)  # type: ignore[arg-type]
    assert gauss.local_stddev <= MAX_SIGMA


def test_distributed_plans_at_the_config_extremes_end_in_a_plan_or_a_config_error() -> None:
    # privacy.user.clip_norm <= 1e6 and secagg.clip >= 1e-6: clip_norm = 1e300 used to raise OverflowError
    # (ceil of an infinite noise margin) from inside the plan's search.
    from privfed.config import config_from_dict

    with pytest.raises(ConfigError, match=r"privacy\.user\.clip_norm must be > 0\.0 and <= 1000000\.0; got 1e\+300"):
        config_from_dict({"privacy": {"mode": "user", "user": {"clip_norm": 1e300}}})
    for mechanism in ("distributed_gaussian", "skellam"):
        for noise_multiplier, clip_norm, coordinate_clip in ((1e4, 1e6, 1e-6), (1e-6, 1e-300, 1e6), (1e4, 1.0, 1e-6)):
            with _deadline(20), contextlib.suppress(ConfigError):
                plan = plan_distributed_noise(
                    mechanism=mechanism,
                    noise_multiplier=noise_multiplier,
                    bits=52,
                    coordinate_clip=coordinate_clip,
                    clip_norm=clip_norm,
                    kept=1 << 20,
                    rotated=1 << 20,
                    num_clients=1_000_000,
                    sample_rate=1e-6,
                    dropout_rate=0.99,
                )
                limit = MAX_SIGMA**2 if mechanism == "distributed_gaussian" else MAX_SKELLAM_VARIANCE
                assert plan.local_stddev**2 <= limit


# --- conditional rounding ----------------------------------------------------------------------


def test_conditional_rounding_gives_up_after_max_tries_with_a_typed_error() -> None:
    codec = FixedPointCodec(bits=16, clip=1.0, num_summands=4)
    values = np.full(64, 0.3)
    for bound in (0.0, -1.0):  # unreachable bounds: every draw fails the check
        rng = np.random.default_rng(5)
        with _deadline(10), pytest.raises(ConditionalRoundingError, match="in 7 tries"):
            codec.encode(values, rng=rng, norm_bound=bound, max_tries=7)
        # Exactly 7 roundings were drawn (64 float32 uniforms each), no more.
        reference = np.random.default_rng(5)
        reference.random(7 * 64, dtype=np.float32)
        assert rng.bit_generator.state == reference.bit_generator.state


def test_conditional_rounding_with_an_infinite_bound_draws_once() -> None:
    codec = FixedPointCodec(bits=16, clip=1.0, num_summands=4)
    values = np.linspace(-2.0, 2.0, 33)
    plain = codec.encode(values, rng=np.random.default_rng(9))
    assert np.array_equal(codec.encode(values, rng=np.random.default_rng(9), norm_bound=math.inf), plain)


def test_a_nan_norm_bound_is_refused() -> None:
    # NaN compares false both ways: the last of max_tries draws used to be returned unchecked.
    codec = FixedPointCodec(bits=16, clip=1.0, num_summands=4)
    with pytest.raises(ValueError, match="norm_bound must be a number"):
        codec.encode(np.full(8, 0.3), rng=np.random.default_rng(0), norm_bound=math.nan)


@pytest.mark.parametrize("max_tries", [0, -3, True])
def test_conditional_rounding_needs_at_least_one_try(max_tries: int) -> None:
    codec = FixedPointCodec(bits=16, clip=1.0, num_summands=4)
    with pytest.raises(ValueError, match="max_tries must be an integer >= 1"):
        codec.encode(np.zeros(4), rng=np.random.default_rng(0), norm_bound=1.0, max_tries=max_tries)


def test_nan_values_have_no_code() -> None:
    # The int64 cast of NaN is arbitrary (it became -2**63, then wrapped into a valid-looking residue).
    codec = FixedPointCodec(bits=16, clip=1.0, num_summands=4)
    with pytest.raises(ValueError, match=r"values must not be NaN \(1 of 3 are\)"):
        codec.encode(np.array([0.1, math.nan, 0.2]), rng=np.random.default_rng(0))
    infinite = codec.encode(np.array([math.inf, -math.inf]), rng=np.random.default_rng(0))
    assert codec.decode_sum(infinite, contributors=1).tolist() == [1.0, -1.0]  # clipped, as before


# --- calibration -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_calibration_refuses_a_target_that_is_not_a_finite_positive_number(target: float) -> None:
    # NaN used to return sigma = 9.3e-10 (every comparison with NaN is false).
    with pytest.raises(ConfigError, match="target epsilon must be a finite number > 0"):
        calibrate(target_epsilon=target, epsilon_of=lambda sigma: 1.0 / sigma)


def test_calibration_refuses_an_accountant_that_returns_nan() -> None:
    with pytest.raises(ConfigError, match="epsilon = nan at noise multiplier 1"):
        calibrate(target_epsilon=1.0, epsilon_of=lambda sigma: math.nan)


def test_calibration_search_is_bounded_when_no_sigma_reaches_the_target() -> None:
    calls: list[float] = []

    def never(sigma: float) -> float:
        calls.append(sigma)
        return math.inf

    with pytest.raises(ConfigError, match="no noise multiplier below 1e4"):
        calibrate(target_epsilon=1.0, epsilon_of=never)
    assert len(calls) <= 15 and max(calls) <= 1e4


def test_calibration_at_the_config_extremes_terminates_with_a_checked_sigma() -> None:
    # The config accepts delta in (0, 1), epsilon up to 100, rates down to 1e-6 and 1e6 rounds.
    with _deadline(60):
        for q, steps, eps in ((1.0, 1, 100.0), (1e-6, 1000, 0.5), (0.01, 1_000_000, 8.0), (1.0, 1000, 1.0)):
            sigma = calibrate_noise_multiplier(target_epsilon=eps, delta=1e-5, sample_rate=q, steps=steps)
            assert 0 < sigma <= 1e4
        with pytest.raises(ConfigError, match=r"no noise multiplier reaches epsilon 1\.0 at delta 1e-300"):
            calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-300, sample_rate=0.01, steps=100)


# --- clipping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [-1.0, -1e-30, math.nan])
def test_clip_to_norm_refuses_a_bound_it_could_never_meet(max_norm: float) -> None:
    # A negative bound looped forever (the one-ulp shrinking stops at 0); NaN clipped nothing.
    with _deadline(5), pytest.raises(ValueError, match="max_norm must be >= 0"):
        clip_to_norm(np.ones(8, dtype=np.float32), max_norm=max_norm)


@pytest.mark.parametrize("max_norm", [0.0, 5e-324, 1e-45, 1e-38, 3.0])
def test_clip_to_norm_terminates_at_tiny_bounds(max_norm: float) -> None:
    delta = np.random.default_rng(2).normal(size=1000).astype(np.float32)
    with _deadline(5):
        clipped, norm = clip_to_norm(delta, max_norm=max_norm)
    assert float(np.linalg.norm(clipped.astype(np.float64))) <= max_norm
    assert norm == pytest.approx(float(np.linalg.norm(delta.astype(np.float64))))


# --- Poisson cohorts and the SecAgg+ graph -----------------------------------------------------


def test_poisson_cohorts_at_the_extreme_rates() -> None:
    # q = clients_per_round / num_clients: the config allows 1 / 1e6 up to 1.
    sizes = [
        sample_cohort(seed=1, round=r, num_clients=1_000_000, clients_per_round=1, poisson=True).size for r in range(5)
    ]
    assert sum(sizes) <= 20  # mean 1 per round
    everyone = sample_cohort(seed=1, round=0, num_clients=50, clients_per_round=50, poisson=True)
    assert everyone.tolist() == list(range(50))
    alone = sample_cohort(seed=1, round=0, num_clients=1, clients_per_round=1, poisson=True)
    assert alone.tolist() == [0]


@pytest.mark.parametrize("n", range(7))
def test_secagg_graph_for_small_cohorts(n: int) -> None:
    ids = list(range(100, 100 + n))
    valid = {n - 1} | {k for k in range(2, n - 1) if k % 2 == 0}  # complete, or even 2 <= k < n - 1
    for degree in range(-1, n + 2):
        expected = min(degree, n - 1)  # neighbour_graph caps a larger degree at the complete graph
        with _deadline(5):
            if degree in valid:
                graphs = [
                    harary_graph(ids, degree=degree, graph_seed=bytes(16)),
                    neighbour_graph(ids, degree=degree, rng=np.random.default_rng(0)),
                ]
            elif degree > n - 1:
                with pytest.raises(ValueError, match="exceeds the cohort size"):
                    harary_graph(ids, degree=degree, graph_seed=bytes(16))
                graphs = [neighbour_graph(ids, degree=degree, rng=np.random.default_rng(0))]
            else:
                with pytest.raises(ValueError, match="degree must be even"):
                    harary_graph(ids, degree=degree, graph_seed=bytes(16))
                with pytest.raises(ValueError, match="degree must be even"):
                    neighbour_graph(ids, degree=degree, rng=np.random.default_rng(0))
                graphs = []
        for graph in graphs:
            assert sorted(graph) == ids
            for client, neighbours in graph.items():
                assert client not in neighbours and len(neighbours) == expected
                assert all(client in graph[other] for other in neighbours)
    assert recommended_degree(n) in valid | {0}


def test_shamir_with_a_constant_random_source_raises_instead_of_looping() -> None:
    from privfed.errors import ProtocolError
    from privfed.secagg import shamir

    with _deadline(10), pytest.raises(ProtocolError, match="not random"):
        shamir.split(b"k" * 32, threshold=3, xs=[1, 2, 3, 4], random=lambda n: b"\xff" * n)
    # one all-ones draw among good ones is only redrawn: the split still works and reconstructs
    draws = iter([b"\xff" * shamir.SHARE_BYTES, b"\x01" * shamir.SHARE_BYTES, b"\x02" * shamir.SHARE_BYTES])
    shares = shamir.split(b"k" * 32, threshold=3, xs=[1, 2, 3, 4], random=lambda n: next(draws))
    assert shamir.combine(shares, threshold=3, secret_bytes=32) == b"k" * 32


@pytest.mark.parametrize(
    ("mechanism", "limit"), [("distributed_gaussian", MAX_SIGMA), ("skellam", math.sqrt(MAX_SKELLAM_VARIANCE))]
)
def test_a_noise_stage_beyond_its_sampler_is_refused_when_parsed(mechanism: str, limit: float) -> None:
    """A server's stage asking for more noise than the sampler draws: ProtocolError at parse time."""
    from privfed.client.stages import DistributedNoiseStage
    from privfed.errors import ProtocolError

    def stage(local_stddev: float) -> DistributedNoiseStage:
        return DistributedNoiseStage(mechanism=mechanism, local_stddev=local_stddev, bits=52, dim=4, min_contributors=2)

    limit = min(limit, 2.0**51)  # the codec's own bound at 52 bits
    assert stage(limit).local_stddev == limit
    with pytest.raises(ProtocolError, match="local_stddev must be in"):
        stage(limit * 2)
