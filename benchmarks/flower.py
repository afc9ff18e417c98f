"""privfed on Flower's Simulation Engine: its cost over the in-process simulation, and its SecAgg+ against Flower's.

    python benchmarks/flower.py [--quick]

Prints one JSON object. Everything runs in this process on Flower's Simulation Engine
(Ray backend, one 1-CPU actor per core); nothing goes over a network.

* ``privfed``: one :class:`~privfed.server.server.FederatedServer` round of a tiny
  federated LoRA run (real local training, one step), plain and with SecAgg+, over the
  in-process simulation transport and over ``transport.kind = "flower-simulation"``
  (one Flower simulation serves every round). Seconds per round are medians over the
  rounds after the first (plain and SecAgg+ rounds alternate, so load drifts hit both alike;
  the in-process rounds run before Ray starts, as an in-process user runs them);
  Ray start-up and model loading are reported apart (``startup_seconds_flower_simulation``).
  ``overhead_vs_inprocess`` = flower-simulation seconds / in-process seconds for the plain
  round (``overhead_vs_inprocess_secagg`` for the SecAgg+ round).
* ``flower_secaggplus``: Flower 1.42's own ``SecAggPlusWorkflow`` (server) with
  ``secaggplus_mod`` (client), in a second Flower simulation with the same number of
  virtual nodes and actors, cohort, vector length ``d`` (privfed's adapter dimension),
  modulus ``2**secagg.bits``, number of shares (privfed's SecAgg+ degree + 1) and
  reconstruction threshold. Its clients do not train: each returns a fixed random
  ``float32[d]``. Plain rounds (``default_fit_workflow``) alternate with SecAgg+ rounds, each
  with Flower's own pull interval (0.1 s, ``seconds_per_round``) and with privfed's (20 ms,
  ``seconds_per_round_polling_like_privfed``): Flower's rounds are mostly that waiting.
* ``secagg_overhead_vs_flower_secaggplus``: the extra seconds a SecAgg+ round costs over
  a plain round on the Simulation Engine, privfed's (its protocol over
  ``flower-simulation``) divided by Flower's (the issue's definition: training and
  transport cost cancel in each difference; ``..._polling_like_privfed``: Flower's grid
  pulling every 20 ms as privfed's does). ``secagg_round_vs_flower_secaggplus`` is
  the plain ratio of seconds per SecAgg+ round (privfed's includes one local training step).

``--quick``: tiny-bert, 4 clients (under a minute); the full run: MiniLM with LoRA r = 11
(d = 103,301), 5 clients per round.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, machine

_PRIVFED_POLL = 0.02  # privfed.transport.flower.grid._POLL_SECONDS


def _raw_config(*, quick: bool) -> dict[str, Any]:
    clients = 4 if quick else 5
    model = {"name": "tiny-bert", "max_length": 32} if quick else {"name": "minilm", "max_length": 32}
    raw: dict[str, Any] = {
        "name": "flower-benchmark",
        "seed": 0,
        "model": model,
        "data": {"name": "bbc_news", "max_train_examples": 40 * clients, "max_eval_examples": 10},
        "partition": {"method": "iid", "num_clients": clients},
        "client": {"local_steps": 1, "batch_size": 8},
        "server": {"clients_per_round": clients, "weighting": "uniform"},
        "secagg": {"clip": 0.5},
        "transport": {"kind": "flower-simulation", "reply_timeout": 300.0, "num_cpus": 1.0},
    }
    if not quick:
        raw["adapter"] = {"lora": {"rank": 11}}  # LoRA r=11 on query,value + head: d = 103,301 (as secagg.py)
    return raw


def privfed_rounds(raw: dict[str, Any], *, repeats: int) -> dict[str, Any]:
    """Seconds per plain and SecAgg+ round, in process and on Flower's Simulation Engine."""
    from privfed.client.node import ClientNode
    from privfed.config import config_from_dict
    from privfed.experiments import build_experiment
    from privfed.experiments.runner import _prepare_privacy
    from privfed.server.server import FederatedServer
    from privfed.server.strategies import make_strategy
    from privfed.transport.flower.simulation import FlowerSimulationTransport
    from privfed.transport.simulation import SimulationTransport

    config = config_from_dict(raw)
    exp = build_experiment(config)
    trainer = _prepare_privacy(exp).trainer  # as privfed's ClientApp builds it on every Flower node
    nodes = [ClientNode(client_id=i, trainer=trainer, data=d, seed=config.seed) for i, d in enumerate(exp.client_data)]
    n = config.partition.num_clients
    counter = iter(range(1, 100_000))  # one increasing round number: a node refuses to re-run a secure round

    def rounds_over(transport: Any, name: str) -> dict[str, Callable[[], Any]]:
        rounds: dict[str, Callable[[], Any]] = {}
        for secure in (False, True):
            cfg = config_from_dict({**raw, "secagg": {**raw["secagg"], "enabled": secure}})
            server = FederatedServer(
                layout=exp.layout,
                global_vector=exp.initial_vector,
                strategy=make_strategy(cfg.server),
                num_clients=n,
                clients_per_round=n,
                seed=0,
                weighting="uniform",
                secagg=cfg.secagg,
            )

            def one_round(server: FederatedServer = server) -> None:
                result = server.run_round(next(counter), transport)
                if result.num_clients != n:
                    raise RuntimeError(f"a benchmark round aggregated {result.num_clients} of {n} clients")

            rounds[f"{'secagg' if secure else 'plain'}_{name}"] = one_round
        return rounds

    # In process first, before Ray starts, and with one torch thread, as each 1-CPU Ray actor trains
    # (Ray sets OMP_NUM_THREADS=1): on two shared, oversubscribed cores, two spinning OpenMP threads
    # made in-process rounds 2-30x slower and erratic (0.1-1.0 s for the quick round at 2 threads,
    # 0.05-0.1 s at 1), which would flatter the Simulation Engine.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seconds = interleaved(rounds_over(SimulationTransport(nodes=nodes), "inprocess"), repeats=repeats)
    finally:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    flower = FlowerSimulationTransport(config=config)
    startup = time.perf_counter() - started
    try:
        seconds.update(interleaved(rounds_over(flower, "flower_simulation"), repeats=repeats))
    finally:
        flower.close()
    secagg = config_from_dict({**raw, "secagg": {**raw["secagg"], "enabled": True}}).secagg
    return {
        "model": config.model.name,
        "d": exp.layout.dim,
        "clients_per_round": n,
        "bits": secagg.bits,
        "degree": secagg.resolved_degree(n),
        "threshold": secagg.resolved_threshold(n),
        "clip": secagg.clip,
        "local_steps": config.client.local_steps,
        "torch_threads_in_process": 1,
        "startup_seconds_flower_simulation": startup,
        "seconds_per_round": seconds,
        "overhead_vs_inprocess": seconds["plain_flower_simulation"] / seconds["plain_inprocess"],
        "overhead_vs_inprocess_secagg": seconds["secagg_flower_simulation"] / seconds["secagg_inprocess"],
        "secagg_extra_seconds_flower_simulation": seconds["secagg_flower_simulation"]
        - seconds["plain_flower_simulation"],
    }


