"""Hypothesis strategies for property tests of federated, private and secure code.

Everything here draws values that privfed accepts: layouts and updates of the
shapes adapters have, SecAgg+ cohorts with a safe degree and threshold and the
dropouts that can hit them stage by stage, upload pipelines and codecs with
room for their sum, and config sections whose every field lies in the range the
config schema declares (the ranges are read from the schema itself, so they
cannot drift from it). Large arrays are drawn from a seed (fast, shrinks to a
small seed); :func:`update_vectors` draws every coordinate (slower, finds edge
values such as subnormals and +-max).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - hypothesis is installed with privfed
    raise ImportError(
        "privfed.testing.strategies needs hypothesis: pip install 'hypothesis>=6.100' "
        "(the checkers in privfed.testing work without it)"
    ) from exc

from privfed.adapters.layout import AdapterLayout
from privfed.client.stages import FixedPointStage, RotateStage, SparsifyStage, UploadPipeline, UploadStage
from privfed.compression.quantize import FixedPointCodec
from privfed.compression.rotation import padded_dim
from privfed.config import CompressionConfig, PrivacyConfig, SampleDPConfig, SecAggConfig, UserDPConfig
from privfed.secagg.crypto import mask_dtype
from privfed.secagg.driver import STAGES, DropoutPlan

__all__ = [
    "SecAggCohort",
    "adapter_layouts",
    "compression_configs",
    "deltas",
    "dropout_plans",
    "fixed_point_codecs",
    "named_updates",
    "noise_multipliers",
    "privacy_configs",
    "sample_dp_configs",
    "sampling_rates",
    "secagg_cohorts",
    "secagg_configs",
    "secagg_inputs",
    "target_epsilons",
    "update_batches",
    "update_vectors",
    "upload_pipelines",
    "user_dp_configs",
]

_LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")


# --- schema ranges ----------------------------------------------------------------------------------


def _floats_in(cls: type, name: str, low: float, high: float) -> st.SearchStrategy[float]:
    """Finite floats in ``[low, high]`` intersected with the range the config schema declares for ``cls.name``."""
    rules = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    exclude_min = exclude_max = False
    if "ge" in rules and rules["ge"] >= low:
        low = float(rules["ge"])
    if "gt" in rules and rules["gt"] >= low:
        low, exclude_min = float(rules["gt"]), True
    if "le" in rules and rules["le"] <= high:
        high = float(rules["le"])
    if "lt" in rules and rules["lt"] <= high:
        high, exclude_max = float(rules["lt"]), True
    return st.floats(low, high, exclude_min=exclude_min, exclude_max=exclude_max, allow_nan=False)


def _choices(cls: type, name: str) -> tuple[str, ...]:
    rules = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    return tuple(rules["choices"]())


# --- adapter layouts and updates ------------------------------------------------------------------


@st.composite
def adapter_layouts(
    draw: st.DrawFn, *, max_modules: int = 4, max_rank: int = 8, max_width: int = 48, head: bool | None = None
) -> AdapterLayout:
    """LoRA-shaped layouts: per adapted module ``lora_A`` of shape (r, d_in) and ``lora_B`` (d_out, r).

    Names follow PEFT (``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default.weight``);
    ``head`` adds a trained classification head (weight and bias), drawn when ``None``.
    """
    shapes: list[tuple[str, tuple[int, ...]]] = []
    for i in range(draw(st.integers(1, max_modules))):
        module = draw(st.sampled_from(_LORA_MODULES))
        rank = draw(st.integers(1, max_rank))
        d_in, d_out = draw(st.integers(1, max_width)), draw(st.integers(1, max_width))
        prefix = f"base_model.model.model.layers.{i}.self_attn.{module}"
        shapes.append((f"{prefix}.lora_A.default.weight", (rank, d_in)))
        shapes.append((f"{prefix}.lora_B.default.weight", (d_out, rank)))
    if head if head is not None else draw(st.booleans()):
        labels, hidden = draw(st.integers(2, 8)), draw(st.integers(1, max_width))
        shapes += [
            ("base_model.model.classifier.weight", (labels, hidden)),
            ("base_model.model.classifier.bias", (labels,)),
        ]
    return AdapterLayout.from_shapes(shapes)


def _dims(dim: int | AdapterLayout | st.SearchStrategy[int]) -> st.SearchStrategy[int]:
    if isinstance(dim, AdapterLayout):
        return st.just(dim.dim)
    if isinstance(dim, int):
        return st.just(dim)
    return dim


def update_vectors(
    dim: int | AdapterLayout | st.SearchStrategy[int] = st.integers(1, 64),  # noqa: B008 - strategies are immutable
    *,
    max_abs: float = 1e4,
    dtype: type[np.floating[Any]] = np.float32,
) -> st.SearchStrategy[npt.NDArray[Any]]:
    """Flat updates with every coordinate drawn: finite floats in ``[-max_abs, max_abs]`` (subnormals included)."""
    width = 32 if np.dtype(dtype).itemsize == 4 else 64
    elements = st.floats(-max_abs, max_abs, width=width, allow_nan=False, allow_infinity=False)  # type: ignore[arg-type]
    return hnp.arrays(dtype, _dims(dim), elements=elements)


@st.composite
def named_updates(
    draw: st.DrawFn, layout: AdapterLayout, *, max_abs: float = 10.0
) -> dict[str, npt.NDArray[np.float32]]:
    """One float32 array per slot of ``layout``, in its shape (flatten with ``layout.flatten_arrays``)."""
    elements = st.floats(-max_abs, max_abs, width=32, allow_nan=False, allow_infinity=False)
    return {s.name: draw(hnp.arrays(np.float32, s.shape, elements=elements)) for s in layout.slots}


@st.composite
def update_batches(
    draw: st.DrawFn,
    dim: int | AdapterLayout | st.SearchStrategy[int],
    *,
    min_clients: int = 1,
    max_clients: int = 6,
    min_scale: float = 0.01,
    max_scale: float = 3.0,
) -> list[npt.NDArray[np.float64]]:
    """Several clients' updates, float64[dim] each: Gaussian directions of norm about ``scale * sqrt(dim)``.

    Drawn from a seed and one scale per client, so they are fast for large ``dim``
    and shrink well; the scales differ between clients (a codec must handle both).
    """
    n = draw(_dims(dim))
    count = draw(st.integers(min_clients, max_clients))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return [rng.normal(size=n) * draw(st.floats(min_scale, max_scale)) for _ in range(count)]


# --- SecAgg+ cohorts and dropouts -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SecAggCohort:
    """The public parameters of one SecAgg+ round.

    Attributes:
        client_ids: distinct uint32 ids, sorted (not 0..n-1).
        degree: neighbours per client (``n - 1``: classic SecAgg; else even, 2..n-2).
        threshold: Shamir threshold, more than half of ``degree + 1`` and at most ``degree + 1``.
        bits: modulus ``2**bits``.
        dim: length of each input.
    """

    client_ids: tuple[int, ...]
    degree: int
    threshold: int
    bits: int
    dim: int


@st.composite
def secagg_cohorts(
    draw: st.DrawFn,
    *,
    min_clients: int = 3,
    max_clients: int = 40,
    bits: Sequence[int] = (2, 8, 16, 20, 32, 48, 52),
    max_dim: int = 40,
) -> SecAggCohort:
    """Cohorts with a degree and threshold that clients accept (they refuse ``2 t <= degree + 1``)."""
    n = draw(st.integers(max(3, min_clients), max_clients))
    ids = draw(st.lists(st.integers(0, 2**32 - 1), min_size=n, max_size=n, unique=True))
    complete = n <= 4 or draw(st.booleans())
    degree = n - 1 if complete else draw(st.sampled_from(list(range(2, n - 1, 2))))
    threshold = draw(st.integers(max(2, (degree + 1) // 2 + 1), degree + 1))
    return SecAggCohort(
        client_ids=tuple(sorted(ids)),
        degree=degree,
        threshold=threshold,
        bits=draw(st.sampled_from(list(bits))),
        dim=draw(st.integers(0, max_dim)),
    )


@st.composite
def secagg_inputs(draw: st.DrawFn, cohort: SecAggCohort) -> dict[int, npt.NDArray[np.unsignedinteger]]:
    """Each client's input: uniform residues modulo ``2**cohort.bits`` in the mask word type."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    dtype = mask_dtype(cohort.bits)
    return {
        c: rng.integers(0, 2**cohort.bits, size=cohort.dim, dtype=np.uint64, endpoint=False).astype(dtype)
        for c in cohort.client_ids
    }


