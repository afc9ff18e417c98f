"""Empirical epsilon lower bounds and estimates: pure functions, no training.

Three tools:

* **One-run audit** (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
  arXiv:2305.08846). ``m`` canaries are each included with probability 1/2; the auditor guesses "in" for the
  ``k_pos`` highest-scoring canaries and "out" for the ``k_neg`` lowest, abstaining on the rest. Theorem 5.2 (and
  the algorithm of their Appendix D) bounds the probability of ``>= v`` correct guesses out of ``r`` under
  (epsilon, delta)-DP; the largest epsilon that this bound rejects is a lower bound on the mechanism's epsilon.
* **Gaussian mechanism** privacy profile (Balle & Wang 2018, "Improving the Gaussian Mechanism for Differential
  Privacy", Theorem 8), and the same profile for two Gaussians with different variances.
* **One-shot federated estimate** (Andrew, Kairouz, Oh, Oprea, McMahan & Suriyakumar 2024, "One-shot Empirical
  Privacy Estimation for Federated Learning", ICLR 2024, arXiv:2302.03098): random unit canary updates, cosines
  with the final model delta, Gaussian fits, and the epsilon of the fitted pair.

The first is a statistically valid lower bound at the stated confidence; the last is an *estimate* (no
confidence statement), exact for the Gaussian mechanism in high dimension.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from attacks.metrics import check_scores

__all__ = [
    "OneShotEstimate",
    "best_one_run_bound",
    "canary_cosines",
    "canary_directions",
    "gaussian_mechanism_delta",
    "gaussian_mechanism_epsilon",
    "gaussian_pair_delta",
    "gaussian_pair_epsilon",
    "one_run_epsilon_lower_bound",
    "one_run_guesses",
    "one_run_p_value",
    "one_shot_epsilon",
]

_F64 = npt.NDArray[np.float64]
_F32 = npt.NDArray[np.float32]

# Bisection stops when the bracket is narrower than this (absolute, in epsilon).
_EPS_TOL = 1e-10
# Grid points scanned before bisecting the one-run p-value (see ``one_run_epsilon_lower_bound``).
_ONE_RUN_GRID = 32


# --------------------------------------------------------------------------- helpers


def _check_int(name: str, value: int, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    out = int(value)
    if out < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {out}")
    return out


def _check_delta(delta: float, *, allow_zero: bool) -> float:
    d = float(delta)
    low_ok = d >= 0.0 if allow_zero else d > 0.0
    if not (low_ok and d < 1.0):
        raise ValueError(f"delta must lie in {'[0, 1)' if allow_zero else '(0, 1)'}; got {delta}")
    return d


def _bisect(predicate: Callable[[float], bool], lo: float, hi: float) -> tuple[float, float]:
    """Shrink ``[lo, hi]`` keeping ``predicate(lo)`` true and ``predicate(hi)`` false, to ``_EPS_TOL`` (relative
    above 1)."""
    for _ in range(200):
        if hi - lo <= _EPS_TOL * max(1.0, abs(hi)):
            break
        mid = 0.5 * (lo + hi)
        if predicate(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def _log1mexp(x: float) -> float:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler 2012)."""
    if x >= 0.0:
        return -math.inf
    if x > -math.log(2.0):
        return math.log(-math.expm1(x))
    return math.log1p(-math.exp(x))


def _log_ndtr(z: float) -> float:
    return float(special.log_ndtr(z))


def _log_interval_mass(z_lo: float, z_hi: float) -> float:
    """``log(Phi(z_hi) - Phi(z_lo))`` for ``z_lo <= z_hi``, using whichever tail keeps precision."""
    if z_hi <= z_lo:
        return -math.inf
    if z_lo > 0.0:  # both in the upper tail: Phi(-z_lo) - Phi(-z_hi)
        big, small = _log_ndtr(-z_lo), _log_ndtr(-z_hi)
    else:
        big, small = _log_ndtr(z_hi), _log_ndtr(z_lo)
    if big == -math.inf:
        return -math.inf
    return big + _log1mexp(small - big)


# --------------------------------------------------------------------------- one-run audit (Steinke et al. 2023)


