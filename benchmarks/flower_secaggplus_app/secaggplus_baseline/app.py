"""Flower's own SecAgg+ (``SecAggPlusWorkflow`` + ``secaggplus_mod``) against plain rounds, each timed.

The baseline of ``benchmarks/flower.py``, on either engine:

* Deployment Engine: ``flwr run benchmarks/flower_secaggplus_app`` with the run config of
  :meth:`Baseline.run_config` (``[tool.flwr.app.config]``). The ServerApp prints one line,
  :data:`RESULT_MARKER` followed by a JSON object (the baseline's parameters and every round's
  seconds by kind); :func:`parse_result` reads it back from the ``flwr run --stream`` output.
* Simulation Engine: ``benchmarks/flower.py`` builds the same ClientApp (:func:`make_client_app`)
  and runs the same rounds (:func:`run_rounds`) in ``flwr.simulation.run_simulation``.

Each client returns a fixed ``float32[d]`` (no training). Plain rounds (Flower's
``default_fit_workflow``) and SecAgg+ rounds alternate, each once with the grid's own wait between
reply pulls (0.1 s in simulation, 3 s on the deployment grid) and once pulling every
``short_poll`` seconds (20 ms, as privfed's grid exchanger), so load drifts hit every kind alike.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.server import ServerApp

#: Prefix of the ServerApp's result line (then one JSON object on the same line).
RESULT_MARKER = "FLOWER_SECAGGPLUS_ROUNDS "
#: Round kinds in the order they alternate: (name, pulls every ``short_poll`` s instead of the grid's wait).
KINDS = (("plain", False), ("secagg", False), ("plain_short_poll", True), ("secagg_short_poll", True))


@dataclass(frozen=True)
class Baseline:
    """What Flower's SecAgg+ baseline runs: sizes as privfed's run, Flower's SecAgg+ parameters.

    Attributes:
        d: length of each client's update (``float32[d]``; privfed's adapter dimension).
        clients: the cohort; every round samples all of them.
        bits: ``modulus_range = 2**bits``; ``quantization_range = 2**bits // clients`` (a full
            cohort's sum fits the modulus, as privfed's codec).
        num_shares: ``SecAggPlusWorkflow(num_shares=...)`` (privfed's SecAgg+ degree + 1).
        reconstruction_threshold: ``SecAggPlusWorkflow(reconstruction_threshold=...)``.
        clip: ``SecAggPlusWorkflow(clipping_range=...)``.
        rounds_per_kind: rounds of each of :data:`KINDS` (medians are over those after the first).
        short_poll: seconds between reply pulls in the ``*_short_poll`` rounds.
    """

    d: int
    clients: int
    bits: int
    num_shares: int
    reconstruction_threshold: int
    clip: float
    rounds_per_kind: int
    short_poll: float = 0.02

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> Baseline:
        """From ``[tool.flwr.app.config]`` keys (``num-shares``, ...), as :meth:`run_config` writes them."""
        return cls(
            d=int(run_config["d"]),
            clients=int(run_config["clients"]),
            bits=int(run_config["bits"]),
            num_shares=int(run_config["num-shares"]),
            reconstruction_threshold=int(run_config["reconstruction-threshold"]),
            clip=float(run_config["clip"]),
            rounds_per_kind=int(run_config["rounds-per-kind"]),
            short_poll=float(run_config["short-poll"]),
        )

    def run_config(self) -> dict[str, int | float]:
        """The ``flwr run --run-config`` values for this baseline."""
        return {key.replace("_", "-"): value for key, value in asdict(self).items()}

    def describe(self) -> dict[str, Any]:
        """The parameters as the benchmark's JSON reports them."""
        return {
            "d": self.d,
            "clients_per_round": self.clients,
            "modulus_range": 2**self.bits,
            "quantization_range": 2**self.bits // self.clients,
            "num_shares": self.num_shares,
            "reconstruction_threshold": self.reconstruction_threshold,
            "local_training": False,
            "short_poll_seconds": self.short_poll,
        }


@functools.cache
def fixed_update(d: int) -> np.ndarray:
    """Every client's update: ``float32[d]``, N(0, 0.01²), the same on every node (seed 0)."""
    return np.random.default_rng(0).normal(0, 0.01, d).astype(np.float32)


class FixedUpdate(NumPyClient):
    """A client that does not train: ``fit`` returns :func:`fixed_update` with 20 examples."""

    def __init__(self, update: np.ndarray) -> None:
        self.update = update

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        return [self.update], 20, {}


def secagg_when_asked(msg: Any, context: Any, call_next: Any) -> Any:
    """``secaggplus_mod`` for the SecAgg+ rounds' messages; the plain rounds' messages skip it."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def make_client_app(d: int | None = None) -> ClientApp:
    """The baseline's ClientApp: ``float32[d]`` (``d`` given, else the run config's ``d``)."""

    def client_fn(context: Any) -> Any:
        size = d if d is not None else int(context.run_config["d"])
        return FixedUpdate(fixed_update(size)).to_client()

    return ClientApp(client_fn=client_fn, mods=[secagg_when_asked])


def _send_and_receive_every(grid: Any, seconds: float, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
    """Flower's ``Grid.send_and_receive`` (push, then pull until every reply is in), pulling every ``seconds``."""
    pending = set(grid.push_messages(messages))
    end = time.time() + (timeout if timeout is not None else 0.0)
    replies: list[Any] = []
    while timeout is None or time.time() < end:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(msg.metadata.reply_to_message_id for msg in got)
        if not pending:
            break
        time.sleep(seconds)
    return replies


