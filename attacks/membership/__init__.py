"""Membership inference: scores from per-example statistics (higher = more likely a member)."""

from attacks.membership.exposure import (
    ExposureRecord,
    SecretExposure,
    SecretSharerSettings,
    exposure,
    log_perplexities,
    run_exposure,
)
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
from attacks.membership.shadow import (
    LocalModelTransport,
    MembershipSettings,
    Variant,
    balanced_keep,
    keep_half,
    per_example_log_likelihoods,
    run_membership,
    score_targets,
)

__all__ = [
    "ExposureRecord",
    "LocalModelTransport",
    "MembershipSettings",
    "SecretExposure",
    "SecretSharerSettings",
    "Variant",
    "balanced_keep",
    "client_scores",
    "exposure",
    "keep_half",
    "lira_offline",
    "lira_online",
    "log_perplexities",
    "logit_confidence",
    "logit_confidence_from_logits",
    "loss_score",
    "per_example_log_likelihoods",
    "reference_score",
    "rmia_scores",
    "run_exposure",
    "run_membership",
    "score_targets",
]
