"""Distributed DP under secure aggregation: accounting and planning (pure numpy/scipy).

Each sampled client adds its share of integer noise to its scaled, rotated and rounded
integer vector before the SecAgg masks, so the only sum the server can decode is noised.

**Accounting** (Rényi DP at integer orders 2..128 and 256, composed over rounds and
converted to (epsilon, delta) exactly as the central ``rdp`` accountant does):

* Distributed discrete Gaussian (Kairouz, Liu, Steinke 2021, arXiv:2102.06387, Theorem 1 and
  Proposition 14): the sum of ``n`` i.i.d. ``N_Z(0, s^2)`` shares, for a query of integer L2
  sensitivity ``D2`` and L1 sensitivity ``D1``, satisfies (alpha, eps(alpha))-RDP with
  ``eps(alpha) = min(alpha/2 l2^2 + tau d, alpha/2 (l2^2 + 2 l1 tau + tau^2 d), alpha/2 (l2 + sqrt(d) tau)^2)``,
  ``l2 = D2 / (sqrt(n) s)``, ``l1 = D1 / (sqrt(n) s)``,
  ``tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k / (k + 1))`` (requires ``s >= 1/2``).
* Skellam (Agarwal, Kairouz, Liu 2021, arXiv:2110.04995, Theorem 3.5): total variance ``mu``,
  ``eps(alpha) = alpha D2^2 / (2 mu) + min(((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2), 3 D1 / (2 mu))``.
* ``D1 <= D2 min(sqrt(d), D2)`` for integer vectors (every non-zero coordinate is at least 1).
* Poisson subsampling of clients at rate q: the general upper bound of Zhu and Wang 2019
  ("Poisson Subsampled Rényi Differential Privacy", ICML, Theorem 5), which holds for any
  mechanism, taken as ``min`` with the unsampled bound, as the papers' reference code does
  (google-research/federated ``distributed_dp``). It is looser than the tight bound
  Opacus uses for the continuous Gaussian, so at q < 1 distributed epsilon is a little
  higher than central epsilon even with many bits (measured in docs/differential-privacy.md).

**Sensitivity**: clients clip to C' (:meth:`privfed.server.FederatedServer.upload_clip_norm`)
such that the rounded integer vector has L2 norm at most ``D2 = C kept/rotated scale`` (worst-case
rounding, or the conditional-rounding bound); rotation is orthonormal, sparsification keeps a
shared subset; the server's rescaling and inverse rotation are post-processing of the noised sum.

**Dropouts and cohort size (the rule)**: every sampled client adds a share of variance
``sigma_target^2 / shares``, where ``shares`` is one less than the 1% quantile of the number of
clients expected to reach the masked-input stage (Binomial(num_clients, q (1 - dropout)^3),
the SecAgg+ stages advertise, share, collect) — the papers' over-provisioning for the
configured dropout rate, extended to Poisson cohorts. The server decodes a round only when
at least ``shares + 1`` clients contributed (otherwise the round is aborted and nothing is
released), so that the shares of the *other* contributors alone carry ``sigma_target``: the
accountant credits exactly ``shares`` shares, never a client's own.

**Cohort room**: a Poisson cohort exceeds ``max_contributors`` (the ``1 - COHORT_TAIL`` quantile of
Binomial(num_clients, q)) with probability below ``COHORT_TAIL`` per round; the codec holds that many
clients' codes (not ``num_clients``: at 2,000 clients and 16 bits that would leave ~8 codes per client),
and a sum of more contributors is refused unread (``FixedPointStage.decode_sum``), never decoded wrapped.

**Wraparound**: the codec keeps ``noise_summands`` extra slots of ``k`` (each client's code range)
below the modulus so that the summed noise of up to ``max_contributors`` contributors stays within
``noise_summands k`` except with probability ``TAIL_PROBABILITY`` per round (Bernstein's bound:
both noises are sub-exponential with variance proxy ``max_contributors s^2``); a sum beyond it is
refused (detected, never decoded), as before.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from privfed.errors import ConfigError
from privfed.privacy.discrete import MAX_SKELLAM_VARIANCE
from privfed.privacy.events import DistributedNoiseEvent, Mechanism, PrivacyEvent, SampledGaussianEvent

if TYPE_CHECKING:
    from privfed.config import CompressionConfig, SecAggConfig

__all__ = [
    "DISTRIBUTED_MECHANISMS",
    "ORDERS",
    "TAIL_PROBABILITY",
    "DistributedNoisePlan",
    "distributed_plan",
    "epsilon_rdp",
    "noise_tail_bound",
    "plan_distributed_noise",
    "rdp_distributed_gaussian",
    "rdp_skellam",
    "rdp_subsampled",
]

DISTRIBUTED_MECHANISMS = ("distributed_gaussian", "skellam")
#: RDP orders (integers: the subsampling bound needs them), as the papers' reference code.
ORDERS: tuple[int, ...] = (*range(2, 129), 256)
#: Chance per round that the summed noise exceeds the codec's noise room (the sum is then refused).
TAIL_PROBABILITY = 1e-12
#: Quantile of the contributor count the noise shares are provisioned for.
COHORT_QUANTILE = 0.01
#: Chance per round that a Poisson cohort outgrows the codec's room (the round is then refused).
COHORT_TAIL = 1e-9
#: SecAgg+ stages a client must survive to contribute (advertise, share, collect).
_STAGES_TO_CONTRIBUTE = 3


def _l1_bound(l2: float, dim: int) -> float:
    return l2 * min(math.sqrt(dim), l2)


def ddg_tau(*, local_stddev: float, shares: int) -> float:
    """Kairouz, Liu, Steinke 2021, Theorem 1: ``10 sum_{k=1}^{n-1} exp(-2 pi^2 s^2 k/(k+1))``."""
    return 10 * sum(math.exp(-2 * math.pi**2 * local_stddev**2 * k / (k + 1)) for k in range(1, shares))


def rdp_distributed_gaussian(alpha: int, *, l2_sensitivity: float, local_stddev: float, shares: int, dim: int) -> float:
    """Unsampled RDP of order ``alpha`` of the sum of ``shares`` discrete Gaussians (KLS21 Prop. 14)."""
    if local_stddev < 0.5:
        return math.inf  # Theorem 1 needs s >= 1/2
    tau = ddg_tau(local_stddev=local_stddev, shares=shares)
    total = math.sqrt(shares) * local_stddev
    l2 = l2_sensitivity / total
    l1 = _l1_bound(l2_sensitivity, dim) / total
    return min(
        alpha / 2 * l2**2 + tau * dim,
        alpha / 2 * (l2**2 + 2 * l1 * tau + tau**2 * dim),
        alpha / 2 * (l2 + math.sqrt(dim) * tau) ** 2,
    )


def rdp_skellam(alpha: int, *, l2_sensitivity: float, variance: float, dim: int) -> float:
    """Unsampled RDP of order ``alpha`` of Skellam noise of total ``variance`` (AKL21 Theorem 3.5)."""
    d2 = l2_sensitivity
    d1 = _l1_bound(d2, dim)
    mu = variance
    return alpha * d2**2 / (2 * mu) + min(((2 * alpha - 1) * d2**2 + 6 * d1) / (4 * mu**2), 3 * d1 / (2 * mu))


def rdp_subsampled(alpha: int, *, sample_rate: float, rdp: Sequence[float]) -> float:
    """Zhu & Wang 2019 Theorem 5: RDP of order ``alpha`` of the Poisson-subsampled mechanism.

    ``rdp[j]`` is the unsampled mechanism's RDP at order ``j`` (indices 2..alpha used).
    Returns ``min`` of the bound and ``rdp[alpha]``.
    """
    from scipy.special import gammaln, logsumexp

    q = sample_rate
    if q >= 1:
        return rdp[alpha]
    log1mq = math.log1p(-q)
    logq = math.log(q)

    def log_comb(n: int, k: int) -> float:
        return float(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))

    terms = [(alpha - 1) * log1mq + math.log(alpha * q - q + 1)]
    terms.append(log_comb(alpha, 2) + 2 * logq + (alpha - 2) * log1mq + rdp[2])
    for j in range(3, alpha + 1):
        terms.append(math.log(3) + (j - 1) * rdp[j] + log_comb(alpha, j) + (alpha - j) * log1mq + j * logq)
    bound = float(logsumexp(terms)) / (alpha - 1)
    return min(bound, rdp[alpha])


@functools.lru_cache(maxsize=1024)
def _event_rdp(
    mechanism: str, noise_multiplier: float, sample_rate: float, shares: int, l2_sensitivity: float, dim: int
) -> npt.NDArray[np.float64]:
    """Per-step RDP at :data:`ORDERS` of one distributed event shape (cached: a run repeats it)."""
    local = noise_multiplier * l2_sensitivity / math.sqrt(shares)
    unsampled = [math.inf, math.inf]
    for alpha in range(2, ORDERS[-1] + 1):
        if mechanism == "distributed_gaussian":
            value = rdp_distributed_gaussian(
                alpha, l2_sensitivity=l2_sensitivity, local_stddev=local, shares=shares, dim=dim
            )
        else:
            value = rdp_skellam(alpha, l2_sensitivity=l2_sensitivity, variance=shares * local**2, dim=dim)
        unsampled.append(value)
    if any(math.isinf(v) for v in unsampled[2:]):
        out = np.full(len(ORDERS), math.inf)
    else:
        out = np.array([rdp_subsampled(a, sample_rate=sample_rate, rdp=unsampled) for a in ORDERS])
    out.setflags(write=False)
    return out


def _gaussian_rdp(noise_multiplier: float, sample_rate: float) -> npt.NDArray[np.float64]:
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(
        compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=[float(a) for a in ORDERS]),
        dtype=np.float64,
    )


def epsilon_rdp(events: Sequence[PrivacyEvent], *, delta: float) -> float:
    """Epsilon at ``delta`` of a composition that may hold distributed events, by RDP at :data:`ORDERS`
    (Opacus' conversion, as the central ``rdp`` accountant). Sampled-Gaussian events in the same
    list are composed with Opacus' tight subsampled-Gaussian RDP at the same orders."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    total = np.zeros(len(ORDERS))
    any_steps = False
    for e in events:
        if e.steps == 0:
            continue
        any_steps = True
        if isinstance(e, DistributedNoiseEvent):
            rdp = _event_rdp(e.mechanism, e.noise_multiplier, e.sample_rate, e.shares, e.l2_sensitivity, e.dim)
        else:
            assert isinstance(e, SampledGaussianEvent)
            rdp = _gaussian_rdp(e.noise_multiplier, e.sample_rate)
        total = total + e.steps * rdp
    if not any_steps:
        return 0.0
    if not np.isfinite(total).any():
        return math.inf
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        # Opacus warns when the best order is an end of the grid; integer orders from 2 are what the
        # subsampling bound allows, and the epsilon returned is valid at whichever order is best.
        warnings.simplefilter("ignore", UserWarning)
        eps, _ = get_privacy_spent(orders=[float(a) for a in ORDERS], rdp=total, delta=delta)
    return float(eps)


def noise_tail_bound(*, variance: float, dim: int, probability: float = TAIL_PROBABILITY) -> float:
    """``x`` with ``P[max_i |noise_i| > x] <= probability`` over ``dim`` coordinates whose noise has
    variance proxy ``variance`` (Bernstein: ``2 d exp(-x^2 / (2 (v + x/3))) = probability``)."""
    log_term = math.log(2 * dim / probability)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * variance * log_term)


