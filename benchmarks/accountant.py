"""Cost of the privacy ledger's per-round accounting, against Opacus' RDP accountant in the same run.

    python benchmarks/accountant.py [--quick]

A record-level DP run asks the ledger, every round, whether each client of
the cohort would stay within budget and then for the largest epsilon spent:
two RDP evaluations per client per round. This replays that bookkeeping for
``clients`` clients over ``rounds`` rounds (sigma 1.0, q 0.1, 1 step per
round, delta 1e-5) twice: through privfed's ledger (whose RDP path computes
each (sigma, q)'s per-step RDP once) and by asking a fresh Opacus
``RDPAccountant`` the same questions. Prints one JSON object with seconds for
both, ``speedup_vs_opacus`` (Opacus' time / ours) and the largest relative
difference of the two epsilons (they must agree).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ledger_rounds(clients: int, rounds: int) -> tuple[float, list[float]]:
    from privfed.privacy import PrivacyLedger, SampledGaussianEvent

    ledger = PrivacyLedger(delta=1e-5, accountant="rdp", sample_budget=1e9)
    answers = []
    start = time.perf_counter()
    for r in range(rounds):
        planned = [
            SampledGaussianEvent(noise_multiplier=1.0, sample_rate=0.1, steps=1, scope="sample", subject=c, round=r)
            for c in range(clients)
        ]
        ledger.check(planned)
        ledger.record(planned)
        answers.append(ledger.epsilon_sample_max())
    return time.perf_counter() - start, answers


def _opacus_rounds(clients: int, rounds: int) -> tuple[float, list[float]]:
    from opacus.accountants import RDPAccountant

    answers = []
    start = time.perf_counter()
    for r in range(rounds):
        for _ in range(clients):  # the budget check: epsilon after this round
            accountant = RDPAccountant()
            accountant.history = [(1.0, 0.1, r + 1)]
            accountant.get_epsilon(delta=1e-5)
        spent = []
        for _ in range(clients):  # the largest epsilon spent
            accountant = RDPAccountant()
            accountant.history = [(1.0, 0.1, r + 1)]
            spent.append(accountant.get_epsilon(delta=1e-5))
        answers.append(max(spent))
    return time.perf_counter() - start, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (< 1 minute)")
    args = parser.parse_args()
    from _common import machine

    clients, rounds = (10, 10) if args.quick else (10, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, ours_eps = _ledger_rounds(clients, rounds)
        theirs, theirs_eps = _opacus_rounds(clients, rounds)
    report: dict[str, Any] = {
        "benchmark": "accountant",
        "quick": args.quick,
        "machine": machine(),
        "clients": clients,
        "rounds": rounds,
        "ledger_seconds": ours,
        "opacus_rdp_seconds": theirs,
        "speedup_vs_opacus": theirs / ours,
        "max_relative_epsilon_difference": max(abs(a - b) / b for a, b in zip(ours_eps, theirs_eps, strict=True)),
        "final_epsilon": ours_eps[-1],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
