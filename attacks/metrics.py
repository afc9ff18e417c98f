"""Attack metrics: membership ROC/TPR at low FPR, image and token recovery.

Maintained implementations do the numerics: scikit-learn for ROC curves,
scikit-image for PSNR/SSIM, Google's ``rouge-score`` for ROUGE. This module
only fixes conventions (higher score = "member"; images in [0, 1]).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

__all__ = [
    "FPR_TARGETS",
    "MembershipMetrics",
    "MembershipMetricsRecord",
    "TokenRecovery",
    "check_scores",
    "clopper_pearson",
    "format_tpr",
    "fpr_resolvable",
    "load_scores",
    "membership_metrics",
    "min_resolvable_fpr",
    "plot_roc",
    "psnr",
    "roc_curve",
    "rouge_scores",
    "save_scores",
    "ssim",
    "token_recovery",
    "tpr_at_fpr",
    "tpr_with_interval",
    "upgrade_tpr_fields",
]


_F64 = npt.NDArray[np.float64]


def check_scores(
    scores: npt.ArrayLike, labels: npt.ArrayLike, *, what: str = "membership", need_both: bool = True
) -> tuple[_F64, npt.NDArray[np.bool_]]:
    """Validate a (scores, binary labels) pair: equal lengths, finite scores, labels bool or 0/1.

    ``need_both``: require at least one positive and one negative label (an ROC needs both).
    ``what`` names the pair in error messages. Returns float64 scores and bool labels, flattened.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    raw = np.asarray(labels).reshape(-1)
    if s.shape != raw.shape:
        raise ValueError(f"{what} scores ({s.size}) and labels ({raw.size}) differ in length")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{what} scores must be finite")
    if not np.all((raw == 0) | (raw == 1)):
        raise ValueError(f"{what} labels must be boolean or 0/1")
    m = raw.astype(bool)
    if need_both and (m.all() or not m.any()):
        raise ValueError("need at least one member and one non-member")
    return s, m