@dataclasses.dataclass(frozen=True)
class DistributedNoisePlan:
    """How the clients share the noise of a round, and how the codec leaves room for it.

    Attributes:
        mechanism: ``"distributed_gaussian"`` or ``"skellam"``.
        noise_multiplier: z: the credited noise std over ``l2_sensitivity``.
        sample_rate: q, Poisson rate of clients per round.
        shares: shares credited by the accountant; a round decodes only with ``shares + 1`` contributors.
        l2_sensitivity: one client's integer L2 bound ``C kept/rotated scale``.
        dim: coordinates carrying signal and noise (kept after rotation/sparsification).
        local_stddev: each client's share std in integer units (Skellam: variance ``local_stddev^2``).
        summands: the codec's summand room (``max_contributors + noise_summands``).
        noise_summands: room left for the noise, in units of one client's code range ``k``.
        max_contributors: the most clients' codes the codec holds (a larger sum is refused).
    """

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    shares: int
    l2_sensitivity: float
    dim: int
    local_stddev: float
    summands: int
    noise_summands: int
    max_contributors: int

    @property
    def min_contributors(self) -> int:
        return self.shares + 1

    def event(self, *, steps: int, round: int = 0) -> DistributedNoiseEvent:
        return DistributedNoiseEvent(
            mechanism=self.mechanism,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            shares=self.shares,
            l2_sensitivity=self.l2_sensitivity,
            dim=self.dim,
            round=round,
        )


