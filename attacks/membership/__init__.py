"""Membership inference: scores from per-example statistics (higher = more likely a member)."""

from attacks.membership.exposure import SecretSharerSettings, exposure, log_perplexities, run_exposure
from attacks.membership.scores import (
    client_scores,
    lira_offline,
    lira_online,
    logit_confidence,
    logit_confidence_from_logits,
    loss_score,
    reference_score,
    rmia_scores,
)

__all__ = [
    "SecretSharerSettings",
    "client_scores",
    "exposure",
    "lira_offline",
    "lira_online",
    "log_perplexities",
    "logit_confidence",
    "logit_confidence_from_logits",
    "loss_score",
    "reference_score",
    "rmia_scores",
    "run_exposure",
]
