"""Invariant checkers: plain functions that raise ``AssertionError`` with a message saying what broke.

Each checker runs the code under test on the inputs it is given and asserts one
property that privacy or correctness rests on. They need no hypothesis and no
pytest: call them inside a ``@given`` test (the strategies in
:mod:`privfed.testing.strategies` draw the inputs), a plain test, or a script.

* :func:`check_decode_of_sum` -- the server's ``decode_sum`` of the *sum* of the
  clients' encodings is the sum of their updates, within an error bound derived
  from the codec (quantization) or given by the caller;
* :func:`check_clipped_norm` -- a clip returns L2 norm at most ``C`` (and leaves
  shorter updates alone, and keeps the direction of longer ones);
* :func:`check_noise_std` -- Gaussian noise has mean 0 and standard deviation
  ``sigma * C``, with a tolerance derived from the sample size and a false-alarm
  rate (chi-square interval on the variance, normal quantile on the mean, a
  Kolmogorov-Smirnov test of the shape);
* :func:`check_secure_sum_of_survivors` -- a SecAgg+ round with a given dropout
  pattern returns exactly the modular sum of the survivors' inputs, or aborts
  exactly when an independent model of the protocol says it must;
* :func:`check_aggregate_from_sum` -- a server strategy aggregates the sum of the
  updates (all the server has under secure aggregation or DP-FedAvg) exactly as it
  aggregates the updates themselves;
* :func:`check_accountant` -- epsilon is 0 for no steps, monotone in the number
  of steps, and at most the target after calibration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

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
    UploadStage,
)
from privfed.compression.quantize import FixedPointCodec
from privfed.privacy.accountants import compute_epsilon
from privfed.privacy.calibrate import calibrate
from privfed.privacy.events import SampledGaussianEvent
from privfed.rng import generator
from privfed.secagg.client import SecAggClient
from privfed.secagg.crypto import KeyedRandom, mask_dtype
from privfed.secagg.driver import DropoutPlan, SecAggOutcome, run_secagg_round
from privfed.secagg.server import SecAggAborted, SecAggServer

__all__ = [
    "EpsilonFn",
    "SecAggDriver",
    "SumCodec",
    "check_accountant",
    "check_aggregate_from_sum",
    "check_clipped_norm",
    "check_decode_of_sum",
    "check_noise_std",
    "check_secure_sum_of_survivors",
    "decode_error_bound",
    "expected_survivors",
    "noise_std_interval",
]

FloatArray = npt.NDArray[np.float64]


class SumCodec(Protocol):
    """A codec in the shape of :class:`~privfed.compression.FixedPointCodec`: arrays in, arrays out."""

    def encode(self, values: npt.ArrayLike, *, rng: np.random.Generator) -> npt.NDArray[Any]: ...

    def decode_sum(self, residues: npt.ArrayLike, *, contributors: int | None = None) -> FloatArray: ...


class _CodecStage:
    """A :class:`SumCodec` seen as an upload stage, so that one checker serves both."""

    name = "codec"

    def __init__(self, codec: SumCodec) -> None:
        self.codec = codec

    def params(self) -> dict[str, Any]:
        return {}

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        assert ctx.rng is not None
        return dataclasses.replace(upload, values=self.codec.encode(upload.values, rng=ctx.rng))

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        values = self.codec.decode_sum(upload.values, contributors=ctx.contributors)
        return dataclasses.replace(upload, values=np.asarray(values, dtype=np.float64))


def _stages(stage: Any) -> list[Any]:
    if isinstance(stage, UploadPipeline):
        return [s for inner in stage.stages for s in _stages(inner)]
    if isinstance(stage, FixedPointCodec):
        return [_CodecStage(stage)]
    return [stage]


def _step_vector(codec: FixedPointCodec, dim: int) -> FloatArray:
    return np.broadcast_to(np.asarray(codec.rounding_error_bound(), dtype=np.float64), (dim,)).astype(np.float64)


def decode_error_bound(
    stage: UploadStage | UploadPipeline | FixedPointCodec, *, contributors: int, dim: int, round: int = 0
) -> float:
    """L2 bound on ``decode_sum(sum of encodings) - sum of the updates`` for privfed's built-in stages.

    Each fixed-point encoding moves each coordinate by less than one quantization step
    (:meth:`~privfed.compression.FixedPointCodec.rounding_error_bound`), so a sum of
    ``contributors`` encodings is off by less than ``contributors`` steps per coordinate.
    Decoding the stages before it (in reverse) then transforms that error: the inverse
    rotation is orthonormal and cuts padding (L2 norm does not grow), sparsification
    scatters and multiplies by ``dim / kept``, metric coordinates are split off, clip
    and top-k decoding leave it alone, and a stage of your own multiplies it by its
    ``decode_gain`` attribute (a bound on ``|decode(a) - decode(b)| / |a - b|``; 1 for an
    orthonormal map). Inputs must lie inside the codec's clip range (otherwise the
    decoded sum is that of the *clipped* updates, which the caller passes as ``expected``).

    Args:
        stage: a stage, a pipeline, or a bare codec.
        contributors: how many encodings are summed.
        dim: the length of one client's update (the input of the first stage).
        round: the round (shared-seed sparsification keeps a different subset each round).

    The bound is worst case (never a false alarm), so it cannot see a small bias: a codec
    whose every client is one step off in every coordinate stays within ``contributors``
    steps per coordinate about half the time behind a rotation. Without a rotation,
    :func:`check_decode_of_sum` also checks the bound coordinate by coordinate (and
    that coordinates sparsification dropped come back exactly 0), which catches it.

    Returns:
        The bound in input units; 0 for stages without rounding.

    Raises:
        ValueError: a stage without ``decode_gain`` decodes the output of a lossy one, so
            no bound can be derived: give it one, or pass ``tolerance=`` to :func:`check_decode_of_sum`.
    """
    l2, per_coordinate = _error_bounds(stage, contributors=contributors, dim=dim, round=round)
    return l2 if per_coordinate is None else float(np.linalg.norm(per_coordinate))


def _error_bounds(stage: Any, *, contributors: int, dim: int, round: int) -> tuple[float, FloatArray | None]:
    """(L2 bound, per-coordinate bound while every coordinate keeps its place, else None)."""
    stages = _stages(stage)
    # Forward pass: the length of each stage's input, so that a bare codec knows its dim.
    lengths = [dim]
    for s in stages:
        n = lengths[-1]
        if isinstance(s, RotateStage):
            n = s.padded
        elif isinstance(s, SparsifyStage | TopKStage):
            n = s.kept
        elif isinstance(s, AppendMetricsStage):
            n += len(s.names)
        lengths.append(n)
    per_coordinate: FloatArray | None = None  # the error as a per-coordinate bound, while coordinates are kept
    l2 = 0.0  # or as an L2 bound, once a stage mixes coordinates

    def mixed() -> float:
        return l2 + (0.0 if per_coordinate is None else float(np.linalg.norm(per_coordinate)))

    for s, n in zip(reversed(stages), reversed(lengths[:-1]), strict=True):
        lossless_so_far = per_coordinate is None and l2 == 0.0
        name = getattr(s, "name", type(s).__name__)
        if isinstance(s, FixedPointStage | _CodecStage):
            if not lossless_so_far:
                raise ValueError(f"cannot derive a bound: stage {name!r} decodes the output of another lossy stage")
            codec = s.codec
            if not isinstance(codec, FixedPointCodec):
                raise ValueError(f"cannot derive a bound for codec {type(codec).__name__}: pass tolerance=")
            per_coordinate = contributors * _step_vector(codec, n)
        elif lossless_so_far or isinstance(s, ClipStage | TopKStage):
            continue
        elif isinstance(s, AppendMetricsStage):
            if per_coordinate is not None:
                per_coordinate = per_coordinate[: per_coordinate.size - len(s.names)]
        elif isinstance(s, SparsifyStage):
            if per_coordinate is not None and per_coordinate.size == s.kept:
                scattered = np.zeros(s.dim, dtype=np.float64)  # coordinates not kept come back exactly 0
                scattered[s.subset(round)] = per_coordinate * (s.dim / s.kept)
                per_coordinate = scattered
            else:
                l2, per_coordinate = mixed() * (s.dim / s.kept), None
        elif isinstance(s, RotateStage):
            l2, per_coordinate = mixed(), None
        elif isinstance(getattr(s, "decode_gain", None), int | float):
            l2, per_coordinate = mixed() * float(s.decode_gain), None
        else:
            raise ValueError(
                f"cannot derive a bound: stage {name!r} decodes the output of a lossy stage and has no "
                "decode_gain; give it one, or pass tolerance= (the L2 error your pipeline guarantees)"
            )
    return l2, per_coordinate


def _sum_encodings(encodings: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
    """Add encodings as the secure sum does: integer words wrap in their own dtype, floats in float64."""
    first = encodings[0]
    for i, e in enumerate(encodings[1:], start=1):
        assert e.shape == first.shape and e.dtype == first.dtype, (
            f"encodings of client 0 and client {i} are {first.dtype}{list(first.shape)} and {e.dtype}{list(e.shape)}: "
            "a secure sum needs every client's encoding to line up coordinate by coordinate"
        )
    if np.issubdtype(first.dtype, np.unsignedinteger):
        total = np.zeros(first.shape, dtype=first.dtype)
        for e in encodings:
            np.add(total, e, out=total)  # wraps modulo 2**32 / 2**64, like the masked sum
        return total
    if np.issubdtype(first.dtype, np.integer):
        return np.asarray(np.sum([e.astype(np.int64) for e in encodings], axis=0), dtype=np.int64)
    return np.asarray(np.sum([e.astype(np.float64) for e in encodings], axis=0), dtype=np.float64)


def check_decode_of_sum(
    stage: UploadStage | UploadPipeline | FixedPointCodec | SumCodec,
    updates: Sequence[npt.ArrayLike] | npt.NDArray[Any],
    *,
    expected: npt.ArrayLike | None = None,
    tolerance: float | None = None,
    round: int = 0,
    seed: int = 0,
    metrics: Sequence[Mapping[str, float]] | None = None,
) -> Upload:
    """Assert ``decode_sum(sum_i encode(update_i))`` equals ``sum_i update_i`` within a bound.

    This is what makes an upload stage usable under secure aggregation: the server
    only ever holds the sum of the encodings. Client ``i`` encodes with
    ``StageContext(round, client_id=i, rng=generator(seed, "quantize", round, i))``;
    encodings are added as the secure sum adds them (unsigned words wrap in their
    dtype, so residues modulo ``2**bits`` for any ``bits`` up to the word size);
    the server decodes with ``StageContext(round, contributors=len(updates))``.

    Args:
        stage: an upload stage (privfed's or your own), an :class:`UploadPipeline`, or a
            codec with ``encode(values, *, rng)`` / ``decode_sum(residues, *, contributors)``.
        updates: the clients' updates, each float[d].
        expected: the exact value the decoded sum stands for (default: the sum of
            ``updates``); e.g. the sum of the *clipped* updates for a pipeline that clips.
        tolerance: allowed L2 error. Default: :func:`decode_error_bound` for privfed's
            built-in stages (0 plus float round-off for lossless ones); a lossy stage of
            your own must say what it guarantees.
        round, seed: key the stage context and the clients' rounding generators.
        metrics: per-client metrics to start each upload with (e.g. ``{"train_loss": ...}``).

    Returns:
        The decoded server-side :class:`Upload` (values and summed metrics).
    """
    assert len(updates) >= 1, "check_decode_of_sum needs at least one client's update"
    xs = [np.asarray(u, dtype=np.float64).reshape(-1) for u in updates]
    dim = xs[0].size
    assert all(x.size == dim for x in xs), f"updates must all have {dim} values; got {[x.size for x in xs]}"
    is_stage = isinstance(stage, UploadPipeline) or hasattr(stage, "params")
    as_stage: Any = stage if is_stage else _CodecStage(cast(SumCodec, stage))
    encoded: list[Upload] = []
    for i, x in enumerate(xs):
        ctx = StageContext(round=round, client_id=i, rng=generator(seed, "quantize", round, i))
        start = Upload(values=x.copy(), metrics=dict(metrics[i]) if metrics is not None else {})
        out = as_stage.encode(start, ctx)
        assert out.support is None, (
            f"client {i}'s encoding names its own coordinates (support): such encodings cannot be summed, "
            "so 'decode of a sum' does not apply (top-k is for plain uploads only)"
        )
        encoded.append(out)
    total_metrics: dict[str, float] = {}
    for e in encoded:
        for key, value in e.metrics.items():
            total_metrics[key] = total_metrics.get(key, 0.0) + float(value)
    total = Upload(values=_sum_encodings([np.asarray(e.values) for e in encoded]), metrics=total_metrics)
    decoded: Upload = as_stage.decode_sum(total, StageContext(round=round, contributors=len(xs)))
    values = np.asarray(decoded.values, dtype=np.float64).reshape(-1)
    truth = np.sum(xs, axis=0) if expected is None else np.asarray(expected, dtype=np.float64).reshape(-1)
    assert values.shape == truth.shape, f"decoded sum has {values.size} values; the sum of the updates has {truth.size}"
    per_coordinate: FloatArray | None = None
    if tolerance is None:
        try:
            tolerance, per_coordinate = _error_bounds(stage, contributors=len(xs), dim=dim, round=round)
        except ValueError as exc:
            raise AssertionError(f"{exc}") from None
        if per_coordinate is not None:
            tolerance = float(np.linalg.norm(per_coordinate))
    scale = max((float(np.linalg.norm(x)) for x in xs), default=0.0)
    slack = 1e-9 * scale  # float64 round-off of rotations and rescaling
    error = values - truth
    if per_coordinate is not None and per_coordinate.shape == error.shape:
        beyond = np.abs(error) > per_coordinate * (1 + 1e-9) + slack
        if np.any(beyond):
            j = int(np.argmax(np.abs(error) - per_coordinate))
            raise AssertionError(
                f"decode of the sum of {len(xs)} encodings is off by {error[j]:.6g} at coordinate {j} "
                f"({int(np.count_nonzero(beyond))} coordinates beyond their bound); {len(xs)} roundings allow "
                f"at most {per_coordinate[j]:.6g} there"
            )
    limit = tolerance * (1 + 1e-9) + slack
    norm = float(np.linalg.norm(error))
    assert norm <= limit, (
        f"decode of the sum of {len(xs)} encodings is off by {norm:.6g} (L2) from the sum of the updates; "
        f"the codec allows at most {limit:.6g}"
        + ("" if tolerance else " (a lossless stage: only float round-off)")
        + f"; worst coordinate {int(np.argmax(np.abs(error)))}"
    )
    return dataclasses.replace(decoded, values=values)


def check_clipped_norm(
    clip: Callable[[npt.NDArray[Any]], npt.ArrayLike],
    update: npt.ArrayLike,
    *,
    max_norm: float,
    rtol: float = 0.0,
    check_direction: bool = True,
) -> npt.NDArray[np.float64]:
    """Assert ``clip(update)`` has L2 norm at most ``max_norm``, and is a clip, not something else.

    The norm is computed in float64 from the returned values, exactly as the DP
    sensitivity is: ``rtol = 0`` (the default) allows no excess at all.
    ``check_direction`` also asserts what makes it a *clip*: an update within the
    bound comes back unchanged (relative 1e-6, float32 rounding), and a longer one
    comes back with the same direction and a norm of at least ``max_norm (1 - 1e-5)``
    (a "clip" that returns zeros has norm <= C, but is not one).

    Args:
        clip: ``update -> clipped update`` (e.g. ``lambda d: clip_to_norm(d, max_norm=C)[0]``).
        update: float[d].
        max_norm: C.
        rtol: allowed relative excess over C.
        check_direction: also check the unchanged / same-direction properties.

    Returns:
        The clipped update, float64[d].
    """
    x = np.asarray(update, dtype=np.float64).reshape(-1)
    out = np.asarray(clip(np.asarray(update)), dtype=np.float64).reshape(-1)
    assert out.shape == x.shape, f"clip returned {out.size} values for an update of {x.size}"
    assert np.all(np.isfinite(out)), "clip returned NaN or infinite values"
    norm = float(np.linalg.norm(out))
    assert norm <= max_norm * (1 + rtol), (
        f"clipped norm {norm!r} exceeds the bound C = {max_norm!r} by {norm / max_norm - 1:.3g} (relative; "
        f"allowed {rtol:g}): the DP sensitivity would be larger than accounted"
    )
    if check_direction:
        original = float(np.linalg.norm(x))
        if original <= max_norm:
            worst = float(np.max(np.abs(out - x), initial=0.0))
            assert np.allclose(out, x, rtol=1e-6, atol=0.0), (
                f"an update of norm {original:.6g} <= C = {max_norm:.6g} must come back unchanged; "
                f"a coordinate moved by {worst:.3g}"
            )
        elif max_norm > 0:
            assert norm >= max_norm * (1 - 1e-5), (
                f"an update of norm {original:.6g} > C = {max_norm:.6g} came back with norm {norm:.6g}: "
                "a clip scales it to C, not below"
            )
            cosine = float(np.dot(out, x)) / (norm * original)
            assert cosine >= 1 - 1e-4, f"the clipped update changed direction (cosine {cosine:.6f} with the input)"
    return out


def noise_std_interval(*, samples: int, false_alarm: float) -> tuple[float, float]:
    """Relative interval for the sample std of ``samples`` N(0, s^2) draws: ``[low s, high s]``.

    Two-sided chi-square interval at level ``false_alarm`` for the sample variance
    (``n - 1`` degrees of freedom): an honest source falls outside with probability
    ``false_alarm``. Its width shows what the test can detect: with 40,000 draws at
    1e-4, a std off by more than 1.4% is caught.
    """
    from scipy import stats

    if samples < 2 or not 0 < false_alarm < 1:
        raise ValueError(f"need samples >= 2 and 0 < false_alarm < 1; got {samples}, {false_alarm}")
    dof = samples - 1
    low = math.sqrt(dof / float(stats.chi2.ppf(1 - false_alarm / 2, dof)))
    high = math.sqrt(dof / float(stats.chi2.ppf(false_alarm / 2, dof)))
    return low, high


def check_noise_std(
    sample: Callable[[int], npt.ArrayLike],
    expected_std: float,
    *,
    samples: int = 40_000,
    false_alarm: float = 3e-4,
    check_shape: bool = True,
) -> FloatArray:
    """Assert that ``sample(samples)`` looks like i.i.d. N(0, expected_std^2) draws.

    The false-alarm rate (the chance that a correct source fails) is split evenly
    between the tests run: a two-sided chi-square interval on the sample variance
    (:func:`noise_std_interval`), a two-sided normal-quantile bound on the mean
    (``z * std / sqrt(n)``), and with ``check_shape`` a Kolmogorov-Smirnov test
    against the normal distribution (catches e.g. uniform noise of the right std).

    Args:
        sample: ``n -> n`` draws (any shape with ``n`` elements), e.g. the noise a
            mechanism adds to a zero sum: ``lambda n: server.from_sums(clipped_sum=np.zeros(n), ...).noised_sum``.
        expected_std: ``sigma * C`` (or whatever the mechanism promises), > 0.
        samples: how many draws to ask for.
        false_alarm: probability that a correct source fails the check.
        check_shape: also test normality.

    Returns:
        The draws, float64[samples].
    """
    from scipy import stats

    assert expected_std > 0, f"expected_std must be > 0; got {expected_std}"
    draws = np.asarray(sample(samples), dtype=np.float64).reshape(-1)
    assert draws.size == samples, f"sample({samples}) returned {draws.size} draws"
    assert np.all(np.isfinite(draws)), "the noise holds NaN or infinite values"
    tests = 3 if check_shape else 2
    alpha = false_alarm / tests
    low, high = noise_std_interval(samples=samples, false_alarm=alpha)
    std = float(np.std(draws, ddof=1))
    assert low * expected_std <= std <= high * expected_std, (
        f"noise std {std:.6g} is outside [{low * expected_std:.6g}, {high * expected_std:.6g}], the interval in "
        f"which {samples} draws of std {expected_std:.6g} fall with probability {1 - alpha:.6g} "
        f"(ratio to the promised std: {std / expected_std:.4f})"
    )
    z = float(stats.norm.ppf(1 - alpha / 2))
    mean = float(np.mean(draws))
    assert abs(mean) <= z * expected_std / math.sqrt(samples), (
        f"noise mean {mean:.6g} is beyond +-{z * expected_std / math.sqrt(samples):.6g} "
        f"({z:.2f} standard errors for {samples} draws): the noise is biased"
    )
    if check_shape:
        pvalue = float(stats.kstest(draws / expected_std, "norm").pvalue)
        assert pvalue > alpha, f"the noise does not look Gaussian: Kolmogorov-Smirnov p = {pvalue:.3g} <= {alpha:.3g}"
    return draws


def expected_survivors(
    graph: Mapping[int, Sequence[int]], *, threshold: int, dropouts: DropoutPlan
) -> tuple[int, ...] | None:
    """An independent model of a SecAgg+ round: whose inputs the sum holds, or ``None`` if it must abort.

    Stages as in Bonawitz et al. 2017 with the SecAgg+ neighbour graph: clients that
    advertise keys (U1), that share them (U2; a client with fewer than ``threshold``
    holders in its neighbourhood refuses), that send a masked input (U3: the
    survivors), and that answer the unmask request; each stage needs ``threshold``
    clients, every survivor needs ``threshold`` responders among its holders to
    rebuild its self-mask seed, and every client that dropped after sharing needs
    ``threshold`` responding neighbours to rebuild its mask key.
    """
    everyone = set(graph)
    u1 = everyone - dropouts.dropped_by("advertise")
    if len(u1) < threshold:
        return None
    u2 = {c for c in u1 - dropouts.dropped_by("share") if len(set(graph[c]) & u1) + 1 >= threshold}
    if len(u2) < threshold:
        return None
    u3 = u2 - dropouts.dropped_by("collect")
    if len(u3) < threshold:
        return None
    responders = {c for c in u3 - dropouts.dropped_by("unmask") if len(({c} | (set(graph[c]) & u2)) & u3) >= threshold}
    if len(responders) < threshold:
        return None
    if any(len(({u} | set(graph[u])) & responders) < threshold for u in u3):
        return None
    if any(len(set(graph[d]) & responders) < threshold for d in u2 - u3):
        return None
    return tuple(sorted(u3))


SecAggDriver = Callable[[SecAggServer, Mapping[int, SecAggClient], DropoutPlan], SecAggOutcome]
"""``(server, clients, dropouts) -> outcome``: whatever moves the messages of one round."""


def _privfed_driver(server: SecAggServer, clients: Mapping[int, SecAggClient], dropouts: DropoutPlan) -> SecAggOutcome:
    return run_secagg_round(server, clients, dropouts=dropouts)


def _keyed(*parts: object) -> KeyedRandom:
    return KeyedRandom(hashlib.sha256(repr(("privfed.testing", *parts)).encode()).digest())


def check_secure_sum_of_survivors(
    inputs: Mapping[int, npt.ArrayLike],
    *,
    bits: int,
    dropouts: DropoutPlan,
    degree: int | None = None,
    threshold: int | None = None,
    seed: int = 0,
    driver: SecAggDriver = _privfed_driver,
) -> SecAggOutcome | None:
    """Run one SecAgg+ round and assert it sums exactly the survivors' inputs, or aborts when it must.

    Builds privfed's :class:`SecAggServer` and one :class:`SecAggClient` per input
    (keyed, replayable randomness from ``seed``), runs them with ``driver`` under
    ``dropouts``, and compares with :func:`expected_survivors`: the contributors must
    be exactly the model's survivors and the result exactly their modular sum (as
    Python integers, no float); when the model says the round cannot finish, the
    driver must raise :class:`~privfed.secagg.SecAggAborted` and the server hold no result.

    Args:
        inputs: client id (0 <= id < 2**32) -> residues modulo ``2**bits``, all the same length.
        bits: the modulus is ``2**bits``.
        dropouts: who stops answering before which stage.
        degree: neighbours per client (default: everyone, classic SecAgg).
        threshold: Shamir threshold (default: the smallest safe one, more than half of degree + 1).
        seed: keys the graph, the session and the clients' randomness.
        driver: moves the messages (default: privfed's in-process driver); pass your own to test a transport.

    Returns:
        The outcome, or ``None`` for a round that (correctly) aborted.
    """
    ids = sorted(int(c) for c in inputs)
    assert len(ids) >= 2, f"a secure sum needs at least 2 clients; got {len(ids)}"
    degree = len(ids) - 1 if degree is None else degree
    threshold = (degree + 1) // 2 + 1 if threshold is None else threshold
    dtype = mask_dtype(bits)
    values = {c: np.asarray(inputs[c]).astype(dtype) for c in ids}
    dim = values[ids[0]].size
    assert all(v.shape == (dim,) for v in values.values()), "every client's input must be a vector of the same length"
    server = SecAggServer(
        round=7,
        cohort=ids,
        degree=degree,
        graph_seed=_keyed("graph", seed)(16),
        threshold=threshold,
        bits=bits,
        dim=dim,
        session=_keyed("session", seed)(16),
    )
    clients = {c: SecAggClient(client_id=c, round=7, values=values[c], random=_keyed("client", seed, c)) for c in ids}
    expected = expected_survivors(server.neighbours, threshold=threshold, dropouts=dropouts)
    if expected is None:
        try:
            outcome = driver(server, clients, dropouts)
        except SecAggAborted:
            assert server.result is None and server.stage == "aborted", (
                f"the round aborted, yet the server holds a result or is in stage {server.stage!r}"
            )
            return None
        raise AssertionError(
            f"the round should abort (threshold {threshold}, dropouts {dict(dropouts.drops)}), "
            f"yet it returned a sum of {list(outcome.contributors)}"
        )
    try:
        outcome = driver(server, clients, dropouts)
    except SecAggAborted as exc:
        raise AssertionError(
            f"the round aborted ({exc}), yet survivors {list(expected)} meet threshold {threshold}"
        ) from None
    assert outcome.contributors == expected, (
        f"the sum holds clients {list(outcome.contributors)}; the survivors are {list(expected)}"
    )
    result = np.asarray(outcome.result)
    assert result.dtype == dtype, f"the result is {result.dtype}; residues modulo 2**{bits} are {np.dtype(dtype)}"
    modulus = 1 << bits
    exact = [sum(int(values[c][j]) for c in expected) % modulus for j in range(dim)]
    got = [int(v) for v in result.reshape(-1)]
    wrong = [j for j in range(dim) if got[j] != exact[j]]
    assert not wrong, (
        f"the secure sum differs from the survivors' modular sum in {len(wrong)} of {dim} coordinates "
        f"(first: coordinate {wrong[0]}, {got[wrong[0]]} instead of {exact[wrong[0]]})"
    )
    return outcome


EpsilonFn = Callable[[Sequence[SampledGaussianEvent], float], float]
"""``(events, delta) -> epsilon``: the shape of a function given to :func:`privfed.register_accountant`."""


def check_accountant(
    accountant: str | EpsilonFn,
    *,
    noise_multiplier: float,
    sample_rate: float,
    delta: float,
    steps: Sequence[int],
    target_epsilon: float | None = None,
    calibrate_fn: Callable[[float, int], float] | None = None,
) -> list[float]:
    """Assert epsilon is 0 for no steps, non-decreasing in steps, and <= the target after calibration.

    Args:
        accountant: a registered accountant's name, or ``epsilon(events, delta)``.
        noise_multiplier, sample_rate, delta: the sampled Gaussian mechanism repeated.
        steps: step counts to compare (sorted and deduplicated here).
        target_epsilon: also calibrate a noise multiplier for the largest step count
            and assert that its epsilon is at most this.
        calibrate_fn: ``(target_epsilon, steps) -> noise multiplier`` to test (default:
            :func:`privfed.privacy.calibrate.calibrate` bisection over this accountant).

    Returns:
        Epsilon at each (sorted, distinct) step count.
    """

    def epsilon(sigma: float, n: int) -> float:
        event = SampledGaussianEvent(noise_multiplier=sigma, sample_rate=sample_rate, steps=n, scope="user")
        if isinstance(accountant, str):
            return compute_epsilon([event], delta=delta, accountant=accountant)
        return float(accountant([event], delta))

    assert epsilon(noise_multiplier, 0) == 0.0, f"epsilon of no steps is {epsilon(noise_multiplier, 0)!r}, not 0"
    counts = sorted(set(int(s) for s in steps))
    values = [epsilon(noise_multiplier, n) for n in counts]
    for (n0, e0), (n1, e1) in itertools.pairwise(zip(counts, values, strict=True)):
        assert not math.isnan(e1) and e1 >= e0, (
            f"epsilon decreased from {e0:.6g} at {n0} steps to {e1:.6g} at {n1} steps "
            f"(noise multiplier {noise_multiplier:g}, sample rate {sample_rate:g}, delta {delta:g})"
        )
    if target_epsilon is not None and counts:
        n = counts[-1]
        if calibrate_fn is None:
            sigma = calibrate(target_epsilon=target_epsilon, epsilon_of=lambda s: epsilon(s, n))
        else:
            sigma = calibrate_fn(target_epsilon, n)
        reached = epsilon(sigma, n)
        assert reached <= target_epsilon, (
            f"calibrated noise multiplier {sigma:.6g} gives epsilon {reached:.6g} over {n} steps, above the target "
            f"{target_epsilon:g} (sample rate {sample_rate:g}, delta {delta:g})"
        )
    return values


def check_aggregate_from_sum(
    strategy: Any, deltas: npt.ArrayLike, *, rtol: float = 1e-5, atol: float = 1e-7
) -> npt.NDArray[np.float32]:
    """Assert ``strategy.aggregate_sum(sum of deltas, weight=n)`` equals ``strategy.aggregate(deltas)`` (weights 1).

    Under secure aggregation and user-level DP the server holds only the (decoded or
    noised) sum, so privfed calls ``aggregate_sum``; a strategy whose two hooks disagree
    trains differently the moment privacy is switched on. The tolerance covers float32
    (relative ``rtol``, absolute ``atol``).

    Returns:
        The aggregate, float32[d].
    """
    assert hasattr(strategy, "aggregate_sum"), (
        f"{type(strategy).__name__} has no aggregate_sum: it cannot run under secure aggregation or "
        "user-level DP (privfed refuses it there), so there is nothing to compare"
    )
    rows = np.asarray(deltas, dtype=np.float32)
    assert rows.ndim == 2 and len(rows) >= 1, f"deltas must be float[n, d] (one row per client); got shape {rows.shape}"
    direct = np.asarray(strategy.aggregate(rows, weights=np.ones(len(rows))), dtype=np.float32)
    from_sum = np.asarray(strategy.aggregate_sum(rows.astype(np.float64).sum(axis=0), weight=float(len(rows))))
    assert from_sum.shape == direct.shape, f"aggregate_sum gave shape {from_sum.shape}; aggregate gave {direct.shape}"
    close = np.isclose(from_sum, direct, rtol=rtol, atol=atol)
    if not np.all(close):
        j = int(np.argmin(close))
        raise AssertionError(
            f"aggregate_sum of the sum differs from aggregate of the {len(rows)} updates in "
            f"{int(np.count_nonzero(~close))} coordinates (first: {j}, {from_sum[j]:.6g} vs {direct[j]:.6g})"
        )
    return direct