@st.composite
def dropout_plans(
    draw: st.DrawFn, client_ids: Sequence[int], *, rates: Sequence[float] = (0.0, 0.05, 0.2, 0.5)
) -> DropoutPlan:
    """Who stops answering before each protocol stage (advertise keys, share keys, masked input, unmask).

    Per stage a rate is drawn from ``rates``, then each still-active client drops
    with that chance; a dropped client stays dropped. Shrinks towards no dropouts.
    """
    active = sorted(set(client_ids))
    drops: dict[str, frozenset[int]] = {}
    for stage in STAGES:
        percent = round(100 * draw(st.sampled_from(list(rates))))
        gone = frozenset(c for c in active if draw(st.integers(0, 99)) >= 100 - percent)
        drops[stage] = gone
        active = [c for c in active if c not in gone]
    return DropoutPlan(drops)


# --- quantization and upload stages -----------------------------------------------------------------


def _min_bits(num_summands: int) -> int:
    """Fewest bits whose signed range ``2**(bits-1) - 1`` holds ``num_summands`` codes of one step."""
    return max(2, num_summands.bit_length() + 1)


@st.composite
def fixed_point_codecs(
    draw: st.DrawFn, *, num_summands: int, clip: float | None = None, max_bits: int = 32
) -> FixedPointCodec:
    """Codecs with room for ``num_summands`` encodings (bits from the fewest that fit to ``max_bits``)."""
    bits = draw(st.integers(_min_bits(num_summands), max_bits))
    return FixedPointCodec(
        bits=bits, clip=clip if clip is not None else draw(st.floats(1e-3, 1e3)), num_summands=num_summands
    )


