"""Upload stages: what a client does to its update between training and the wire, and how the server undoes it.

A client's update leaves training as a float delta plus a few named per-client
scalars (its training loss; under adaptive clipping its centred unclipped bit).
An ordered list of stages turns that into what is uploaded, e.g.

    clip to C  ->  rotate  ->  sparsify  ->  append metrics  ->  fixed point mod 2^bits  ->  (SecAgg+ masks)

and the server runs the matching ``decode_sum`` of each stage in reverse over
the *sum* of the clients' encodings (under secure aggregation it never holds one
encoding alone). Every stage is pure numpy; randomness comes from the
``StageContext``'s generator, keyed by (seed, purpose, round, client) like every
other draw. A stage is one small class plus :func:`register_upload_stage`, built
from a JSON-able ``params`` mapping, so the same stage list can be described in
a round's instructions and rebuilt identically on both ends of any transport.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from privfed.compression.quantize import FixedPointCodec, rounded_l2_norm_bound
from privfed.compression.rotation import inverse_rotate, padded_dim, random_signs, rotate
from privfed.compression.sparsify import kept_count, shared_subset, top_k_indices
from privfed.errors import ConfigError, ProtocolError
from privfed.privacy.discrete import MAX_SIGMA, MAX_SKELLAM_VARIANCE, discrete_gaussian, noise_generator, skellam
from privfed.privacy.dpfedavg import clip_to_norm
from privfed.registry import Registry
from privfed.rng import generator
from privfed.secagg.crypto import mask_dtype

__all__ = [
    "AppendMetricsStage",
    "ClipStage",
    "DistributedNoiseStage",
    "FixedPointStage",
    "RotateStage",
    "SparsifyStage",
    "StageContext",
    "StageSpec",
    "TopKStage",
    "Upload",
    "UploadPipeline",
    "UploadStage",
    "register_upload_stage",
    "upload_stage_names",
]


@dataclasses.dataclass
class Upload:
    """The working record that flows through the stages.

    Attributes:
        values: the vector being encoded (float64[d] at first; residues after fixed point).
            On the server, the (decoded) *sum* of the clients' vectors.
        metrics: per-client named scalars on the client (``train_loss``, ``unclipped``);
            their sums over the clients on the server, once a stage has split them off.
        support: int64[k], the coordinates ``values`` stand for when a client chose them itself
            (top-k; plain uploads only, so the server decodes one client's upload at a time).
    """

    values: npt.NDArray[Any]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    support: npt.NDArray[np.int64] | None = None


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What a stage may know about the round.

    Attributes:
        round: the round number.
        client_id: the encoding client (``None`` on the server).
        rng: a generator keyed by (seed, "quantize", round, client) on the client; ``None`` on the server.
        contributors: on the server, how many clients' encodings the sum holds (``None``: as many as
            the stages leave room for); lets the fixed-point stage tell a wrapped sum from a true one.
    """

    round: int
    client_id: int | None = None
    rng: np.random.Generator | None = None
    contributors: int | None = None


class UploadStage(Protocol):
    """One step of the upload pipeline."""

    name: ClassVar[str]

    def params(self) -> dict[str, Any]:
        """JSON-able parameters from which ``type(self)(**params)`` rebuilds this stage."""
        ...

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        """Client side: transform one client's upload."""
        ...

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        """Server side: undo :meth:`encode` on the sum of the clients' encodings."""
        ...


_StageFactory = Callable[..., UploadStage]
_STAGES: Registry[_StageFactory] = Registry("upload stage", error=ConfigError)


def register_upload_stage(name: str, factory: _StageFactory, *, overwrite: bool = False) -> None:
    """Register ``factory(**params) -> UploadStage`` under ``name`` (the name a :class:`StageSpec` carries)."""
    _STAGES.register(name, factory, overwrite=overwrite)


def upload_stage_names() -> tuple[str, ...]:
    return _STAGES.names()


def _finite(name: str, value: Any, *, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"stage parameter {name} must be a finite number; got {value!r}")
    if not low <= float(value) <= high:
        raise ProtocolError(f"stage parameter {name} must be in [{low:g}, {high:g}]; got {value!r}")
    return float(value)


class ClipStage:
    """Clip the delta to L2 norm ``max_norm`` and record the centred unclipped bit.

    The bit (``+count_bit`` if the delta was within ``max_norm``, else ``-count_bit``)
    goes to ``metrics["unclipped"]`` for adaptive clipping (Andrew et al. 2021);
    ``count_bit`` is 1/2 less one quantization step so that the bit stays within
    1/2 after rounding (see :meth:`privfed.server.FederatedServer.upload_clip_norm`).
    """

    name: ClassVar[str] = "clip"

    def __init__(self, *, max_norm: float, count_bit: float = 0.5) -> None:
        self.max_norm = _finite("max_norm", max_norm, low=0.0)
        self.count_bit = _finite("count_bit", count_bit, low=0.0, high=0.5)

    def params(self) -> dict[str, Any]:
        return {"max_norm": self.max_norm, "count_bit": self.count_bit}

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        clipped, norm = clip_to_norm(upload.values, max_norm=self.max_norm)
        metrics = dict(upload.metrics)
        metrics["unclipped"] = self.count_bit if norm <= self.max_norm else -self.count_bit
        return dataclasses.replace(upload, values=clipped.astype(np.float64), metrics=metrics)

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        return upload  # the sum of clipped deltas is what the server wants


class AppendMetricsStage:
    """Carry named per-client scalars as extra coordinates, so that they are summed with the delta."""

    name: ClassVar[str] = "append_metrics"

    def __init__(self, *, names: Sequence[str]) -> None:
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
            raise ProtocolError(f"stage parameter names must be a list of metric names; got {names!r}")
        if len(set(names)) != len(names) or len(names) > 16:
            raise ProtocolError(f"stage parameter names must be at most 16 distinct names; got {names!r}")
        self.names = tuple(names)

    def params(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        missing = [n for n in self.names if n not in upload.metrics]
        if missing:
            raise ProtocolError(f"no metric {missing[0]!r} to append (have {sorted(upload.metrics)})")
        tail = np.array([upload.metrics[n] for n in self.names], dtype=np.float64)
        return dataclasses.replace(upload, values=np.concatenate([upload.values.astype(np.float64), tail]), metrics={})

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        k = len(self.names)
        values = np.asarray(upload.values)
        if values.shape[0] < k:
            raise ProtocolError(f"a sum of {values.shape[0]} values cannot hold {k} metrics")
        metrics = dict(upload.metrics)
        metrics.update({n: float(v) for n, v in zip(self.names, values[values.shape[0] - k :], strict=True)})
        return dataclasses.replace(upload, values=values[: values.shape[0] - k], metrics=metrics)


class FixedPointStage:
    """Clip per coordinate, scale and stochastically round into residues mod ``2**bits``.

    Coordinates are the delta's ``dim`` values (range ``[-clip, clip]``) and then
    ``extra`` metric coordinates (range ``[-extra_clip, extra_clip]``); the scale
    leaves room for ``num_summands`` encodings to be added without wrapping.

    With ``conditional_norm`` (the L2 norm the delta coordinates are known to stay
    within, e.g. the clip norm) the rounding is *conditional* (Kairouz, Liu, Steinke
    2021, Sec. 4.1): re-drawn until the rounded delta's norm is within
    :func:`~privfed.compression.quantize.rounded_l2_norm_bound` at ``beta`` (at most
    ``max_tries`` draws, then :class:`~privfed.compression.quantize.ConditionalRoundingError`).
    ``decode_sum`` refuses a sum that ``ctx.contributors`` honest encodings cannot produce.

    ``noise_summands`` (distributed DP): of the ``num_summands`` slots of the code range
    ``k``, that many are left for the clients' summed integer noise
    (:class:`DistributedNoiseStage`), so a sum of ``m`` contributors may reach
    ``(m + noise_summands) k`` before it is refused.
    """

    name: ClassVar[str] = "fixed_point"

    def __init__(
        self,
        *,
        bits: int,
        clip: float,
        extra_clip: float,
        dim: int,
        extra: int,
        num_summands: int,
        conditional_norm: float | None = None,
        beta: float = math.exp(-0.5),
        max_tries: int = 64,
        noise_summands: int = 0,
    ) -> None:
        for key, value, low, high in (
            ("noise_summands", noise_summands, 0, max(num_summands - 1, 0) if isinstance(num_summands, int) else 0),
            ("bits", bits, 2, 52),
            ("dim", dim, 1, 1 << 40),
            ("extra", extra, 0, 16),
            ("num_summands", num_summands, 1, 1 << 40),
            ("max_tries", max_tries, 1, 1 << 16),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"stage parameter {key} must be an integer in [{low}, {high}]; got {value!r}")
        self.bits, self.dim, self.extra, self.num_summands = bits, dim, extra, num_summands
        self.max_tries = max_tries
        self.noise_summands = noise_summands
        self.clip = _finite("clip", clip, low=1e-300)
        self.extra_clip = _finite("extra_clip", extra_clip, low=1e-300)
        self.conditional_norm = (
            None if conditional_norm is None else _finite("conditional_norm", conditional_norm, low=0)
        )
        self.beta = _finite("beta", beta, low=0.0, high=0.999999)
        ranges = np.full(dim + extra, self.clip, dtype=np.float64)
        ranges[dim:] = self.extra_clip
        try:
            self.codec = FixedPointCodec(bits=bits, clip=ranges, num_summands=num_summands)
        except ValueError as exc:
            raise ProtocolError(f"fixed-point stage: {exc}") from None

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "bits": self.bits,
            "clip": self.clip,
            "extra_clip": self.extra_clip,
            "dim": self.dim,
            "extra": self.extra,
            "num_summands": self.num_summands,
        }
        if self.conditional_norm is not None:  # only when used: plain fixed point keeps its old instructions
            params.update(conditional_norm=self.conditional_norm, beta=self.beta, max_tries=self.max_tries)
        if self.noise_summands:
            params["noise_summands"] = self.noise_summands
        return params

    def norm_bound(self) -> float | None:
        """L2 bound (input units) of the decoded delta coordinates of one encoding under conditional rounding."""
        if self.conditional_norm is None:
            return None
        step = float(np.asarray(self.codec.scale).reshape(-1)[0])
        bound = rounded_l2_norm_bound(self.conditional_norm * step, dim=self.dim, beta=self.beta)
        return bound / step

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        if ctx.rng is None:
            raise ProtocolError("fixed-point encoding needs the client's rounding generator")
        if upload.values.shape != (self.dim + self.extra,):
            raise ProtocolError(f"fixed-point stage expects {self.dim + self.extra} values; got {upload.values.shape}")
        bound = None
        if self.conditional_norm is not None:
            step = float(np.asarray(self.codec.scale).reshape(-1)[0])
            bound = rounded_l2_norm_bound(self.conditional_norm * step, dim=self.dim, beta=self.beta)
        codes = self.codec.encode(
            upload.values, rng=ctx.rng, norm_bound=bound, norm_dim=self.dim, max_tries=self.max_tries
        )
        return dataclasses.replace(upload, values=codes)

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        room = None if ctx.contributors is None else ctx.contributors + self.noise_summands
        if room is not None and room > self.num_summands:
            raise ProtocolError(f"a sum of {ctx.contributors} encodings; the codec has room for {self.num_summands}")
        values = self.codec.decode_sum(upload.values, contributors=room)
        return dataclasses.replace(upload, values=values)


class DistributedNoiseStage:
    """Add this client's share of integer DP noise to its fixed-point residues (distributed DP).

    Runs after :class:`FixedPointStage` and before the SecAgg+ masks: the first ``dim``
    residues (the delta's coordinates; no metric travels under distributed DP) get an
    independent discrete Gaussian ``N_Z(0, local_stddev^2)`` (Canonne, Kamath, Steinke 2020;
    Kairouz, Liu, Steinke 2021) or Skellam draw of variance ``local_stddev^2`` (Agarwal,
    Kairouz, Liu 2021), modulo ``2**bits``. The draws come from the client's stage generator
    (seeded, reproducible) or, with ``secure``, from a generator keyed by the OS CSPRNG.

    ``decode_sum`` cannot remove the noise (nobody can): it refuses a sum of fewer than
    ``min_contributors`` encodings, whose noise would fall short of what the accountant
    credits (see :mod:`privfed.privacy.distributed`), and otherwise passes the noised sum on.
    """

    name: ClassVar[str] = "distributed_noise"

    def __init__(
        self, *, mechanism: str, local_stddev: float, bits: int, dim: int, min_contributors: int, secure: bool = False
    ) -> None:
        if mechanism not in ("distributed_gaussian", "skellam"):
            raise ProtocolError(f"stage parameter mechanism must be distributed_gaussian or skellam; got {mechanism!r}")
        for key, value, low, high in (
            ("bits", bits, 2, 52),
            ("dim", dim, 1, 1 << 40),
            ("min_contributors", min_contributors, 1, 1 << 40),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"stage parameter {key} must be an integer in [{low}, {high}]; got {value!r}")
        if not isinstance(secure, bool):
            raise ProtocolError(f"stage parameter secure must be a boolean; got {secure!r}")
        self.mechanism, self.bits, self.dim, self.min_contributors, self.secure = (
            mechanism,
            bits,
            dim,
            min_contributors,
            secure,
        )
        # The samplers' own limits (privfed.privacy.discrete) are checked here, so that a server's
        # stage beyond them is a ProtocolError at parse time rather than a ValueError mid-round.
        sampler_max = MAX_SIGMA if mechanism == "distributed_gaussian" else math.sqrt(MAX_SKELLAM_VARIANCE)
        self.local_stddev = _finite("local_stddev", local_stddev, low=0.0, high=min(2.0 ** (bits - 1), sampler_max))

    def params(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "local_stddev": self.local_stddev,
            "bits": self.bits,
            "dim": self.dim,
            "min_contributors": self.min_contributors,
            "secure": self.secure,
        }

    def noise(self, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """One client's share: int64[dim]."""
        if self.mechanism == "distributed_gaussian":
            return discrete_gaussian(sigma=self.local_stddev, size=self.dim, rng=rng)
        return skellam(variance=self.local_stddev**2, size=self.dim, rng=rng)

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        if ctx.rng is None:
            raise ProtocolError("distributed noise needs the client's generator")
        values = np.asarray(upload.values)
        if values.ndim != 1 or values.shape[0] < self.dim:
            raise ProtocolError(f"distributed noise expects at least {self.dim} residues; got {values.shape}")
        residues = values.astype(np.int64)
        residues[: self.dim] += self.noise(noise_generator(secure=self.secure, seeded=ctx.rng))
        residues &= (1 << self.bits) - 1
        return dataclasses.replace(upload, values=residues.astype(mask_dtype(self.bits)))

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        if ctx.contributors is not None and ctx.contributors < self.min_contributors:
            raise ProtocolError(
                f"{ctx.contributors} contributors carry too little distributed noise: the accountant credits the "
                f"shares of {self.min_contributors - 1} clients besides any one, so at least {self.min_contributors} "
                "are needed"
            )
        return upload


class RotateStage:
    """Randomized Hadamard rotation of the ``dim`` delta values, zero-padded to a power of two.

    The signs come from ``generator(seed, "rotation", round)``: ``seed`` is public (the
    server puts it in the stage parameters), so every client of a round and the server
    use the same rotation, and the server rotates the *sum* back (linearity). Norms are
    preserved (orthonormal), so an L2 clip before rotation still holds after it; the
    rounding that follows acts on ``padded_dim(dim)`` coordinates.
    """

    name: ClassVar[str] = "rotate"

    def __init__(self, *, dim: int, seed: int) -> None:
        for key, value, high in (("dim", dim, 1 << 40), ("seed", seed, (1 << 63) - 1)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
                raise ProtocolError(f"stage parameter {key} must be an integer in [0, {high}]; got {value!r}")
        if dim < 1:
            raise ProtocolError(f"stage parameter dim must be >= 1; got {dim}")
        self.dim, self.seed = dim, seed
        self.padded = padded_dim(dim)

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "seed": self.seed}

    def _signs(self, round: int) -> npt.NDArray[np.float64]:
        return random_signs(self.padded, rng=generator(self.seed, "rotation", round))

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        if upload.values.shape != (self.dim,):
            raise ProtocolError(f"rotate stage expects {self.dim} values; got {upload.values.shape}")
        return dataclasses.replace(upload, values=rotate(upload.values, signs=self._signs(ctx.round)))

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        if np.shape(upload.values) != (self.padded,):
            raise ProtocolError(f"rotate stage expects a sum of {self.padded} values; got {np.shape(upload.values)}")
        values = inverse_rotate(upload.values, signs=self._signs(ctx.round), dim=self.dim)
        return dataclasses.replace(upload, values=values)


class SparsifyStage:
    """Shared-seed random sparsification: keep the same ``kept`` of ``dim`` coordinates for every client.

    The subset comes from ``generator(seed, "sparsify", round)`` (a public seed), so
    encodings line up under secure aggregation. ``decode_sum`` scatters the summed
    subset back and multiplies by ``dim / kept`` (each coordinate is kept with
    probability ``kept / dim``), so the decoded sum is unbiased over the subset draw.
    The scaling is server-side post-processing: it never enlarges what a client sends,
    but it does enlarge the decoded sum's L2 sensitivity by up to ``dim / kept``.
    """

    name: ClassVar[str] = "sparsify"

    def __init__(self, *, dim: int, kept: int, seed: int) -> None:
        for key, value, low, high in (
            ("dim", dim, 1, 1 << 40),
            ("kept", kept, 1, dim),
            ("seed", seed, 0, (1 << 63) - 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"stage parameter {key} must be an integer in [{low}, {high}]; got {value!r}")
        self.dim, self.kept, self.seed = dim, kept, seed

    @classmethod
    def with_sparsity(cls, *, dim: int, sparsity: float, seed: int) -> SparsifyStage:
        return cls(dim=dim, kept=kept_count(dim, sparsity=sparsity), seed=seed)

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "kept": self.kept, "seed": self.seed}

    def subset(self, round: int) -> npt.NDArray[np.int64]:
        return shared_subset(self.dim, kept=self.kept, rng=generator(self.seed, "sparsify", round))

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        if upload.values.shape != (self.dim,):
            raise ProtocolError(f"sparsify stage expects {self.dim} values; got {upload.values.shape}")
        return dataclasses.replace(upload, values=upload.values[self.subset(ctx.round)])

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        if np.shape(upload.values) != (self.kept,):
            raise ProtocolError(f"sparsify stage expects a sum of {self.kept} values; got {np.shape(upload.values)}")
        out = np.zeros(self.dim, dtype=np.float64)
        out[self.subset(ctx.round)] = np.asarray(upload.values, dtype=np.float64) * (self.dim / self.kept)
        return dataclasses.replace(upload, values=out)


class TopKStage:
    """Keep each client's ``kept`` largest-magnitude coordinates and say which (plain uploads only).

    Every client picks its own coordinates, so encodings do not line up and cannot be
    summed under secure aggregation (the server refuses that combination); the server
    decodes one client's upload at a time, from its ``support``. Biased, as top-k is.
    """

    name: ClassVar[str] = "topk"

    def __init__(self, *, dim: int, kept: int) -> None:
        for key, value, low, high in (("dim", dim, 1, 1 << 40), ("kept", kept, 1, dim)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ProtocolError(f"stage parameter {key} must be an integer in [{low}, {high}]; got {value!r}")
        self.dim, self.kept = dim, kept

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "kept": self.kept}

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        if upload.values.shape != (self.dim,):
            raise ProtocolError(f"topk stage expects {self.dim} values; got {upload.values.shape}")
        support = top_k_indices(upload.values, kept=self.kept)
        return dataclasses.replace(upload, values=upload.values[support], support=support)

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        support = upload.support
        if support is None or np.shape(support) != (self.kept,) or np.shape(upload.values) != (self.kept,):
            raise ProtocolError(f"a top-k upload needs {self.kept} values and their {self.kept} coordinates")
        if np.any(support < 0) or np.any(support >= self.dim) or np.unique(support).size != self.kept:
            raise ProtocolError(f"top-k coordinates must be {self.kept} distinct indices below {self.dim}")
        out = np.zeros(self.dim, dtype=np.float64)
        out[support] = np.asarray(upload.values, dtype=np.float64)
        return dataclasses.replace(upload, values=out, support=None)


register_upload_stage(ClipStage.name, ClipStage)
register_upload_stage(AppendMetricsStage.name, AppendMetricsStage)
register_upload_stage(FixedPointStage.name, FixedPointStage)
register_upload_stage(RotateStage.name, RotateStage)
register_upload_stage(SparsifyStage.name, SparsifyStage)
register_upload_stage(TopKStage.name, TopKStage)
register_upload_stage(DistributedNoiseStage.name, DistributedNoiseStage)


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """A stage by name and parameters: what travels in a round's instructions."""

    name: str
    params: Mapping[str, Any]


class UploadPipeline:
    """An ordered list of stages: ``encode`` runs them in order, ``decode_sum`` in reverse."""

    def __init__(self, stages: Sequence[UploadStage]) -> None:
        self.stages = tuple(stages)

    @classmethod
    def from_specs(cls, specs: Sequence[StageSpec]) -> UploadPipeline:
        """Rebuild stages from their specs; an unknown stage or bad parameter is a ``ProtocolError``."""
        stages = []
        for spec in specs:
            if spec.name not in _STAGES:
                raise ProtocolError(f"unknown upload stage {spec.name!r} (known: {', '.join(upload_stage_names())})")
            try:
                stages.append(_STAGES.get(spec.name)(**dict(spec.params)))
            except TypeError as exc:
                raise ProtocolError(f"upload stage {spec.name!r}: {exc}") from None
        return cls(stages)

    def specs(self) -> tuple[StageSpec, ...]:
        return tuple(StageSpec(name=s.name, params=s.params()) for s in self.stages)

    def to_json(self) -> str:
        return json.dumps([{"name": s.name, "params": s.params} for s in self.specs()], sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> UploadPipeline:
        try:
            raw = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"upload stages are not valid JSON: {exc}") from None
        if not isinstance(raw, list) or len(raw) > 32:
            raise ProtocolError("upload stages must be a list of at most 32 stages")
        specs = []
        for item in raw:
            if not isinstance(item, dict) or set(item) != {"name", "params"}:
                raise ProtocolError(f"an upload stage must be {{name, params}}; got {item!r}"[:200])
            if not isinstance(item["name"], str) or not isinstance(item["params"], dict):
                raise ProtocolError("an upload stage's name must be a string and its params a mapping")
            specs.append(StageSpec(name=item["name"], params=item["params"]))
        return cls.from_specs(specs)

    def encode(self, upload: Upload, ctx: StageContext) -> Upload:
        for stage in self.stages:
            upload = stage.encode(upload, ctx)
        return upload

    def decode_sum(self, upload: Upload, ctx: StageContext) -> Upload:
        for stage in reversed(self.stages):
            upload = stage.decode_sum(upload, ctx)
        return upload
