"""Privacy audits: empirical epsilon lower bounds and estimates (pure functions over attack outputs).

``attacks.audit.bounds`` holds the one-run audit of Steinke, Nasr & Jagielski (NeurIPS 2023), the Gaussian
mechanism's privacy profile (Balle & Wang 2018), and the one-shot federated estimate of Andrew et al. (ICLR 2024).
"""

from attacks.audit.bounds import (
    OneShotEstimate,
    best_one_run_bound,
    canary_cosines,
    canary_directions,
    gaussian_mechanism_delta,
    gaussian_mechanism_epsilon,
    gaussian_pair_delta,
    gaussian_pair_epsilon,
    one_run_epsilon_lower_bound,
    one_run_guesses,
    one_run_p_value,
    one_shot_epsilon,
)

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