@st.composite
def upload_pipelines(
    draw: st.DrawFn,
    dim: int,
    *,
    num_summands: int,
    clip: float,
    max_bits: int = 32,
    rotation: bool | None = None,
    sparsity: Sequence[float] = (0.0, 0.3, 0.9),
) -> UploadPipeline:
    """``[rotate] -> [shared-seed sparsify] -> fixed point`` pipelines for ``dim`` values, as a SecAgg round uses.

    ``clip`` is the fixed-point stage's per-coordinate range; a vector of L2 norm at most
    ``clip`` never clips, rotated or not. ``rotation`` is drawn when ``None``.
    """
    seed = draw(st.integers(0, 2**62 - 1))
    rotate = draw(st.booleans()) if rotation is None else rotation
    stages: list[UploadStage] = []
    width = padded_dim(dim) if rotate else dim
    if rotate:
        stages.append(RotateStage(dim=dim, seed=seed))
    fraction = draw(st.sampled_from(list(sparsity)))
    kept = width
    if fraction:
        sparsify = SparsifyStage.with_sparsity(dim=width, sparsity=fraction, seed=seed + 1)
        kept = sparsify.kept
        stages.append(sparsify)
    bits = draw(st.integers(_min_bits(num_summands), max_bits))
    stages.append(FixedPointStage(bits=bits, clip=clip, extra_clip=1.0, dim=kept, extra=0, num_summands=num_summands))
    return UploadPipeline(stages)


# --- config sections ------------------------------------------------------------------------------


def sampling_rates(*, min_value: float = 1e-4) -> st.SearchStrategy[float]:
    """Poisson sampling rates q in ``[min_value, 1]``, 1 (full participation) included."""
    return st.one_of(st.just(1.0), st.floats(min_value, 1.0))


def noise_multipliers(*, min_value: float = 0.3, max_value: float = 50.0) -> st.SearchStrategy[float]:
    """Noise multipliers z within the config's range (default 0.3..50: below, epsilon is huge)."""
    return _floats_in(UserDPConfig, "noise_multiplier", min_value, max_value)


def target_epsilons(*, min_value: float = 0.1, max_value: float = 20.0) -> st.SearchStrategy[float]:
    """Privacy budgets within the config's range."""
    return _floats_in(UserDPConfig, "target_epsilon", min_value, max_value)


def deltas(*, num_clients: int | None = None, min_value: float = 1e-10) -> st.SearchStrategy[float]:
    """delta in ``[min_value, 0.1]`` and, for user-level DP over ``num_clients``, below ``1 / num_clients``."""
    high = 0.1 if num_clients is None else min(0.1, 1.0 / num_clients)
    return st.floats(min_value, high, exclude_max=num_clients is not None)