def flower_secaggplus_rounds(
    *, d: int, clients: int, bits: int, num_shares: int, threshold: int, clip: float, repeats: int
) -> dict[str, Any]:
    """Seconds per plain FedAvg round and per SecAggPlusWorkflow round of Flower itself, same simulation."""
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server import LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow
    from flwr.simulation import run_simulation

    update = np.random.default_rng(0).normal(0, 0.01, d).astype(np.float32)

    class FixedUpdate(NumPyClient):
        def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:  # type: ignore[type-arg]
            return [update], 20, {}

    def secagg_when_asked(msg: Any, context: Any, call_next: Any) -> Any:
        # secaggplus_mod handles every "train" message; the plain rounds' messages skip it
        if RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, context, call_next)
        return call_next(msg, context)

    client_app = ClientApp(client_fn=lambda context: FixedUpdate().to_client(), mods=[secagg_when_asked])
    secure = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        clipping_range=clip,
        quantization_range=2**bits // clients,  # a full cohort's sum fits the modulus, as privfed's codec
        modulus_range=2**bits,
    )
    # Flower's workflows wait with grid.send_and_receive, which pulls every grid.pull_interval
    # (0.1 s in simulation); privfed's exchanger pulls every 20 ms. Both are measured.
    kinds = [("plain", 0.1), ("secagg", 0.1), ("plain", _PRIVFED_POLL), ("secagg", _PRIVFED_POLL)]
    samples: dict[tuple[str, float], list[float]] = {kind: [] for kind in kinds}
    calls = iter(range(100_000))

    def alternate(grid: Any, context: Any) -> None:
        kind = kinds[next(calls) % len(kinds)]
        grid.pull_interval = kind[1]
        started = time.perf_counter()
        (secure if kind[0] == "secagg" else default_fit_workflow)(grid, context)
        samples[kind].append(time.perf_counter() - started)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(d, np.float32)]),
        )
        legacy = LegacyContext(
            context=context, config=ServerConfig(num_rounds=len(kinds) * (repeats + 1)), strategy=strategy
        )
        DefaultWorkflow(fit_workflow=alternate)(grid, legacy)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=clients,
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {"num_cpus": len(os.sched_getaffinity(0)), "num_gpus": 0},
        },
    )
    total = time.perf_counter() - started
    if min(len(values) for values in samples.values()) < repeats + 1:
        raise RuntimeError(f"Flower's simulation ran {sum(map(len, samples.values()))} rounds of {4 * (repeats + 1)}")
    median = {kind: statistics.median(values[1:]) for kind, values in samples.items()}  # after the first
    seconds = {name: median[(name, 0.1)] for name in ("plain", "secagg")}
    same_poll = {name: median[(name, _PRIVFED_POLL)] for name in ("plain", "secagg")}
    return {
        "d": d,
        "clients_per_round": clients,
        "modulus_range": 2**bits,
        "quantization_range": 2**bits // clients,
        "num_shares": num_shares,
        "reconstruction_threshold": threshold,
        "local_training": False,
        "seconds_per_round": seconds,
        "seconds_per_round_polling_like_privfed": same_poll,
        "first_round_seconds": {name: samples[(name, 0.1)][0] for name in ("plain", "secagg")},
        "simulation_seconds_total": total,
        "secagg_extra_seconds": seconds["secagg"] - seconds["plain"],
        "secagg_extra_seconds_polling_like_privfed": same_poll["secagg"] - same_poll["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny-bert, 4 clients, 3 repeats (< 1 minute)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    repeats = 3 if args.quick else 7
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "flower", "quick": args.quick, "machine": machine(), "repeats": repeats}
    report["load_average_at_start"] = os.getloadavg()[0]  # other work on these cores skews every figure
    ours = privfed_rounds(_raw_config(quick=args.quick), repeats=repeats)
    report["privfed"] = ours
    report["overhead_vs_inprocess"] = ours["overhead_vs_inprocess"]
    try:
        theirs = flower_secaggplus_rounds(
            d=ours["d"],
            clients=ours["clients_per_round"],
            bits=ours["bits"],
            num_shares=ours["degree"] + 1,
            threshold=ours["threshold"],
            clip=ours["clip"],
            repeats=repeats,
        )
    except Exception as exc:  # say exactly why Flower's SecAgg+ could not run here
        report["flower_secaggplus"] = {"error": f"{type(exc).__name__}: {exc}"}
        report["secagg_overhead_vs_flower_secaggplus"] = None
    else:
        report["flower_secaggplus"] = theirs
        report["secagg_overhead_vs_flower_secaggplus"] = (
            ours["secagg_extra_seconds_flower_simulation"] / theirs["secagg_extra_seconds"]
        )
        report["secagg_overhead_vs_flower_secaggplus_polling_like_privfed"] = (
            ours["secagg_extra_seconds_flower_simulation"] / theirs["secagg_extra_seconds_polling_like_privfed"]
        )
        report["secagg_round_vs_flower_secaggplus"] = (
            ours["seconds_per_round"]["secagg_flower_simulation"] / theirs["seconds_per_round"]["secagg"]
        )
    report["load_average_at_end"] = os.getloadavg()[0]
    report["seconds_total"] = time.perf_counter() - started
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