def provisioned_shares(*, num_clients: int, sample_rate: float, dropout_rate: float) -> int:
    """Shares each round's noise is split into (see the module docstring's rule), at least 1."""
    from scipy.stats import binom

    survive = sample_rate * (1 - dropout_rate) ** _STAGES_TO_CONTRIBUTE
    low = int(binom.ppf(COHORT_QUANTILE, num_clients, survive))
    return max(1, low - 1)


def plan_distributed_noise(
    *,
    mechanism: str,
    noise_multiplier: float,
    bits: int,
    coordinate_clip: float,
    clip_norm: float,
    kept: int,
    rotated: int,
    num_clients: int,
    sample_rate: float,
    dropout_rate: float,
) -> DistributedNoisePlan:
    """The noise shares and codec room of a distributed mechanism.

    Raises:
        ConfigError: an unknown mechanism, or ``bits`` too few to hold the cohort's codes and noise.
    """
    if mechanism not in DISTRIBUTED_MECHANISMS:
        raise ConfigError(
            f"privacy.user.mechanism must be one of {', '.join(DISTRIBUTED_MECHANISMS)}; got {mechanism!r}"
        )
    from scipy.stats import binom

    shares = provisioned_shares(num_clients=num_clients, sample_rate=sample_rate, dropout_rate=dropout_rate)
    cap = min(num_clients, max(int(binom.isf(COHORT_TAIL, num_clients, sample_rate)), shares + 1))
    top = 2 ** (bits - 1) - 1
    room = 0
    for _ in range(10_000):
        summands = cap + room
        k = top // summands
        if k < 1:
            break
        l2 = clip_norm * kept / rotated * k / coordinate_clip
        local = noise_multiplier * l2 / math.sqrt(shares)
        margin = noise_tail_bound(variance=cap * local**2, dim=kept)
        if margin <= room * k:
            if mechanism == "skellam" and local**2 > MAX_SKELLAM_VARIANCE:
                raise ConfigError(
                    f"privacy.user.mechanism = 'skellam' at secagg.bits = {bits} needs each client's noise share "
                    f"to have variance {local**2:.3g} (integer units), above the {MAX_SKELLAM_VARIANCE:.3g} "
                    "(2**52) the Skellam sampler draws; lower secagg.bits or use distributed_gaussian"
                )
            return DistributedNoisePlan(
                mechanism=mechanism,  # type: ignore[arg-type]
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                shares=shares,
                l2_sensitivity=l2,
                dim=kept,
                local_stddev=local,
                summands=summands,
                noise_summands=room,
                max_contributors=cap,
            )
        room = max(room + 1, math.ceil(margin / k))
    raise ConfigError(
        f"secagg.bits = {bits} cannot hold the sum of {cap} clients' codes plus {mechanism} noise "
        f"(noise multiplier {noise_multiplier:.3g}, shares {shares}); raise secagg.bits"
    )


