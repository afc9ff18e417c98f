"""``transport.kind = "flower-simulation"``: every exchange runs on Flower's Simulation Engine (Ray).

The transport starts Flower's in-process simulation in a background thread, with
``partition.num_clients`` virtual SuperNodes running privfed's ClientApp
(:mod:`privfed.transport.flower.client_app`) and a ServerApp whose main loop serves
this transport's exchange requests from a queue, so privfed's runner keeps control
of the rounds. Construction returns once every node has built its client and
stated its client id (Ray start-up and model loading happen there, not in round 1).
:meth:`FlowerSimulationTransport.close` ends the ServerApp, which stops the
simulation and shuts Ray down.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from privfed.config import ExperimentConfig
from privfed.errors import ProtocolError
from privfed.transport.base import Exchange
from privfed.transport.flower.grid import GridExchanger

__all__ = ["FlowerSimulationTransport"]

_STARTUP_SECONDS = 600.0


class FlowerSimulationTransport:
    """Exchanges over Flower's Simulation Engine with the Ray backend.

    Args:
        config: the experiment config (``transport.reply_timeout``, ``transport.num_cpus``,
            ``transport.num_gpus`` per client; ``partition.num_clients`` virtual nodes).
        ray_init_args: passed to ``ray.init`` (default: as many CPUs as this process may use).
        startup_timeout: seconds to wait for every node to build its client.
    """

    def __init__(
        self,
        *,
        config: ExperimentConfig,
        ray_init_args: Mapping[str, Any] | None = None,
        startup_timeout: float = _STARTUP_SECONDS,
    ) -> None:
        self.config = config
        self._requests: queue.Queue[tuple[Mapping[int, bytes], int, str, Callable[[int], None] | None] | None] = (
            queue.Queue()
        )
        self._responses: queue.Queue[Exchange | BaseException] = queue.Queue()
        self._error: BaseException | None = None
        self._closed = False
        self._exchanger: GridExchanger | None = None
        init_args = {"num_cpus": len(os.sched_getaffinity(0)), "num_gpus": 0}
        init_args.update(ray_init_args or {})
        self._backend_config = {
            "client_resources": {
                "num_cpus": config.transport.num_cpus,
                "num_gpus": config.transport.num_gpus,
            },
            "init_args": init_args,
        }
        started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="privfed-flower-simulation", daemon=True)
        self._thread.start()
        ready = self._wait(startup_timeout, what="start-up (Ray, and every node building its client)")
        if isinstance(ready, BaseException):
            self.close()
            raise ProtocolError(f"Flower simulation did not start: {type(ready).__name__}: {ready}") from ready
        self.startup_seconds = time.perf_counter() - started

    # --- the ServerApp side (background thread) ------------------------------------------
    def _server_main(self, grid: Grid, context: Context) -> None:
        exchanger = GridExchanger(
            grid, config=self.config, reply_timeout=self.config.transport.reply_timeout, warm_up=True
        )
        self._exchanger = exchanger
        try:
            exchanger.discover(num_clients=self.config.partition.num_clients, timeout=_STARTUP_SECONDS)
        except BaseException as exc:
            self._responses.put(exc)
            return
        self._responses.put(Exchange(replies=(), bytes_down=0, bytes_up=0))  # ready
        while (request := self._requests.get()) is not None:
            messages, round, stage, on_reply = request
            try:
                self._responses.put(exchanger.exchange(messages, round=round, stage=stage, on_reply=on_reply))
            except BaseException as exc:
                self._responses.put(exc)

    def _run(self) -> None:
        from flwr.simulation import run_simulation

        from privfed.transport.flower.client_app import app as client_app

        server_app = ServerApp()
        server_app.main()(self._server_main)
        logging.getLogger("flwr").setLevel(logging.WARNING)
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=self.config.partition.num_clients,
                backend_name="ray",
                backend_config=self._backend_config,  # type: ignore[arg-type]
            )
        except BaseException as exc:
            self._error = exc
            self._responses.put(exc)

    def _wait(self, timeout: float, *, what: str) -> Exchange | BaseException:
        end = time.monotonic() + timeout
        while True:
            try:
                return self._responses.get(timeout=0.5)
            except queue.Empty:
                if not self._thread.is_alive():
                    return self._error or ProtocolError("the Flower simulation ended")
                if time.monotonic() >= end:
                    return ProtocolError(f"Flower simulation: no answer within {timeout:g} s ({what})")

    # --- the Transport -------------------------------------------------------------------
    def exchange(
        self,
        messages: Mapping[int, bytes],
        *,
        round: int,
        stage: str,
        on_reply: Callable[[int], None] | None = None,
    ) -> Exchange:
        if self._closed:
            raise ProtocolError("the Flower simulation transport is closed")
        self._requests.put((messages, round, stage, on_reply))
        result = self._wait(self.config.transport.reply_timeout + 60.0, what=f"round {round} stage {stage}")
        if isinstance(result, BaseException):
            raise ProtocolError(f"Flower simulation failed in round {round} ({stage}): {result}") from result
        return result

    def client_record_epsilon_max(self) -> float | None:
        """The largest record-level epsilon any virtual node has reported (``None``: none reported one)."""
        if self._exchanger is None:
            return None
        return max(self._exchanger.record_epsilon.values(), default=None)

    def close(self, timeout: float = 60.0) -> None:
        """End the ServerApp; the simulation then stops its actors and shuts Ray down."""
        if self._closed:
            return
        self._closed = True
        self._requests.put(None)
        self._thread.join(timeout)
