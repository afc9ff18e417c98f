"""privfed's ``ServerApp`` for the Flower Deployment Engine (``flwr run``).

Run config (``[tool.flwr.app.config]``, override with ``flwr run --run-config``):

* ``config``: path of the privfed experiment config (TOML) on the SuperLink's machine,
  relative to the SuperLink's working directory unless absolute.
* ``out-dir``: the run directory to create (``metrics.jsonl``, ``summary.json``, ``adapter/``).
* ``resume``: continue the run in ``out-dir`` from its last checkpoint.
* ``startup-timeout``: seconds to wait for ``partition.num_clients`` SuperNodes.
* ``warm-up``: have every node build the experiment (model, data, trainer) in the opening
  exchange (default true): a long-lived ClientApp worker (``python -m
  privfed.transport.flower.supernode``) then keeps it, so round 1 does not pay for it. With
  Flower's default per-message ClientApp processes it is one extra build per node; set false.
* ``observers``: client ids (``"0,3"``, or one integer) whose nodes are shown every round's
  global model, also in rounds they are not sampled in (an auditor's canaries:
  ``privfed audit --deployment``; :mod:`privfed.transport.flower.grid`). Default: none.

The ServerApp waits for one SuperNode per client (each with ``partition-id`` in its
``--node-config``), then runs privfed's runner with ``transport.kind =
"flower-deployment"``: every exchange of a round goes over the Grid.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from privfed.config import load_config, replace_path
from privfed.errors import ConfigError
from privfed.transport.flower.grid import GridExchanger, serving_grid
from privfed.transport.flower.latency import cap_grid_object_pulls

__all__ = ["app", "parse_observers"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from privfed.experiments.runner import run_experiment

    cap_grid_object_pulls()  # a reply's parts: retried after 10 ms, not 1 s (privfed.transport.flower.latency)
    run_config = context.run_config
    config_path, out_dir = str(run_config.get("config", "")), str(run_config.get("out-dir", ""))
    if not config_path or not out_dir:
        raise ConfigError(
            "the privfed ServerApp needs run config 'config' (a privfed TOML file) and 'out-dir'; got "
            f"config={config_path!r}, out-dir={out_dir!r} (flwr run --run-config \"config='...' out-dir='...'\")"
        )
    config = replace_path(load_config(config_path), "transport.kind", "flower-deployment")
    exchanger = GridExchanger(
        grid,
        config=config,
        reply_timeout=config.transport.reply_timeout,
        warm_up=bool(run_config.get("warm-up", True)),
        observers=parse_observers(run_config.get("observers", ""), num_clients=config.partition.num_clients),
    )
    exchanger.discover(
        num_clients=config.partition.num_clients, timeout=float(run_config.get("startup-timeout", 600.0))
    )
    with serving_grid(exchanger):
        if bool(run_config.get("resume", False)) and (Path(out_dir) / "checkpoint.safetensors").exists():
            from privfed.experiments.runner import resume_experiment

            summary = resume_experiment(out_dir, quiet=True)
        else:
            summary = run_experiment(config, out_dir, quiet=True)
    print(
        f"privfed: run {config.name!r} finished: {summary['rounds']} rounds in {out_dir} "
        f"(adapter in {Path(out_dir) / 'adapter'})",
        flush=True,
    )


def parse_observers(value: object, *, num_clients: int) -> tuple[int, ...]:
    """The ``observers`` run config: ``""`` (none), a client id, or ids separated by commas.

    Raises:
        ConfigError: anything else, or an id outside ``0..num_clients - 1``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        parts = [str(value)]
    elif isinstance(value, str):
        parts = [p.strip() for p in value.split(",")] if value.strip() else []
    else:
        parts = ["?"]
    if not all(p.isascii() and p.isdigit() and int(p) < num_clients for p in parts):
        raise ConfigError(
            f"run config 'observers' must be client ids in 0..{num_clients - 1} separated by commas "
            f"(partition.num_clients = {num_clients}); got {value!r}"
        )
    return tuple(sorted({int(p) for p in parts}))