def distributed_plan(
    *,
    mechanism: str,
    noise_multiplier: float,
    clip_norm: float,
    dim: int,
    secagg: SecAggConfig,
    compression: CompressionConfig,
    num_clients: int,
    clients_per_round: int,
) -> DistributedNoisePlan:
    """:func:`plan_distributed_noise` from the run's config sections (the server and the runner's
    calibration call this with the same inputs, so they agree on every number)."""
    from privfed.compression.quantize import coordinate_range
    from privfed.compression.rotation import padded_dim
    from privfed.compression.sparsify import kept_count

    rotated = padded_dim(dim) if compression.rotation else dim
    kept = kept_count(rotated, sparsity=compression.sparsity) if compression.sparsity > 0 else rotated
    return plan_distributed_noise(
        mechanism=mechanism,
        noise_multiplier=noise_multiplier,
        bits=secagg.bits,
        coordinate_clip=coordinate_range(  # the server's range: same inputs, same number
            coordinate_clip=secagg.clip,
            clip_norm=clip_norm,
            rotated=compression.rotation,
            rotated_dim=rotated,
            kept=kept,
        ),
        clip_norm=clip_norm,
        kept=kept,
        rotated=rotated,
        num_clients=num_clients,
        sample_rate=clients_per_round / num_clients,
        dropout_rate=secagg.dropout_rate,
    )
