"""Membership-inference scores from per-example statistics (numpy only).

Every function maps statistics computed elsewhere (losses, log-likelihoods,
logit-scaled confidences, probabilities) to a score with one convention:
**higher score = more likely a member**. Feed the result to
:func:`attacks.metrics.membership_metrics`.

LiRA's shadow statistics are ``[K, n]`` arrays (K shadow models, n examples)
in which ``NaN`` marks "no observation": in ``in_stats`` a NaN at ``[k, i]``
means shadow ``k`` did not train on example ``i``; in ``out_stats`` it means
shadow ``k`` did train on it. ``±inf`` is always an error.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "client_scores",
    "lira_offline",
    "lira_online",
    "logit_confidence",
    "logit_confidence_from_logits",
    "loss_score",
    "reference_score",
    "rmia_scores",
]

_F64 = npt.NDArray[np.float64]
Reduce = Literal["mean", "max", "median"]


def _finite(name: str, values: npt.ArrayLike) -> _F64:
    a = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return a


def _vector(name: str, values: npt.ArrayLike) -> _F64:
    a = _finite(name, values)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {a.shape}")
    return a


def _matrix(name: str, values: npt.ArrayLike, n: int, *, allow_nan: bool) -> _F64:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != n:
        raise ValueError(f"{name} must have shape [K, {n}], got {a.shape}")
    if a.shape[0] < 1:
        raise ValueError(f"{name} needs K >= 1 models")
    bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
    if bad.any():
        raise ValueError(f"{name} must be finite" + (" (NaN marks a missing observation)" if allow_nan else ""))
    return a


# --------------------------------------------------------------------------- simple scores


def loss_score(losses: npt.ArrayLike) -> _F64:
    """``-loss``: the LOSS attack's threshold test (Yeom et al. 2018, "Privacy Risk in Machine
    Learning: Analyzing the Connection to Overfitting", CSF). Any shape; returns the same shape."""
    return -_finite("losses", losses)


def reference_score(target_log_likelihood: npt.ArrayLike, reference_log_likelihood: npt.ArrayLike) -> _F64:
    """``target - reference`` log-likelihood, elementwise (same shapes).

    The reference model (here the frozen base model, which never saw the
    fine-tuning data) calibrates each example's intrinsic difficulty: an
    additive per-example offset common to both models cancels. Carlini et al.
    2021 ("Extracting Training Data from Large Language Models", USENIX
    Security) compare against a smaller/reference model; Watson et al. 2022 ("On
    the Importance of Difficulty Calibration in Membership Inference Attacks",
    ICLR) call this difficulty calibration.
    """
    t = _finite("target_log_likelihood", target_log_likelihood)
    r = _finite("reference_log_likelihood", reference_log_likelihood)
    if t.shape != r.shape:
        raise ValueError(f"shape mismatch: target {t.shape} vs reference {r.shape}")
    return t - r


def logit_confidence(true_class_probability: npt.ArrayLike, *, log_input: bool = False) -> _F64:
    """LiRA's logit scaling ``phi(p) = log p - log(1 - p)`` (Carlini et al. 2022), elementwise.

    ``p`` must lie in the open interval (0, 1). With ``log_input=True`` the
    input is ``log p`` (must be < 0) and ``log(1 - p)`` is taken as
    ``log(-expm1(log p))``, which keeps precision when ``p`` rounds to 1 in
    float64; from raw logits prefer :func:`logit_confidence_from_logits`.
    """
    a = _finite("true_class_probability", true_class_probability)
    if log_input:
        if np.any(a >= 0.0):
            raise ValueError("log-probabilities must be < 0 (p < 1); use logit_confidence_from_logits")
        return a - np.log(-np.expm1(a))
    if np.any((a <= 0.0) | (a >= 1.0)):
        raise ValueError("probabilities must lie in (0, 1); use logit_confidence_from_logits for saturated models")
    return np.log(a) - np.log1p(-a)


