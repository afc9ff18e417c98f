"""privfed on Flower's Simulation and Deployment Engines: cost over in process, and its SecAgg+ against Flower's.

    python benchmarks/flower.py [--quick]

Prints one JSON object. The Simulation Engine parts run in this process (Ray backend, one
1-CPU actor per core); the deployment part starts local Flower processes on 127.0.0.1.

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
  ``secaggplus_mod`` (client), the Flower App ``benchmarks/flower_secaggplus_app`` (its
  ClientApp and rounds), in a second Flower simulation with the same number of
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

* ``deployment`` (:func:`deployment_rounds`): the same config on a local Deployment Engine
  (a SuperLink and one SuperNode per client on 127.0.0.1, privfed's SuperNodes with their
  long-lived ClientApp workers, ``flwr run examples/flower_app``) against the same config run
  in process: ``overhead_vs_inprocess_deployment`` (plain rounds after the first) and
  ``startup_seconds_deployment`` (the ``flwr run``'s time outside its rounds); then the SecAgg+
  config, and Flower's own SecAgg+ (``flwr run benchmarks/flower_secaggplus_app``, the same
  parameters as on the Simulation Engine) on the same SuperNodes. ``--nodes flower`` uses plain
  ``flower-supernode`` instead (a ClientApp process per message) for both apps
  (``baseline_supernode``); ``--deployment-only`` skips the Simulation Engine parts.
* ``secagg_overhead_vs_flower_secaggplus_deployment``: privfed's SecAgg+ extra seconds on the
  deployment (``secagg_extra_seconds_deployment``: SecAgg+ round − plain round) divided by
  Flower's (``flower_secaggplus_extra_seconds_deployment``), both apps on the same SuperNodes and
  both grids pulling replies every 20 ms, like for like; ``..._flower_grid_waits``: Flower's
  deployment grid as it ships, sleeping 3 s between pulls (flwr 1.42, not configurable).

``--quick``: tiny-bert, 4 clients, Simulation Engine parts only (under a minute);
``--quick --deployment-only``: the deployment part on tiny-bert, 4 SuperNodes (about 3 minutes
on 2 shared cores); the full run: all parts, MiniLM with LoRA r = 11 (d = 103,301), 5 clients
per round.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "flower_secaggplus_app"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import interleaved, machine

_BASELINE_APP = Path(__file__).resolve().parent / "flower_secaggplus_app"  # Flower's own SecAgg+
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
    """Seconds per plain FedAvg round and per SecAggPlusWorkflow round of Flower itself, same simulation.

    The ClientApp and the rounds are the deployment baseline's (``flower_secaggplus_app``), here in
    ``run_simulation`` with one virtual node per client and one 1-CPU actor per core.
    """
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation
    from secaggplus_baseline.app import Baseline, make_client_app, run_rounds, summarize

    baseline = Baseline(
        d=d,
        clients=clients,
        bits=bits,
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        clip=clip,
        rounds_per_kind=repeats + 1,
        short_poll=_PRIVFED_POLL,
    )
    samples: dict[str, list[float]] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        samples.update(run_rounds(grid, context, baseline))

    logging.getLogger("flwr").setLevel(logging.WARNING)
    started = time.perf_counter()
    run_simulation(
        server_app=server_app,
        client_app=make_client_app(d),
        num_supernodes=clients,
        backend_name="ray",
        backend_config={
            "client_resources": {"num_cpus": 1.0, "num_gpus": 0.0},
            "init_args": {"num_cpus": len(os.sched_getaffinity(0)), "num_gpus": 0},
        },
    )
    total = time.perf_counter() - started
    return {**baseline.describe(), **summarize(samples), "simulation_seconds_total": total}


def deployment_rounds(
    raw: dict[str, Any], *, rounds: int, nodes: str = "privfed", secagg: bool = True
) -> dict[str, Any]:
    """Seconds per round of ``raw`` (plain, then SecAgg+) on a local Deployment Engine and in process.

    A SuperLink (``--insecure``) and one SuperNode per client on 127.0.0.1, then ``flwr run
    examples/flower_app`` on it with the plain config and (``secagg``) again with SecAgg+, each
    ``rounds`` rounds; every process with one torch thread (``OMP_NUM_THREADS=1``: 4 nodes share
    the cores); the in-process reference runs the same configs with ``transport.kind =
    "simulation"`` (one torch thread, as in :func:`privfed_rounds`). Seconds per round are
    ``metrics.jsonl``'s ``seconds`` (the whole round: exchanges, aggregation, evaluation),
    medians over the rounds after the first. ``startup_seconds_deployment`` = the plain ``flwr
    run``'s wall time minus its rounds' seconds (ServerApp start, model build, the nodes'
    opening exchange, the final save); ``daemons_start_seconds``: SuperLink and SuperNodes up
    and registered. ``nodes``: ``"privfed"`` (``python -m privfed.transport.flower.supernode``:
    one long-lived ClientApp worker per node, 50 ms polling) or ``"flower"`` (plain
    ``flower-supernode``: a fresh ClientApp process per message, 3 s idle polling).

    With ``secagg``, Flower's own SecAgg+ runs last on the same SuperNodes
    (:func:`_flower_secaggplus_deployment`, ``rounds`` rounds of each kind), and the result holds
    ``secagg_extra_seconds_deployment``, ``flower_secaggplus_extra_seconds_deployment`` and
    ``secagg_overhead_vs_flower_secaggplus_deployment`` (module docstring).
    """
    import tempfile

    import torch

    from privfed.config import config_from_dict, dump_config
    from privfed.experiments.runner import run_experiment
    from privfed.transport.flower.local import LocalDeployment, default_app_dir

    n = int(raw["partition"]["num_clients"])
    configs = {
        name: config_from_dict(
            {
                **raw,
                "server": {**raw["server"], "rounds": rounds},
                "secagg": {**raw["secagg"], "enabled": name == "secagg"},
                "transport": {"kind": "simulation", "reply_timeout": 300.0},
            }
        )
        for name in (("plain", "secagg") if secagg else ("plain",))
    }
    result: dict[str, Any] = {"nodes": nodes, "rounds": rounds, "num_supernodes": n}
    per_round: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="privfed-flower-bench-") as tmp_name:
        tmp = Path(tmp_name)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, config in configs.items():
                run_experiment(config, tmp / f"inprocess_{name}", quiet=True)
                records = [
                    json.loads(x) for x in (tmp / f"inprocess_{name}" / "metrics.jsonl").read_text().splitlines()
                ]
                per_round[f"{name}_inprocess"] = [float(r["seconds"]) for r in records]
        finally:
            torch.set_num_threads(threads)

        started = time.perf_counter()
        with LocalDeployment(
            tmp,
            num_nodes=n,
            env={"OMP_NUM_THREADS": "1"},  # every process with one torch thread
            supernode="flower" if nodes == "flower" else "privfed",
            process_timeout=7200,
            startup_timeout=120,
        ) as deployment:
            result["daemons_start_seconds"] = time.perf_counter() - started
            for name, config in configs.items():
                config_path, out = tmp / f"{name}.toml", tmp / f"deployment_{name}"
                config_path.write_text(dump_config(config))
                began = time.perf_counter()
                run = deployment.run_app(
                    default_app_dir(), {"config": str(config_path), "out-dir": str(out)}, timeout=1800, check=False
                )
                wall = time.perf_counter() - began
                if not (out / "summary.json").exists():
                    raise RuntimeError(f"flwr run ({name}) wrote no summary: {run.output()[-3000:]}")
                records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
                if any(r["num_clients"] != n for r in records):
                    raise RuntimeError(f"a deployment round ({name}) aggregated fewer than {n} clients: {records}")
                per_round[f"{name}_deployment"] = [float(r["seconds"]) for r in records]
                result[f"flwr_run_seconds_{name}"] = wall
                result[f"startup_seconds_deployment_{name}"] = wall - sum(per_round[f"{name}_deployment"])
            if secagg:
                dim = int(json.loads((tmp / "deployment_plain" / "summary.json").read_text())["trainable_params"])
                result["baseline_supernode"] = nodes
                result["flower_secaggplus"] = _flower_secaggplus_deployment(
                    deployment, configs["secagg"].secagg, d=dim, clients=n, rounds=rounds
                )
    seconds = {name: statistics.median(values[1:]) for name, values in per_round.items()}
    result["seconds_per_round"] = seconds
    result["first_round_seconds"] = {name: values[0] for name, values in per_round.items()}
    result["startup_seconds_deployment"] = result["startup_seconds_deployment_plain"]
    result["overhead_vs_inprocess_deployment"] = seconds["plain_deployment"] / seconds["plain_inprocess"]
    if secagg:
        result["overhead_vs_inprocess_deployment_secagg"] = seconds["secagg_deployment"] / seconds["secagg_inprocess"]
        ours = seconds["secagg_deployment"] - seconds["plain_deployment"]
        theirs = result["flower_secaggplus"]
        result["secagg_extra_seconds_deployment"] = ours
        result["flower_secaggplus_extra_seconds_deployment"] = theirs["secagg_extra_seconds_polling_like_privfed"]
        result["flower_secaggplus_extra_seconds_deployment_flower_grid_waits"] = theirs["secagg_extra_seconds"]
        result["secagg_overhead_vs_flower_secaggplus_deployment"] = (
            ours / theirs["secagg_extra_seconds_polling_like_privfed"]
        )
        result["secagg_overhead_vs_flower_secaggplus_deployment_flower_grid_waits"] = (
            ours / theirs["secagg_extra_seconds"]
        )
    return result


def _flower_secaggplus_deployment(deployment: Any, secagg: Any, *, d: int, clients: int, rounds: int) -> dict[str, Any]:
    """Flower's own SecAgg+ baseline (``flower_secaggplus_app``) on ``deployment``'s SuperNodes, ``rounds`` per kind.

    The same parameters as the Simulation Engine baseline (:func:`flower_secaggplus_rounds`), from
    privfed's SecAgg+ config ``secagg`` for a cohort of ``clients``.
    """
    from secaggplus_baseline.app import Baseline, parse_result, summarize

    baseline = Baseline(
        d=d,
        clients=clients,
        bits=secagg.bits,
        num_shares=secagg.resolved_degree(clients) + 1,
        reconstruction_threshold=secagg.resolved_threshold(clients),
        clip=secagg.clip,
        rounds_per_kind=rounds,
        short_poll=_PRIVFED_POLL,
    )
    began = time.perf_counter()
    run = deployment.run_app(
        _BASELINE_APP, baseline.run_config(), name="flwr-run-secaggplus", timeout=1800, check=False
    )
    wall = time.perf_counter() - began
    try:
        parsed = parse_result(run.output())
        summary = summarize(parsed["samples"])
    except ValueError as exc:
        raise RuntimeError(f"Flower's SecAgg+ baseline on the deployment: {exc}; {run.output()[-3000:]}") from None
    return {
        **baseline.describe(),
        **summary,
        "samples": parsed["samples"],
        "grid_wait_seconds": 3.0,  # flwr 1.42's deployment grid: send_and_receive sleeps 3 s between pulls
        "object_pulls_capped": parsed.get("object_pulls_capped"),
        "flwr_run_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny-bert, 4 clients, 3 repeats, Simulation Engine only (< 1 minute; with --deployment-only: "
        "the deployment part only, about 3 minutes)",
    )
    parser.add_argument(
        "--nodes",
        choices=("privfed", "flower"),
        default="privfed",
        help="SuperNodes of the deployment: privfed's (long-lived ClientApp worker, 50 ms polling; "
        "default) or plain flower-supernode (a ClientApp process per message)",
    )
    parser.add_argument("--deployment-only", action="store_true", help="only the Deployment Engine part")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    repeats = 3 if args.quick else 7
    started = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "flower", "quick": args.quick, "machine": machine(), "repeats": repeats}
    report["load_average_at_start"] = os.getloadavg()[0]  # other work on these cores skews every figure
    if args.quick and not args.deployment_only:
        # Starting a SuperLink, 4 SuperNodes and a ServerApp (each importing torch) takes about a
        # minute on 2 shared cores: the quick smoke check of the deployment is its own run.
        report["deployment"] = "not run with --quick alone: run --quick --deployment-only (about 2 minutes)"
    else:
        deployment = deployment_rounds(_raw_config(quick=args.quick), rounds=repeats + 1, nodes=args.nodes, secagg=True)
        report["deployment"] = deployment
        report["overhead_vs_inprocess_deployment"] = deployment["overhead_vs_inprocess_deployment"]
        report["startup_seconds_deployment"] = deployment["startup_seconds_deployment"]
        for key in (
            "baseline_supernode",
            "secagg_extra_seconds_deployment",
            "flower_secaggplus_extra_seconds_deployment",
            "secagg_overhead_vs_flower_secaggplus_deployment",
            "secagg_overhead_vs_flower_secaggplus_deployment_flower_grid_waits",
        ):
            report[key] = deployment[key]
    if args.deployment_only:
        report["load_average_at_end"] = os.getloadavg()[0]
        report["seconds_total"] = time.perf_counter() - started
        print(json.dumps(report, indent=2))
        return
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
