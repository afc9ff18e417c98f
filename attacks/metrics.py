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
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MembershipMetrics",
    "TokenRecovery",
    "check_scores",
    "membership_metrics",
    "plot_roc",
    "psnr",
    "roc_curve",
    "rouge_scores",
    "ssim",
    "token_recovery",
    "tpr_at_fpr",
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


def tpr_at_fpr(scores: npt.ArrayLike, is_member: npt.ArrayLike, fpr_target: float) -> float:
    """Largest TPR whose FPR does not exceed ``fpr_target`` (no interpolation).

    With ``n`` non-members the smallest non-zero FPR is ``1/n``; a target
    below that is answered by thresholds that admit no non-member at all.
    """
    if not 0.0 <= fpr_target <= 1.0:
        raise ValueError("fpr_target must lie in [0, 1]")
    fpr, tpr = roc_curve(scores, is_member)
    return float(tpr[fpr <= fpr_target + 1e-12].max())


@dataclasses.dataclass(frozen=True)
class MembershipMetrics:
    """Summary of a membership test; ``tpr_at_*`` are at most that FPR."""

    auc: float
    tpr_at_0_1pct_fpr: float
    tpr_at_1pct_fpr: float
    balanced_accuracy: float
    num_members: int
    num_nonmembers: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON keys as the result files use them (``tpr_at_0.1pct_fpr``)."""
        return {
            "auc": self.auc,
            "tpr_at_0.1pct_fpr": self.tpr_at_0_1pct_fpr,
            "tpr_at_1pct_fpr": self.tpr_at_1pct_fpr,
            "balanced_accuracy": self.balanced_accuracy,
            "num_members": self.num_members,
            "num_nonmembers": self.num_nonmembers,
        }


def membership_metrics(scores: npt.ArrayLike, is_member: npt.ArrayLike) -> MembershipMetrics:
    """AUC, TPR at 0.1% and 1% FPR, and the best balanced accuracy over thresholds."""
    from sklearn.metrics import roc_auc_score

    s, m = check_scores(scores, is_member)
    fpr, tpr = roc_curve(s, m)
    return MembershipMetrics(
        auc=float(roc_auc_score(m, s)),
        tpr_at_0_1pct_fpr=float(tpr[fpr <= 0.001 + 1e-12].max()),
        tpr_at_1pct_fpr=float(tpr[fpr <= 0.01 + 1e-12].max()),
        balanced_accuracy=float(np.max((tpr + 1.0 - fpr) / 2.0)),
        num_members=int(m.sum()),
        num_nonmembers=int((~m).sum()),
    )


def plot_roc(curves: Mapping[str, tuple[npt.ArrayLike, npt.ArrayLike]], path: str | Path, *, title: str = "") -> Path:
    """Log-log ROC plot (the low-FPR regime is what matters), one line per ``label: (scores, is_member)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    floor = 1.0
    for label, (scores, members) in curves.items():
        fpr, tpr = roc_curve(scores, members)
        n_out = int((~np.asarray(members, dtype=bool)).sum())
        floor = min(floor, 1.0 / max(n_out, 1))
        ax.plot(np.maximum(fpr, 1e-6), np.maximum(tpr, 1e-6), label=label)
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(floor / 2, 1.05)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
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


def psnr(reference: npt.ArrayLike, reconstruction: npt.ArrayLike) -> float:
    """Mean peak signal-to-noise ratio in dB over a batch of images in [0, 1] (scikit-image).

    Reconstructions are clipped to [0, 1] first; an exact match counts as 100 dB.
    """
    from skimage.metrics import peak_signal_noise_ratio

    ref = _as_image_batch(reference)
    rec = np.clip(_as_image_batch(reconstruction), 0.0, 1.0)
    if ref.shape != rec.shape:
        raise ValueError(f"shape mismatch {ref.shape} vs {rec.shape}")
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

    ref = _as_image_batch(reference)
    rec = np.clip(_as_image_batch(reconstruction), 0.0, 1.0)
    if ref.shape != rec.shape:
        raise ValueError(f"shape mismatch {ref.shape} vs {rec.shape}")
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