def logit_confidence_from_logits(logits: npt.ArrayLike, labels: npt.ArrayLike) -> _F64:
    """``log p_y - log sum_{j != y} p_j`` from raw logits ``[..., C]`` and integer labels ``[...]``.

    Equals ``z_y - logsumexp_{j != y} z_j`` (the softmax normaliser cancels),
    so no probability is ever formed: the stable form of the LiRA reference
    code's ``score.py`` (tensorflow/privacy ``research/mi_lira_2021``), which
    computes it in probability space with a 1e-45 floor. Returns shape ``[...]``.
    """
    from scipy.special import logsumexp

    z = _finite("logits", logits)
    y = np.asarray(labels)
    if z.ndim < 1 or z.shape[-1] < 2:
        raise ValueError(f"logits must have shape [..., C] with C >= 2, got {z.shape}")
    if y.shape != z.shape[:-1]:
        raise ValueError(f"labels must have shape {z.shape[:-1]}, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError("labels must be integers")
    num_classes = z.shape[-1]
    if np.any((y < 0) | (y >= num_classes)):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    y_idx = y[..., None].astype(np.intp)
    true_logit = np.take_along_axis(z, y_idx, axis=-1)[..., 0]
    others = z.copy()
    np.put_along_axis(others, y_idx, -np.inf, axis=-1)
    return np.asarray(true_logit - logsumexp(others, axis=-1), dtype=np.float64)


# --------------------------------------------------------------------------- LiRA


def _gaussian_fit(name: str, stats: npt.ArrayLike, n: int, *, fixed_variance: bool) -> tuple[_F64, _F64]:
    """Per-example mean and std (MLE, ``ddof=0``) of the non-NaN entries of a ``[K, n]`` array.

    With ``fixed_variance`` the std is the pooled within-example one,
    ``sqrt(sum_{k,i} (s_ki - mu_i)^2 / #observations)``, shared by all examples.
    """
    s = _matrix(name, stats, n, allow_nan=True)
    observed = ~np.isnan(s)
    count = observed.sum(axis=0)
    if np.any(count == 0):
        raise ValueError(f"{name}: example {int(np.argmax(count == 0))} has no observation (all NaN)")
    mean = np.where(observed, s, 0.0).sum(axis=0) / count
    squares = np.where(observed, np.square(s - mean), 0.0)
    var = np.full(n, squares.sum() / count.sum()) if fixed_variance else squares.sum(axis=0) / count
    if np.any(var <= 0.0):
        raise ValueError(
            f"{name}: zero variance (too few distinct observations per example); "
            "use fixed_variance=True or more shadow models"
        )
    return mean, np.sqrt(var)


def lira_online(
    target: npt.ArrayLike,
    in_stats: npt.ArrayLike,
    out_stats: npt.ArrayLike,
    *,
    fixed_variance: bool = True,
) -> _F64:
    """Online LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles", IEEE S&P, Alg. 1).

    ``score_i = log N(target_i; mu_in_i, s_in^2) - log N(target_i; mu_out_i, s_out^2)``.

    Shapes: ``target`` [n]; ``in_stats``, ``out_stats`` [K, n] with NaN where
    shadow k has no IN (resp. OUT) observation of example i; every example
    needs at least one of each. Statistics should be logit-scaled confidences
    (:func:`logit_confidence`) or another roughly Gaussian statistic; average
    scores over augmentations/queries yourself. ``mu`` is the per-example mean
    (Alg. 1; the reference code's ``plot.py`` uses the median). Variances are
    the ``ddof=0`` estimates of the reference code; ``fixed_variance=True``
    (the paper's advice when shadow models are few) uses one pooled within-example
    variance for all examples, separately for IN and OUT.
    """
    t = _vector("target", target)
    mu_in, sd_in = _gaussian_fit("in_stats", in_stats, t.size, fixed_variance=fixed_variance)
    mu_out, sd_out = _gaussian_fit("out_stats", out_stats, t.size, fixed_variance=fixed_variance)
    z_in = (t - mu_in) / sd_in
    z_out = (t - mu_out) / sd_out
    return np.asarray(0.5 * (np.square(z_out) - np.square(z_in)) + np.log(sd_out) - np.log(sd_in), dtype=np.float64)


def lira_offline(target: npt.ArrayLike, out_stats: npt.ArrayLike, *, fixed_variance: bool = True) -> _F64:
    """Offline LiRA (Carlini et al. 2022, Alg. 1, offline branch): a one-sided test against the OUT Gaussian.

    ``score_i = log Phi((target_i - mu_out_i) / s_out)``, the log of
    ``1 - Pr[Z > target_i]`` for ``Z ~ N(mu_out_i, s_out^2)``; monotone
    increasing in ``target`` (members have the larger statistic). Shapes and
    variance estimates as in :func:`lira_online`. The released ``plot.py``
    instead uses the two-sided ``-logpdf`` of the OUT Gaussian; this follows
    the paper's one-sided test.
    """
    from scipy.special import log_ndtr

    t = _vector("target", target)
    mu_out, sd_out = _gaussian_fit("out_stats", out_stats, t.size, fixed_variance=fixed_variance)
    return np.asarray(log_ndtr((t - mu_out) / sd_out), dtype=np.float64)


# --------------------------------------------------------------------------- RMIA


def _rmia_log_or_ratio(name: str, target: _F64, refs: _F64, *, offline_a: float | None, log_probs: bool) -> _F64:
    """``Pr(.|theta) / Pr(.)`` (or its log), ``Pr(.)`` the mean over reference models."""
    if log_probs:
        from scipy.special import logsumexp

        if offline_a is not None and (np.any(target > 0.0) or np.any(refs > 0.0)):
            raise ValueError(f"{name}: offline_a needs log-probabilities <= 0")
        log_marginal = np.asarray(logsumexp(refs, axis=0), dtype=np.float64) - np.log(refs.shape[0])
        if offline_a is not None and offline_a < 1.0:
            log_half = np.log(0.5)
            log_marginal = np.logaddexp(np.log1p(offline_a) + log_half + log_marginal, np.log1p(-offline_a) + log_half)
        return np.asarray(target - log_marginal, dtype=np.float64)
    if np.any(target <= 0.0) or np.any(refs <= 0.0):
        raise ValueError(f"{name}: probabilities must be > 0 (pass log_probs=True for log-likelihoods)")
    if offline_a is not None and (np.any(target > 1.0) or np.any(refs > 1.0)):
        raise ValueError(f"{name}: offline_a needs probabilities <= 1")
    marginal = refs.sum(axis=0) / refs.shape[0]
    if offline_a is not None:
        marginal = (1.0 + offline_a) / 2.0 * marginal + (1.0 - offline_a) / 2.0
    with np.errstate(over="ignore"):
        ratio = np.asarray(target / marginal, dtype=np.float64)
    if not np.all(np.isfinite(ratio)):
        raise ValueError(f"{name}: Pr(.|theta) / Pr(.) overflows; pass log_probs=True")
    return ratio


def rmia_scores(
    target_prob_x: npt.ArrayLike,
    ref_probs_x: npt.ArrayLike,
    target_prob_z: npt.ArrayLike,
    ref_probs_z: npt.ArrayLike,
    *,
    gamma: float = 1.0,
    offline_a: float | None = None,
    log_probs: bool = False,
) -> _F64:
    """RMIA (Zarifzadeh, Liu, Mahloujifar, Shokri 2024, "Low-Cost High-Power Membership Inference Attacks", ICML).

    ``score(x) = |{z : LR(x, z) >= gamma}| / m`` with
    ``LR(x, z) = (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z))`` and ``Pr(.)``
    the mean of the K reference models' probabilities. With ``offline_a``
    (references all OUT) ``Pr(.) = ((1 + a) Pr_OUT(.) + (1 - a)) / 2`` for
    both x and z, as in the paper's offline attack and ``run_rmia`` of the reference code
    (privacytrustlab/ml_privacy_meter), which counts ``LR > 1``; this follows
    the paper's ``>= gamma``.

    Shapes: ``target_prob_x`` [n], ``ref_probs_x`` [K, n], ``target_prob_z``
    [m], ``ref_probs_z`` [K, m] (the same K reference models). Probabilities
    must be > 0 (and <= 1 with ``offline_a``); with ``log_probs=True`` all four
    are log-probabilities and the ratios are formed in log space, for sequence
    likelihoods that underflow. Counting sorts the m population ratios once:
    O((n + m) log m). Returns fractions in [0, 1], shape [n].
    """
    if not (np.isfinite(gamma) and gamma > 0.0):
        raise ValueError("gamma must be a finite number > 0")
    if offline_a is not None and not 0.0 <= offline_a <= 1.0:
        raise ValueError("offline_a must lie in [0, 1]")
    tx = _vector("target_prob_x", target_prob_x)
    tz = _vector("target_prob_z", target_prob_z)
    rx = _matrix("ref_probs_x", ref_probs_x, tx.size, allow_nan=False)
    rz = _matrix("ref_probs_z", ref_probs_z, tz.size, allow_nan=False)
    if rx.shape[0] != rz.shape[0]:
        raise ValueError(f"ref_probs_x and ref_probs_z need the same K models: {rx.shape[0]} vs {rz.shape[0]}")
    ratio_x = _rmia_log_or_ratio("x", tx, rx, offline_a=offline_a, log_probs=log_probs)
    ratio_z = _rmia_log_or_ratio("z", tz, rz, offline_a=offline_a, log_probs=log_probs)
    # LR(x, z) >= gamma  <=>  ratio_z <= ratio_x / gamma  (ratios > 0), resp. the log-space equivalent.
    threshold = ratio_x - np.log(gamma) if log_probs else ratio_x / gamma
    counts = np.searchsorted(np.sort(ratio_z), threshold, side="right")
    return np.asarray(counts, dtype=np.float64) / tz.size


# --------------------------------------------------------------------------- client level


def client_scores(
    record_scores: npt.ArrayLike, client_ids: npt.ArrayLike, *, reduce: Reduce = "mean"
) -> tuple[npt.NDArray[Any], _F64]:
    """Aggregate record scores ``[n]`` per client ``[n]`` into ``(unique ids sorted, scores)``.

    Client-level membership inference asks whether a *client* (its whole local
    data set) took part in training: the client, not the record, is the unit
    of privacy, matching user-level DP (McMahan et al. 2018, "Learning
    Differentially Private Recurrent Language Models", ICLR). ``reduce`` is
    ``"mean"``, ``"max"`` or ``"median"`` of the client's record scores.
    """
    s = _finite("record_scores", record_scores)
    ids = np.asarray(client_ids)
    if s.ndim != 1 or s.size == 0 or ids.shape != s.shape:
        raise ValueError(f"need non-empty 1-D record_scores and client_ids of equal length, got {s.shape}, {ids.shape}")
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if reduce == "mean":
        out = np.bincount(inverse, weights=s, minlength=unique.size) / counts
    elif reduce == "max":
        out = np.full(unique.size, -np.inf)
        np.maximum.at(out, inverse, s)
    elif reduce == "median":
        grouped = np.split(s[np.argsort(inverse, kind="stable")], np.cumsum(counts)[:-1])
        out = np.array([np.median(g) for g in grouped], dtype=np.float64)
    else:
        raise ValueError(f"reduce must be 'mean', 'max' or 'median', got {reduce!r}")
    return unique, np.asarray(out, dtype=np.float64)