def _one_run_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2 of Steinke, Nasr & Jagielski (2023) with ``W ~ Binomial(r, e^eps / (1 + e^eps))``:

    ``P[V >= v] <= f(v) + 2 m delta max_{i >= 1} (f(v - i) - f(v)) / i``,  ``f(u) = P[W >= u]``.

    ``f(v - i) - f(v) = P[v - i <= W <= v - 1]``; for ``i > v`` the numerator stays ``1 - f(v)`` while the
    denominator grows, so the maximum is over ``i = 1..v`` (their Appendix D algorithm). The window sums are
    cumulative sums of the pmf rather than differences of tails, which keeps them accurate when tiny.
    """
    q = float(special.expit(eps))
    beta = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[W >= v]
    if delta == 0.0 or v == 0:
        return min(beta, 1.0)
    window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v-i <= W <= v-1], i = 1..v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(beta + 2.0 * m * delta * alpha, 1.0)


def _check_one_run(
    num_guesses: int, num_correct: int, delta: float, num_canaries: int | None
) -> tuple[int, int, int | None, float]:
    r = _check_int("num_guesses", num_guesses)
    v = _check_int("num_correct", num_correct)
    if v > r:
        raise ValueError(f"num_correct ({v}) exceeds num_guesses ({r})")
    d = _check_delta(delta, allow_zero=True)
    m: int | None = None
    if num_canaries is not None:
        m = _check_int("num_canaries", num_canaries)
        if r > m:
            raise ValueError(f"num_guesses ({r}) exceeds num_canaries ({m})")
    elif d > 0.0:
        raise ValueError("delta > 0 needs num_canaries (the bound grows with 2 * num_canaries * delta)")
    return r, v, m, d


def one_run_p_value(
    *, num_guesses: int, num_correct: int, epsilon: float, delta: float, num_canaries: int | None = None
) -> float:
    """Upper bound on ``P[>= num_correct correct guesses]`` under (epsilon, delta)-DP (Steinke et al. 2023, Thm 5.2).

    Parameters
    ----------
    num_guesses, num_correct
        ``r`` guesses made (abstentions excluded), ``v`` of them correct.
    epsilon, delta
        The null hypothesis: the mechanism is (epsilon, delta)-DP.
    num_canaries
        ``m``, canaries each included independently with probability 1/2; required when ``delta > 0``.
    """
    r, v, m, d = _check_one_run(num_guesses, num_correct, delta, num_canaries)
    if not (math.isfinite(epsilon) and epsilon >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}")
    return _one_run_p_value(m or 0, r, v, float(epsilon), d)


def _pure_dp_bound(r: int, v: int, alpha: float) -> float:
    """Largest epsilon with ``P[Binomial(r, q) >= v] < alpha``, ``q = e^eps / (1 + e^eps)``.

    ``P[Binomial(r, q) >= v] = I_q(v, r - v + 1)`` (regularized incomplete beta), increasing in ``q``, so the
    boundary is the Clopper-Pearson lower limit ``q* = I^{-1}_alpha(v, r - v + 1)`` and the bound is
    ``logit(q*)`` (0 when ``q* <= 1/2``).
    """
    if v == 0:
        return 0.0
    q_star = float(special.betaincinv(v, r - v + 1, alpha))
    if q_star <= 0.5:
        return 0.0
    return max(0.0, math.log(q_star) - math.log1p(-q_star))


def one_run_epsilon_lower_bound(
    *,
    num_guesses: int,
    num_correct: int,
    delta: float,
    confidence: float = 0.95,
    num_canaries: int | None = None,
) -> float:
    """Empirical epsilon lower bound from one training run (Steinke, Nasr & Jagielski 2023).

    The largest epsilon whose (epsilon, delta)-DP null hypothesis gives the observed ``num_correct`` of
    ``num_guesses`` a probability below ``1 - confidence`` (Theorem 5.2); 0.0 when no positive epsilon is rejected.
    With probability at least ``confidence`` over the canary inclusion coins, a mechanism that is
    (epsilon, delta)-DP yields a bound no larger than epsilon.

    Parameters
    ----------
    num_guesses, num_correct
        ``r`` guesses (top-k "in" plus bottom-k "out"), ``v`` of them correct; see ``one_run_guesses``.
    delta
        In ``[0, 1)``. With ``delta == 0`` the bound is the pure-DP one (``v`` dominated by
        ``Binomial(r, e^eps / (1 + e^eps))``), computed in closed form.
    confidence
        In ``(0, 1)``.
    num_canaries
        ``m``, canaries each included with probability 1/2; required when ``delta > 0``.

    Notes
    -----
    The reported value is the supremum of the rejected epsilons, not the first crossing: since (epsilon, delta)-DP
    implies (epsilon', delta)-DP for every epsilon' > epsilon, ``inf_{epsilon' >= epsilon} p(epsilon')`` is itself a
    valid p-value, so rejecting any epsilon' rejects every smaller epsilon. The delta term can make ``p`` dip, so
    the search scans a grid below the pure-DP bound (which caps the result, as the delta term is non-negative)
    and bisects after the last rejected grid point to about 1e-10.
    """
    r, v, m, d = _check_one_run(num_guesses, num_correct, delta, num_canaries)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    alpha = 1.0 - float(confidence)
    eps_cap = _pure_dp_bound(r, v, alpha)
    if d == 0.0 or eps_cap == 0.0:
        return eps_cap
    assert m is not None

    def rejected(eps: float) -> bool:
        return _one_run_p_value(m, r, v, eps, d) < alpha

    grid = np.linspace(0.0, eps_cap, _ONE_RUN_GRID + 1)
    hits = [i for i, eps in enumerate(grid[:-1]) if rejected(float(eps))]
    if not hits:
        return 0.0
    last = hits[-1]
    return _bisect(rejected, float(grid[last]), float(grid[last + 1]))[0]


def one_run_guesses(scores: npt.ArrayLike, included: npt.ArrayLike, *, k_pos: int, k_neg: int) -> tuple[int, int]:
    """``(num_guesses, num_correct)`` for guessing the ``k_pos`` highest scores "in" and ``k_neg`` lowest "out".

    Parameters
    ----------
    scores
        One finite score per canary; higher means "more likely included".
    included
        The true inclusion bits (bool or 0/1), same length.
    k_pos, k_neg
        Non-negative, ``k_pos + k_neg <= len(scores)``; the canaries in between are abstentions.

    Notes
    -----
    Ties are broken by canary index (stable sort), which is independent of the inclusion bits when those are
    drawn at random as the audit requires.
    """
    s, inc = check_scores(scores, included, what="canary", need_both=False)
    kp = _check_int("k_pos", k_pos)
    kn = _check_int("k_neg", k_neg)
    if kp + kn > s.size:
        raise ValueError(f"k_pos + k_neg ({kp + kn}) exceeds the number of canaries ({s.size})")
    order = np.argsort(-s, kind="stable")  # highest score first
    top, bottom = order[:kp], order[s.size - kn :]
    correct = int(np.count_nonzero(inc[top])) + int(np.count_nonzero(~inc[bottom]))
    return kp + kn, correct


def _default_ks(m: int) -> list[int]:
    return sorted({max(1, int(frac * m) // 2) for frac in (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)})


def best_one_run_bound(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
    ks: Sequence[int] | None = None,
    positive_only: bool = False,
) -> tuple[float, int]:
    """Best one-run bound over ``k_pos = k_neg = k`` for ``k`` in ``ks``; returns ``(epsilon, k)``.

    With ``positive_only`` the auditor only guesses "included" for the top ``k``
    and abstains on the rest (``k_neg = 0``), which suits canaries that may never
    be used (Poisson-sampled canary clients): an unused inserted canary looks
    exactly like an excluded one, so bottom guesses would be coin flips.

    Choosing ``k`` after seeing the scores is a multiple comparison: each ``k`` is tested at level
    ``(1 - confidence) / len(ks)`` (Bonferroni), so by the union bound the maximum is still a valid lower bound
    at ``confidence``. Duplicate ``k`` are dropped before counting.

    Parameters
    ----------
    scores, included
        As in ``one_run_guesses``; ``m = len(scores)`` is the number of canaries.
    delta
        In ``[0, 1)``.
    confidence
        Overall confidence, in ``(0, 1)``.
    ks
        Candidate ``k``, each with ``1 <= k`` and ``2 k <= m``. Default: ``max(1, floor(f m) // 2)`` for
        ``f`` in 2%, 5%, 10%, 20%, 50%, 100%.

    Returns
    -------
    (epsilon, k)
        The largest corrected bound and the smallest ``k`` attaining it.
    """
    m = int(np.asarray(scores).size)
    if m < 2:
        raise ValueError(f"need at least two canaries; got {m}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    candidates = _default_ks(m) if ks is None else sorted({_check_int("k", k, minimum=1) for k in ks})
    if not candidates:
        raise ValueError("ks must not be empty")
    if (1 if positive_only else 2) * candidates[-1] > m:
        raise ValueError(f"k = {candidates[-1]} needs {'' if positive_only else '2'}k <= num_canaries = {m}")
    per_test_confidence = 1.0 - (1.0 - float(confidence)) / len(candidates)
    best_eps, best_k = -1.0, candidates[0]
    for k in candidates:
        r, v = one_run_guesses(scores, included, k_pos=k, k_neg=0 if positive_only else k)
        eps = one_run_epsilon_lower_bound(
            num_guesses=r, num_correct=v, delta=delta, confidence=per_test_confidence, num_canaries=m
        )
        if eps > best_eps:
            best_eps, best_k = eps, k
    return best_eps, best_k


# --------------------------------------------------------------------------- Gaussian privacy profiles


def _check_mu(mu: float) -> float:
    value = float(mu)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"mu must be finite and >= 0; got {mu}")
    return value


def _gaussian_log_delta(mu: float, eps: float) -> float:
    """``log delta(eps)`` for ``N(0,1)`` vs ``N(mu,1)``: ``Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)``."""
    if mu == 0.0:
        return -math.inf
    log_a = _log_ndtr(-eps / mu + mu / 2.0)
    log_b = eps + _log_ndtr(-eps / mu - mu / 2.0)
    if log_b >= log_a:
        return -math.inf
    return log_a + _log1mexp(log_b - log_a)


def gaussian_mechanism_delta(*, mu: float, epsilon: float) -> float:
    """Smallest delta such that the Gaussian mechanism with ``sensitivity / sigma = mu`` is (epsilon, delta)-DP.

    ``delta = Phi(-epsilon/mu + mu/2) - e^epsilon Phi(-epsilon/mu - mu/2)`` (Balle & Wang 2018, Theorem 8),
    evaluated in log space so that large ``mu`` and ``epsilon`` do not overflow.
    """
    m = _check_mu(mu)
    eps = float(epsilon)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}")
    return math.exp(_gaussian_log_delta(m, eps))


def _solve_epsilon(log_delta_of: Callable[[float], float], delta: float) -> float:
    """Smallest ``eps >= 0`` with ``log_delta_of(eps) <= log(delta)``; ``log_delta_of`` must be non-increasing."""
    target = math.log(delta)

    def above(eps: float) -> bool:
        return log_delta_of(eps) > target

    if not above(0.0):
        return 0.0
    lo, hi = 0.0, 1.0
    while above(hi):
        lo, hi = hi, 2.0 * hi
        if hi > 1e12:
            raise ValueError("epsilon exceeds 1e12; the inputs are degenerate")
    return _bisect(above, lo, hi)[1]  # the side where delta(eps) <= delta


def gaussian_mechanism_epsilon(*, mu: float, delta: float) -> float:
    """Epsilon at which the Gaussian mechanism with ``sensitivity / sigma = mu`` is (epsilon, delta)-DP.

    Solves ``delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)`` for ``eps >= 0`` (Balle & Wang 2018,
    analytic Gaussian mechanism) by bisection on ``log delta`` to about 1e-10; 0.0 when even ``eps = 0``
    satisfies ``delta`` (including ``mu = 0``).

    Parameters
    ----------
    mu
        Sensitivity over noise standard deviation, ``>= 0`` (also the GDP parameter of Dong, Roth & Su).
    delta
        In ``(0, 1)``.
    """
    m = _check_mu(mu)
    d = _check_delta(delta, allow_zero=False)
    if m == 0.0:
        return 0.0
    return _solve_epsilon(lambda eps: _gaussian_log_delta(m, eps), d)


def _check_normal(name: str, mean: float, std: float) -> tuple[float, float]:
    mean_f, std_f = float(mean), float(std)
    if not (math.isfinite(mean_f) and math.isfinite(std_f) and std_f > 0.0):
        raise ValueError(f"{name}: mean must be finite and std finite and > 0; got ({mean}, {std})")
    return mean_f, std_f


def _log_normal_mass_outside(lo: float, hi: float, mean: float, std: float) -> float:
    """``log P[X < lo or X > hi]`` for ``X ~ N(mean, std^2)``, ``lo <= hi``."""
    return float(np.logaddexp(_log_ndtr((lo - mean) / std), _log_ndtr((mean - hi) / std)))


def _log_hockey_stick(mean_p: float, std_p: float, mean_q: float, std_q: float, eps: float) -> float:
    """``log E_Q[(dP/dQ - e^eps)_+] = log integral (p - e^eps q)_+`` for two univariate normals.

    The privacy loss ``log p/q`` is the quadratic ``a x^2 + b x + c``; ``(p - e^eps q)_+`` lives on the set where
    it exceeds ``eps``, a half-line (equal variances), an interval or the complement of one, whose masses under
    both normals are normal CDFs. Coordinates are standardised by ``P`` first (the divergence is affine invariant).
    """
    m = (mean_q - mean_p) / std_p  # P becomes N(0, 1), Q becomes N(m, s^2)
    s = std_q / std_p
    a = 0.5 / s**2 - 0.5
    b = -m / s**2
    c = 0.5 * (m / s) ** 2 + math.log(s) - eps  # loss - eps = a x^2 + b x + c
    if a == 0.0:
        if b == 0.0:
            return -math.inf  # P == Q
        t = -c / b
        if b > 0.0:  # region x > t
            log_p, log_q = _log_ndtr(-t), _log_ndtr((m - t) / s)
        else:  # region x < t
            log_p, log_q = _log_ndtr(t), _log_ndtr((t - m) / s)
    else:
        disc = b * b - 4.0 * a * c
        if disc <= 0.0:
            # The quadratic has the sign of ``a`` everywhere: the region is empty (a < 0) or the whole line, where
            # the integral is 1 - e^eps <= 0.
            return -math.inf
        root = math.sqrt(disc)
        half = -0.5 * (b + math.copysign(root, b))  # numerically stable roots half/a and c/half
        r1, r2 = half / a, c / half
        lo, hi = min(r1, r2), max(r1, r2)
        if a > 0.0:  # region outside [lo, hi]
            log_p = _log_normal_mass_outside(lo, hi, 0.0, 1.0)
            log_q = _log_normal_mass_outside(lo, hi, m, s)
        else:  # region inside (lo, hi)
            log_p = _log_interval_mass(lo, hi)
            log_q = _log_interval_mass((lo - m) / s, (hi - m) / s)
    if log_p == -math.inf or eps + log_q >= log_p:
        return -math.inf
    return log_p + _log1mexp(eps + log_q - log_p)


def gaussian_pair_delta(*, mean0: float, std0: float, mean1: float, std1: float, epsilon: float) -> float:
    """Smallest delta with ``P = N(mean0, std0^2)`` and ``Q = N(mean1, std1^2)`` (epsilon, delta)-indistinguishable.

    ``max(H(P||Q), H(Q||P))`` with the hockey-stick divergence ``H(P||Q) = integral (p - e^epsilon q)_+``; both
    directions because DP bounds adding and removing a record. Equals ``gaussian_mechanism_delta`` with
    ``mu = |mean1 - mean0| / std`` when the standard deviations are equal.
    """
    m0, s0 = _check_normal("first normal", mean0, std0)
    m1, s1 = _check_normal("second normal", mean1, std1)
    eps = float(epsilon)
    if not (math.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon}")
    return math.exp(max(_log_hockey_stick(m0, s0, m1, s1, eps), _log_hockey_stick(m1, s1, m0, s0, eps)))


def gaussian_pair_epsilon(*, mean0: float, std0: float, mean1: float, std1: float, delta: float) -> float:
    """Smallest ``epsilon >= 0`` at which ``N(mean0, std0^2)`` and ``N(mean1, std1^2)`` are (epsilon, delta)-close.

    Inverts ``gaussian_pair_delta`` (non-increasing in epsilon) by bisection to about 1e-10. With unequal variances
    the privacy loss is unbounded, but its tails are Gaussian, so the answer is finite for every ``delta > 0``.
    """
    m0, s0 = _check_normal("first normal", mean0, std0)
    m1, s1 = _check_normal("second normal", mean1, std1)
    d = _check_delta(delta, allow_zero=False)

    def log_delta(eps: float) -> float:
        return max(_log_hockey_stick(m0, s0, m1, s1, eps), _log_hockey_stick(m1, s1, m0, s0, eps))

    return _solve_epsilon(log_delta, d)


# --------------------------------------------------------------------------- one-shot FL estimate (Andrew et al. 2024)


def canary_directions(dim: int, count: int, rng: np.random.Generator) -> _F32:
    """``count`` independent directions uniform on the unit sphere in ``R^dim``: float32 ``[count, dim]``.

    Normalised standard Gaussians (isotropic); the cosine of one with any fixed vector has mean 0 and variance
    ``1/dim``, approximately ``N(0, 1/dim)`` for large ``dim`` (Andrew et al. 2024, Section 4).
    """
    d = _check_int("dim", dim, minimum=1)
    n = _check_int("count", count)
    g = rng.standard_normal((n, d))
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    norms[norms == 0.0] = 1.0  # probability zero; keeps the output finite
    out: _F32 = (g / norms).astype(np.float32)
    return out


def canary_cosines(directions: npt.ArrayLike, delta_vector: npt.ArrayLike) -> _F64:
    """Cosine between each canary direction (rows of ``directions``) and the flattened ``delta_vector``, float64."""
    dirs = np.asarray(directions, dtype=np.float64)
    if dirs.ndim != 2:
        raise ValueError(f"directions must be 2-D [count, dim]; got shape {dirs.shape}")
    vec = np.asarray(delta_vector, dtype=np.float64).reshape(-1)
    if vec.size != dirs.shape[1]:
        raise ValueError(f"delta_vector has {vec.size} entries; directions have dim {dirs.shape[1]}")
    vec_norm = float(np.linalg.norm(vec))
    dir_norms = np.linalg.norm(dirs, axis=1)
    if vec_norm == 0.0 or not math.isfinite(vec_norm):
        raise ValueError("delta_vector must be finite and non-zero")
    if np.any(dir_norms == 0.0) or not np.all(np.isfinite(dir_norms)):
        raise ValueError("canary directions must be finite and non-zero")
    return np.asarray((dirs @ vec) / (dir_norms * vec_norm), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class OneShotEstimate:
    """One-shot epsilon estimate and the Gaussian fits behind it (standard deviations with ``ddof=1``).

    ``mu`` is the standardised separation ``(mean_observed - mean_unobserved) / std_unobserved``; when the two
    standard deviations agree, ``epsilon == gaussian_mechanism_epsilon(mu=mu, delta=...)``.
    """

    epsilon: float
    mu: float
    mean_observed: float
    std_observed: float
    mean_unobserved: float
    std_unobserved: float
    num_observed: int
    num_unobserved: int


def _fit(name: str, values: npt.ArrayLike) -> tuple[float, float, int]:
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError(f"need at least two {name} cosines; got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} cosines must be finite")
    std = float(np.std(x, ddof=1))
    if std <= 0.0:
        raise ValueError(f"{name} cosines have zero spread; cannot fit a Gaussian")
    return float(np.mean(x)), std, int(x.size)


def one_shot_epsilon(
    *, observed_cosines: npt.ArrayLike, unobserved_cosines: npt.ArrayLike, delta: float
) -> OneShotEstimate:
    """One-shot empirical epsilon (Andrew et al. 2024, "One-shot Empirical Privacy Estimation for FL").

    Fits ``N(mean_u, std_u^2)`` to the cosines of canaries never inserted (the null) and ``N(mean_o, std_o^2)`` to
    those of inserted canaries, and returns the epsilon of that pair at ``delta`` (``gaussian_pair_epsilon``).
    This follows the paper's estimator, ``eps(N(0, 1/d) || N(mu_hat, sigma_hat^2); delta)`` with the observed
    canaries' own mean and standard deviation (their one-shot algorithm; the null is the closed-form cosine
    distribution of Section 4; the authors' code, google-research/federated ``one_shot_epe``, computes it as the
    epsilon of two Gaussians with unequal variances): the separation is not rescaled by a pooled or null-only
    standard deviation. The paper uses the closed-form null ``N(0, 1/d)``; the unobserved canaries estimate the
    same distribution empirically.

    An estimate, not a confidence bound. ``epsilon`` is 0.0 when ``mean_o <= mean_u`` (no evidence that inserting
    a canary moves the model towards it).

    Parameters
    ----------
    observed_cosines, unobserved_cosines
        At least two finite values each, with non-zero spread (see ``canary_cosines``).
    delta
        In ``(0, 1)``.
    """
    d = _check_delta(delta, allow_zero=False)
    mean_o, std_o, n_o = _fit("observed", observed_cosines)
    mean_u, std_u, n_u = _fit("unobserved", unobserved_cosines)
    mu = (mean_o - mean_u) / std_u
    eps = 0.0
    if mu > 0.0:
        eps = gaussian_pair_epsilon(mean0=mean_u, std0=std_u, mean1=mean_o, std1=std_o, delta=d)
    return OneShotEstimate(
        epsilon=eps,
        mu=mu,
        mean_observed=mean_o,
        std_observed=std_o,
        mean_unobserved=mean_u,
        std_unobserved=std_u,
        num_observed=n_o,
        num_unobserved=n_u,
    )