def roc_curve(scores: npt.ArrayLike, is_member: npt.ArrayLike) -> tuple[_F64, _F64]:
    """(fpr, tpr) of the threshold test "score >= t means member" (scikit-learn)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    s, m = check_scores(scores, is_member)
    fpr, tpr, _ = sk_roc_curve(m, s, drop_intermediate=False)
    return np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)


FPR_TARGETS: tuple[float, ...] = (0.001, 0.01)
"""The FPRs every membership summary reports a TPR at (0.1% and 1%)."""

# An FPR target counts as resolvable when it is at least 1/num_nonmembers up to this slack (1/1000 vs 0.001).
_FPR_SLACK = 1e-12


def min_resolvable_fpr(num_nonmembers: int) -> float:
    """The smallest non-zero FPR ``num_nonmembers`` negatives can measure: ``1 / num_nonmembers``."""
    if isinstance(num_nonmembers, bool) or int(num_nonmembers) != num_nonmembers or num_nonmembers < 1:
        raise ValueError(f"num_nonmembers must be an integer >= 1; got {num_nonmembers!r}")
    return 1.0 / int(num_nonmembers)


def fpr_resolvable(fpr_target: float, num_nonmembers: int) -> bool:
    """Whether ``num_nonmembers`` negatives can measure an FPR of ``fpr_target`` (``fpr_target >= 1/n``)."""
    return float(fpr_target) + _FPR_SLACK >= min_resolvable_fpr(num_nonmembers)


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial proportion ``successes / trials``.

    ``[B(alpha/2; k, n-k+1), B(1-alpha/2; k+1, n-k)]`` with ``B`` the beta quantile (Clopper & Pearson
    1934), ``alpha = 1 - confidence``; the lower end is 0 at ``k = 0`` and the upper end 1 at ``k = n``.
    Coverage is at least ``confidence`` for every true proportion.
    """
    from scipy.stats import beta

    k, n = int(successes), int(trials)
    if k != successes or n != trials or n < 1 or not 0 <= k <= n:
        raise ValueError(f"need integers 0 <= successes <= trials, trials >= 1; got {successes!r} of {trials!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    alpha = 1.0 - float(confidence)
    low = 0.0 if k == 0 else float(beta.ppf(alpha / 2.0, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return low, high


def tpr_with_interval(
    tpr: float | None, *, fpr_target: float, num_members: int, num_nonmembers: int, confidence: float = 0.95
) -> tuple[float | None, tuple[float, float] | None]:
    """``(tpr, Clopper-Pearson interval)`` at ``fpr_target``, or ``(None, None)`` if the FPR is not resolvable.

    ``tpr`` is a measured ``k / num_members`` (``None`` allowed when unresolvable); the interval is over the
    members' detection rate at the chosen threshold. Also turns a TPR stored in an old result file, where a
    figure below ``1 / num_nonmembers`` was still written as a number, into today's form.
    """
    if not fpr_resolvable(fpr_target, num_nonmembers):
        return None, None
    if tpr is None:
        raise ValueError(f"TPR at FPR {fpr_target} is resolvable with {num_nonmembers} non-members but missing")
    hits = round(float(tpr) * num_members)
    if abs(hits / num_members - float(tpr)) > 1e-9:
        raise ValueError(f"TPR {tpr!r} is not a count out of {num_members} members")
    return hits / num_members, clopper_pearson(hits, num_members, confidence=confidence)


def tpr_at_fpr(scores: npt.ArrayLike, is_member: npt.ArrayLike, fpr_target: float) -> float | None:
    """Largest TPR whose FPR does not exceed ``fpr_target`` (no interpolation); ``None`` if not measurable.

    With ``n`` non-members the smallest non-zero FPR is ``1/n``; a target below it cannot be told apart
    from 0 (a TPR "at 0.1% FPR" from 233 non-members is the TPR at no false positive at all), so the answer
    is ``None`` and callers report ``min_resolvable_fpr(n)`` beside it.
    """
    if not 0.0 <= fpr_target <= 1.0:
        raise ValueError("fpr_target must lie in [0, 1]")
    s, m = check_scores(scores, is_member)
    if not fpr_resolvable(fpr_target, int((~m).sum())):
        return None
    fpr, tpr = roc_curve(s, m)
    return float(tpr[fpr <= fpr_target + _FPR_SLACK].max())


def _pct(fpr: float) -> str:
    return f"{100 * fpr:g}pct"


MembershipMetricsRecord = TypedDict(
    "MembershipMetricsRecord",
    {
        "auc": float,
        "tpr_at_0.1pct_fpr": float | None,
        "tpr_at_0.1pct_fpr_ci95": list[float] | None,
        "tpr_at_1pct_fpr": float | None,
        "tpr_at_1pct_fpr_ci95": list[float] | None,
        "min_resolvable_fpr": float,
        "balanced_accuracy": float,
        "num_members": int,
        "num_nonmembers": int,
    },
)
""":meth:`MembershipMetrics.to_dict`: the keys result files use, in this order (a TPR and its
``[low, high]`` interval are ``None`` at an FPR below ``min_resolvable_fpr``). Functional syntax:
``tpr_at_0.1pct_fpr`` is not an identifier."""


@dataclasses.dataclass(frozen=True)
class MembershipMetrics:
    """Summary of a membership test.

    ``tpr_at_*`` are the largest TPR at at most that FPR, ``None`` when the FPR is below
    ``min_resolvable_fpr = 1 / num_nonmembers``; ``*_ci95`` their 95% Clopper-Pearson intervals over the
    members (``None`` with them).
    """

    auc: float
    tpr_at_0_1pct_fpr: float | None
    tpr_at_1pct_fpr: float | None
    balanced_accuracy: float
    num_members: int
    num_nonmembers: int
    tpr_at_0_1pct_fpr_ci95: tuple[float, float] | None = None
    tpr_at_1pct_fpr_ci95: tuple[float, float] | None = None

    @property
    def min_resolvable_fpr(self) -> float:
        """``1 / num_nonmembers``: no TPR is reported at a lower FPR."""
        return min_resolvable_fpr(self.num_nonmembers)

    def to_dict(self) -> MembershipMetricsRecord:
        """JSON keys as the result files use them (``tpr_at_0.1pct_fpr``, ``tpr_at_0.1pct_fpr_ci95``)."""

        def ci(value: tuple[float, float] | None) -> list[float] | None:
            return None if value is None else [value[0], value[1]]

        return {
            "auc": self.auc,
            "tpr_at_0.1pct_fpr": self.tpr_at_0_1pct_fpr,
            "tpr_at_0.1pct_fpr_ci95": ci(self.tpr_at_0_1pct_fpr_ci95),
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "tpr_at_1pct_fpr_ci95": ci(self.tpr_at_1pct_fpr_ci95),
            "min_resolvable_fpr": self.min_resolvable_fpr,
            "balanced_accuracy": self.balanced_accuracy,
            "num_members": self.num_members,
            "num_nonmembers": self.num_nonmembers,
        }


def membership_metrics(scores: npt.ArrayLike, is_member: npt.ArrayLike) -> MembershipMetrics:
    """AUC, TPR at 0.1% and 1% FPR with 95% Clopper-Pearson intervals, and the best balanced accuracy.

    A TPR at an FPR below ``1 / num_nonmembers`` is ``None`` (see ``tpr_at_fpr``).
    """
    from sklearn.metrics import roc_auc_score

    s, m = check_scores(scores, is_member)
    fpr, tpr = roc_curve(s, m)
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    at: dict[float, tuple[float | None, tuple[float, float] | None]] = {}
    for target in FPR_TARGETS:
        value = float(tpr[fpr <= target + _FPR_SLACK].max())
        at[target] = tpr_with_interval(value, fpr_target=target, num_members=n_pos, num_nonmembers=n_neg)
    return MembershipMetrics(
        auc=float(roc_auc_score(m, s)),
        tpr_at_0_1pct_fpr=at[0.001][0],
        tpr_at_1pct_fpr=at[0.01][0],
        balanced_accuracy=float(np.max((tpr + 1.0 - fpr) / 2.0)),
        num_members=n_pos,
        num_nonmembers=n_neg,
        tpr_at_0_1pct_fpr_ci95=at[0.001][1],
        tpr_at_1pct_fpr_ci95=at[0.01][1],
    )


def upgrade_tpr_fields(
    record: Mapping[str, Any], *, prefix: str = "", counts_prefix: str | None = None
) -> dict[str, Any]:
    """A copy of ``record`` whose ``<prefix>tpr_at_*`` follow today's rule (old result files).

    Old files wrote a number for a TPR at an FPR below ``1 / num_nonmembers``; this sets it to ``None`` and
    puts ``<prefix>tpr_at_*_ci95`` after each TPR and ``<prefix>min_resolvable_fpr`` after the last, derived
    from the stored TPR (a count out of ``<counts_prefix>num_members``) and the counts, never from anything
    else. ``counts_prefix`` defaults to ``prefix``. Idempotent.
    """
    cp = prefix if counts_prefix is None else counts_prefix
    n_pos, n_neg = int(record[f"{cp}num_members"]), int(record[f"{cp}num_nonmembers"])
    new: dict[str, Any] = {}
    for target in FPR_TARGETS:
        key = f"{prefix}tpr_at_{_pct(target)}_fpr"
        value, interval = tpr_with_interval(record[key], fpr_target=target, num_members=n_pos, num_nonmembers=n_neg)
        new[key] = value
        new[f"{key}_ci95"] = None if interval is None else [interval[0], interval[1]]
    last = f"{prefix}tpr_at_{_pct(FPR_TARGETS[-1])}_fpr"
    new[f"{prefix}min_resolvable_fpr"] = min_resolvable_fpr(n_neg)
    # Rebuild in order: each TPR where it stood, its interval right after it, the resolution after the last.
    ordered: dict[str, Any] = {}
    for key, value in record.items():
        if key in new and not key.endswith(("_ci95", "min_resolvable_fpr")):
            ordered[key] = new[key]
            ordered[f"{key}_ci95"] = new[f"{key}_ci95"]
            if key == last:
                ordered[f"{prefix}min_resolvable_fpr"] = new[f"{prefix}min_resolvable_fpr"]
        elif key not in new:
            ordered[key] = value
    return ordered


def format_tpr(value: float | None, *, digits: int = 3, num_nonmembers: int | None = None) -> str:
    """A TPR table cell: the number, or ``n/a (FPR >= 1/n)`` when it is not resolvable."""
    if value is None:
        return "n/a" if num_nonmembers is None else f"n/a (min FPR 1/{num_nonmembers})"
    return f"{value:.{digits}f}"


def plot_roc(curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], path: str | Path, *, title: str = "") -> Path:
    """Log-log ROC plot (the low-FPR regime is what matters), one line per ``label: (scores, is_member)``,
    with the chance diagonal; written as PNG (the path returned), PDF and SVG in privfed's plot style."""
    from privfed.plotting import figure, place_legend, roc_axes, save

    fig, ax = figure(width=5.0, height=3.4)
    floor = 1.0
    for label, (scores, members) in curves.items():
        fpr, tpr = roc_curve(scores, members)
        n_out = int((~np.asarray(members, dtype=bool)).sum())
        floor = min(floor, 1.0 / max(n_out, 1))
        ax.plot(np.maximum(fpr, 1e-6), np.maximum(tpr, 1e-6), label=label)
    roc_axes(ax, floor=floor)
    if title:
        ax.set_title(title)
    place_legend(ax)
    out = Path(path)
    save(fig, out)
    return out


def _as_image_batch(images: npt.ArrayLike) -> npt.NDArray[np.float64]:
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError("images must be [H,W], [C,H,W] or [N,C,H,W]")
    return a


def _image_pair(reference: npt.ArrayLike, reconstruction: npt.ArrayLike) -> tuple[_F64, _F64]:
    """Both as image batches of one shape, the reconstruction clipped to [0, 1]."""
    ref = _as_image_batch(reference)
    rec = np.clip(_as_image_batch(reconstruction), 0.0, 1.0)
    if ref.shape != rec.shape:
        raise ValueError(f"shape mismatch {ref.shape} vs {rec.shape}")
    return ref, rec


def psnr(reference: npt.ArrayLike, reconstruction: npt.ArrayLike) -> float:
    """Mean peak signal-to-noise ratio in dB over a batch of images in [0, 1] (scikit-image).

    Reconstructions are clipped to [0, 1] first; an exact match counts as 100 dB.
    """
    from skimage.metrics import peak_signal_noise_ratio

    ref, rec = _image_pair(reference, reconstruction)
    values = []
    for a, b in zip(ref, rec, strict=True):
        if np.array_equal(a, b):
            values.append(100.0)
        else:
            db = peak_signal_noise_ratio(a, b, data_range=1.0)  # type: ignore[no-untyped-call]
            values.append(min(100.0, float(db)))
    return float(np.mean(values))


def ssim(reference: npt.ArrayLike, reconstruction: npt.ArrayLike) -> float:
    """Mean structural similarity over a batch of [C,H,W] images in [0, 1] (scikit-image).

    Uses a 7x7 window, or the largest odd window that fits small images (8x8 digits: 7).
    """
    from skimage.metrics import structural_similarity

    ref, rec = _image_pair(reference, reconstruction)
    side = min(ref.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    values = [
        float(structural_similarity(a, b, data_range=1.0, channel_axis=0, win_size=win))  # type: ignore[no-untyped-call]
        for a, b in zip(ref, rec, strict=True)
    ]
    return float(np.mean(values))


@dataclasses.dataclass(frozen=True)
class TokenRecovery:
    """Multiset precision/recall/F1 of recovered token ids against the true ones."""

    precision: float
    recall: float
    f1: float


def token_recovery(true_tokens: Sequence[int], recovered_tokens: Sequence[int]) -> TokenRecovery:
    """Bag-of-tokens precision, recall and F1 (multiset intersection, as in DAGER's token metrics)."""
    truth = Counter(int(t) for t in true_tokens)
    guess = Counter(int(t) for t in recovered_tokens)
    hit = sum((truth & guess).values())
    precision = hit / sum(guess.values()) if guess else 0.0
    recall = hit / sum(truth.values()) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return TokenRecovery(precision=precision, recall=recall, f1=f1)


def rouge_scores(references: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1 and ROUGE-2 F-measure (``rouge1``, ``rouge2``) via Google's rouge-score."""
    from rouge_score import rouge_scorer

    if len(references) != len(predictions):
        raise ValueError("need one prediction per reference")
    if not references:
        return {"rouge1": 0.0, "rouge2": 0.0}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2"], use_stemmer=False)
    totals: dict[str, Any] = {"rouge1": 0.0, "rouge2": 0.0}
    for ref, pred in zip(references, predictions, strict=True):
        result = scorer.score(ref, pred)
        totals["rouge1"] += result["rouge1"].fmeasure
        totals["rouge2"] += result["rouge2"].fmeasure
    return {k: float(v) / len(references) for k, v in totals.items()}


def save_scores(path: str | Path, views: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]]) -> Path:
    """Write the scores behind reported AUC/TPR figures, one ``(scores, labels)`` pair per named view.

    A plain ``.npz`` (no pickled objects), written atomically: ``views`` (the names, a unicode array) and
    ``scores_<i>`` (float64), ``labels_<i>`` (bool) for the i-th name. ``load_scores`` reads it back, and
    ``membership_metrics`` on each view recomputes the reported figures exactly.
    """
    import io

    from privfed.experiments import atomic_write_bytes

    names = list(views)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ValueError(f"need at least one view, each named by a non-empty string; got {names!r}")
    arrays: dict[str, npt.NDArray[Any]] = {"views": np.asarray(names, dtype=np.str_)}
    for i, name in enumerate(names):
        s, m = check_scores(*views[name], what=name, need_both=False)
        arrays[f"scores_{i}"], arrays[f"labels_{i}"] = s, m
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    out = Path(path)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def load_scores(path: str | Path) -> dict[str, tuple[_F64, npt.NDArray[np.bool_]]]:
    """``{view: (scores, labels)}`` from a file ``save_scores`` wrote (pickled objects are refused)."""
    with np.load(Path(path), allow_pickle=False) as saved:
        names = [str(n) for n in saved["views"]]
        return {
            name: (
                np.asarray(saved[f"scores_{i}"], dtype=np.float64),
                np.asarray(saved[f"labels_{i}"], dtype=bool),
            )
            for i, name in enumerate(names)
        }
