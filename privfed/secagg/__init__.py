"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) as sans-IO state machines."""

from privfed.secagg.client import SecAggClient
from privfed.secagg.crypto import KeyedRandom, MaskAccumulator, prg_words, system_random
from privfed.secagg.driver import DropoutPlan, SecAggOutcome, run_secagg_round
from privfed.secagg.graph import neighbour_graph, recommended_degree
from privfed.secagg.server import SecAggAborted, SecAggServer

__all__ = [
    "DropoutPlan",
    "KeyedRandom",
    "MaskAccumulator",
    "SecAggAborted",
    "SecAggClient",
    "SecAggOutcome",
    "SecAggServer",
    "neighbour_graph",
    "prg_words",
    "recommended_degree",
    "run_secagg_round",
    "system_random",
]
