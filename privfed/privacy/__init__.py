"""Differential privacy: events, accountants, calibration, ledger, central and distributed DP-FedAvg, noise, DP-SGD."""

from privfed.privacy.accountants import accountant_names, compute_epsilon, register_accountant
from privfed.privacy.calibrate import calibrate_noise_multiplier
from privfed.privacy.discrete import discrete_gaussian, skellam
from privfed.privacy.distributed import DistributedNoisePlan, distributed_plan
from privfed.privacy.dpfedavg import AdaptiveClipping, DPFedAvgServer, clip_to_norm, delta_noise_multiplier
from privfed.privacy.events import (
    DistributedNoiseEvent,
    DistributedNoiseEventJSON,
    SampledGaussianEvent,
    SampledGaussianEventJSON,
)
from privfed.privacy.ledger import PrivacyLedger
from privfed.privacy.noise import SecureNoise, SeededNoise, make_noise

__all__ = [
    "AdaptiveClipping",
    "DPFedAvgServer",
    "DistributedNoiseEvent",
    "DistributedNoiseEventJSON",
    "DistributedNoisePlan",
    "PrivacyLedger",
    "SampledGaussianEvent",
    "SampledGaussianEventJSON",
    "SecureNoise",
    "SeededNoise",
    "accountant_names",
    "calibrate_noise_multiplier",
    "clip_to_norm",
    "compute_epsilon",
    "delta_noise_multiplier",
    "discrete_gaussian",
    "distributed_plan",
    "make_noise",
    "register_accountant",
    "skellam",
]