@st.composite
def secagg_configs(draw: st.DrawFn, *, cohort: int, num_summands: int | None = None) -> SecAggConfig:
    """Enabled ``[secagg]`` sections valid for ``cohort`` clients per round.

    ``num_summands``: how many encodings the codec must hold (the cohort by default;
    ``partition.num_clients`` under user-level DP, whose Poisson cohorts vary).
    """
    if cohort < 3:
        raise ValueError(f"secure aggregation needs a cohort of at least 3; got {cohort}")
    summands = cohort if num_summands is None else num_summands
    choices = [0, cohort - 1, *range(2, cohort - 1, 2)]
    degree = draw(st.sampled_from(choices))
    resolved = SecAggConfig(degree=degree).resolved_degree(cohort)
    # 0 = the smallest safe threshold; an explicit one must exceed half of the neighbourhood (degree + 1).
    threshold = draw(st.one_of(st.just(0), st.integers((resolved + 1) // 2 + 1, resolved + 1)))
    return SecAggConfig(
        enabled=True,
        bits=draw(st.integers(_min_bits(summands), 52)),
        clip=draw(_floats_in(SecAggConfig, "clip", 1e-3, 1e3)),
        loss_clip=draw(_floats_in(SecAggConfig, "loss_clip", 1.0, 1e3)),
        degree=degree,
        threshold=threshold,
        dropout_rate=draw(st.sampled_from([0.0, 0.05, 0.2])),
    )


@st.composite
def compression_configs(draw: st.DrawFn, *, secagg: bool, user_dp: bool = False) -> CompressionConfig:
    """``[compression]`` sections valid with (or without) secure aggregation and user-level DP."""
    return CompressionConfig(
        rotation=draw(st.booleans()),
        sparsity=draw(st.one_of(st.just(0.0), _floats_in(CompressionConfig, "sparsity", 0.0, 0.95))),
        sparsify="random" if secagg else draw(st.sampled_from(_choices(CompressionConfig, "sparsify"))),
        bits=0 if secagg else draw(st.one_of(st.just(0), st.integers(2, 32))),
        clip=draw(_floats_in(CompressionConfig, "clip", 1e-3, 1e3)),
        conditional_rounding=draw(st.booleans()) if secagg and user_dp else False,
    )


@st.composite
def _noise_or_target(draw: st.DrawFn, cls: type) -> tuple[float, float]:
    """(noise_multiplier, target_epsilon) with at least one set (0 = off)."""
    which = draw(st.sampled_from(["noise", "target", "both"]))
    sigma = draw(_floats_in(cls, "noise_multiplier", 0.3, 50.0)) if which != "target" else 0.0
    target = draw(_floats_in(cls, "target_epsilon", 0.1, 20.0)) if which != "noise" else 0.0
    return sigma, target


@st.composite
def sample_dp_configs(draw: st.DrawFn) -> SampleDPConfig:
    """``[privacy.sample]`` sections (DP-SGD on each client) with a noise multiplier, a target, or both."""
    sigma, target = draw(_noise_or_target(SampleDPConfig))
    return SampleDPConfig(
        noise_multiplier=sigma,
        target_epsilon=target,
        max_grad_norm=draw(_floats_in(SampleDPConfig, "max_grad_norm", 1e-3, 100.0)),
        grad_sample_mode=draw(st.sampled_from(_choices(SampleDPConfig, "grad_sample_mode"))),
    )


@st.composite
def user_dp_configs(draw: st.DrawFn, *, secagg: bool = False) -> UserDPConfig:
    """``[privacy.user]`` sections (DP-FedAvg); distributed mechanisms only with ``secagg``
    and a fixed clip (adaptive clipping with them is refused).

    Under adaptive clipping an explicit ``count_stddev`` exceeds the noise multiplier, so
    the count query leaves noise for the delta sum (``delta_noise_multiplier`` refuses less).
    """
    sigma, target = draw(_noise_or_target(UserDPConfig))
    adaptive = draw(st.booleans())
    count = draw(st.one_of(st.just(0.0), st.floats(0.1, 10.0)))
    if adaptive and count and sigma and count <= sigma:
        count = 0.0  # the default (expected cohort / 20) is checked where the cohort is known
    mechanisms = _choices(UserDPConfig, "mechanism") if secagg and not adaptive else ("central",)
    return UserDPConfig(
        noise_multiplier=sigma,
        target_epsilon=target,
        clip_norm=draw(_floats_in(UserDPConfig, "clip_norm", 1e-3, 100.0)),
        adaptive_clipping=adaptive,
        target_quantile=draw(_floats_in(UserDPConfig, "target_quantile", 0.05, 0.95)),
        clip_learning_rate=draw(_floats_in(UserDPConfig, "clip_learning_rate", 0.01, 1.0)),
        count_stddev=count,
        mechanism=draw(st.sampled_from(mechanisms)),
    )


@st.composite
def privacy_configs(
    draw: st.DrawFn, *, num_clients: int, secagg: bool = False, modes: Sequence[str] | None = None
) -> PrivacyConfig:
    """``[privacy]`` sections for a federation of ``num_clients``: delta below ``1 / num_clients``
    under user-level DP, an accountant among the built-in ones (rdp, prv)."""
    mode = draw(st.sampled_from(list(modes) if modes is not None else _choices(PrivacyConfig, "mode")))
    user_level = mode in ("user", "both")
    accountants = [a for a in ("rdp", "prv") if a in _choices(PrivacyConfig, "accountant")]
    return PrivacyConfig(
        mode=mode,
        delta=draw(deltas(num_clients=num_clients if user_level else None)),
        accountant=draw(st.sampled_from(accountants)),
        secure_noise=draw(st.booleans()),
        sample=draw(sample_dp_configs()),
        user=draw(user_dp_configs(secagg=secagg and user_level)),
    )