def poll_every(grid: Any, seconds: float | None) -> None:
    """Make ``grid.send_and_receive`` pull every ``seconds`` (``None``: the grid's own wait again)."""
    if seconds is None:
        vars(grid).pop("send_and_receive", None)
    else:
        grid.send_and_receive = functools.partial(_send_and_receive_every, grid, seconds)


def run_rounds(grid: Any, context: Any, baseline: Baseline) -> dict[str, list[float]]:
    """Run ``rounds_per_kind`` rounds of each of :data:`KINDS`, alternating; seconds of each round by kind."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.default_workflows import default_fit_workflow

    secure = SecAggPlusWorkflow(
        num_shares=baseline.num_shares,
        reconstruction_threshold=baseline.reconstruction_threshold,
        clipping_range=baseline.clip,
        quantization_range=2**baseline.bits // baseline.clients,
        modulus_range=2**baseline.bits,
    )
    samples: dict[str, list[float]] = {name: [] for name, _ in KINDS}
    calls = iter(range(1_000_000))

    def alternate(grid: Any, context: Any) -> None:
        name, short = KINDS[next(calls) % len(KINDS)]
        poll_every(grid, baseline.short_poll if short else None)
        started = time.perf_counter()
        (secure if name.startswith("secagg") else default_fit_workflow)(grid, context)
        samples[name].append(time.perf_counter() - started)

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=baseline.clients,
        min_available_clients=baseline.clients,
        initial_parameters=ndarrays_to_parameters([np.zeros(baseline.d, np.float32)]),
    )
    rounds = len(KINDS) * baseline.rounds_per_kind
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=alternate)(grid, legacy)
    poll_every(grid, None)
    return samples


def summarize(samples: Mapping[str, list[float]]) -> dict[str, Any]:
    """Medians over the rounds after the first, and the SecAgg+ extra seconds, from :func:`run_rounds`'s samples.

    Raises:
        ValueError: a kind missing or with fewer than two rounds.
    """
    if short := {name: len(samples.get(name, [])) for name, _ in KINDS if len(samples.get(name, [])) < 2}:
        raise ValueError(f"Flower's SecAgg+ baseline needs at least 2 rounds of each kind; got {short}")
    median = {name: statistics.median(samples[name][1:]) for name, _ in KINDS}
    seconds = {"plain": median["plain"], "secagg": median["secagg"]}
    same_poll = {"plain": median["plain_short_poll"], "secagg": median["secagg_short_poll"]}
    return {
        "seconds_per_round": seconds,
        "seconds_per_round_polling_like_privfed": same_poll,
        "first_round_seconds": {"plain": samples["plain"][0], "secagg": samples["secagg"][0]},
        "secagg_extra_seconds": seconds["secagg"] - seconds["plain"],
        "secagg_extra_seconds_polling_like_privfed": same_poll["secagg"] - same_poll["plain"],
    }


def parse_result(output: str) -> dict[str, Any]:
    """The last result line's JSON object (``baseline`` and ``samples``) in a ``flwr run`` output.

    Raises:
        ValueError: no result line, or one whose JSON does not hold ``samples``.
    """
    at = output.rfind(RESULT_MARKER)
    if at < 0:
        raise ValueError(f"no {RESULT_MARKER.strip()} line in the flwr run output")
    text = output[at + len(RESULT_MARKER) :].lstrip()
    try:
        result, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the {RESULT_MARKER.strip()} line is not one JSON object: {exc}") from None
    if not isinstance(result, dict) or not isinstance(result.get("samples"), dict):
        raise ValueError(f"the {RESULT_MARKER.strip()} line holds no 'samples' object; got {text[:200]!r}")
    return result


client_app = make_client_app()
server_app = ServerApp()


@server_app.main()
def _main(grid: Any, context: Any) -> None:
    baseline = Baseline.from_run_config(context.run_config)
    try:  # as privfed's ServerApp: a reply's parts retried after 10 ms, not 1 s (both apps alike)
        from privfed.transport.flower.latency import cap_grid_object_pulls
    except ImportError:
        capped = False
    else:
        capped = cap_grid_object_pulls()
    samples = run_rounds(grid, context, baseline)
    result = {"baseline": asdict(baseline), "object_pulls_capped": capped, "samples": samples}
    print(RESULT_MARKER + json.dumps(result, separators=(",", ":")), flush=True)
