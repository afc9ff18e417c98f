"""A Flower deployment on one machine: a SuperLink and N SuperNodes on 127.0.0.1, then ``flwr run``.

For trying a deployment, tests and benchmarks; a real deployment starts the same
processes on several machines (docs/deploying.md)::

    python -m privfed.transport.flower.local configs/tiny.toml --nodes 4 --out runs/local

From Python::

    with LocalDeployment(work_dir, num_nodes=4) as deployment:
        run = deployment.run_app(APP, {"config": "/abs/experiment.toml", "out-dir": "/abs/run"})

Every process (the SuperLink, each SuperNode, each ``flwr run``) is started in its own
process group (its own session), with its output in ``<work_dir>/logs/<name>.log``, under
coreutils ``timeout`` where it is installed (so a process outlives a killed test or launcher
by at most ``process_timeout`` seconds). Leaving the ``with`` block, also on an exception or
Ctrl-C, sends SIGTERM to every group, then SIGKILL to whatever is left after a short wait.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

from privfed.errors import ConfigError, PrivfedError

__all__ = [
    "CONNECTION",
    "AppRun",
    "LocalDeployment",
    "LocalDeploymentError",
    "TLSCertificates",
    "default_app_dir",
    "free_ports",
    "main",
    "run_config_arg",
]

SupernodeKind = Literal["privfed", "flower"]
#: Name of the SuperLink connection written to ``$FLWR_HOME/config.toml`` (``flwr run APP local``).
CONNECTION = "local"
_STOP_GRACE_SECONDS = 5.0
_PROCESS_MARGIN_SECONDS = 300.0  # the CLI's processes outlive --timeout by this much (start-up, final save)
_POLL_SECONDS = 0.2


class LocalDeploymentError(PrivfedError, RuntimeError):
    """A local deployment's process failed to start, exited with an error or ran past its time."""


@dataclass(frozen=True)
class TLSCertificates:
    """The SuperLink's TLS files (PEM); SuperNodes and ``flwr`` trust ``ca_certfile``.

    The certificate must name the deployment's ``host`` (``subjectAltName=IP:127.0.0.1``): the nodes dial that.
    """

    ca_certfile: Path
    certfile: Path
    keyfile: Path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 now (bound together, then released)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def default_app_dir() -> Path:
    """privfed's Flower App (``examples/flower_app`` of the source tree)."""
    return Path(__file__).resolve().parents[3] / "examples" / "flower_app"


def run_config_arg(values: Mapping[str, str | bool | int | float]) -> str:
    """``flwr run --run-config`` text for ``values`` (strings quoted, booleans ``true``/``false``).

    Raises:
        ConfigError: a key that is not one word, or a string holding both quote characters.
    """
    parts = []
    for key, value in values.items():
        if not key or any(c.isspace() or c == "=" for c in key):
            raise ConfigError(f"run config key must be one word without '='; got {key!r}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif "'" not in value:
            text = f"'{value}'"
        elif '"' not in value and "\\" not in value:
            text = f'"{value}"'
        else:
            raise ConfigError(f"run config {key!r}: a value holding both ' and \" cannot be passed; got {value!r}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def _flower_command(name: str) -> str:
    """``name`` (a Flower console script) next to this Python, else on ``PATH``."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        raise LocalDeploymentError(
            f"{name} is not installed next to {sys.executable} nor on PATH (pip install 'privfed[flower]')"
        )
    return found


def _tail(path: Path, *, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:]) or "(empty log)"


@dataclass
class AppRun:
    """One ``flwr run`` started by :meth:`LocalDeployment.start_app`; its output is in ``log``."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float

    def poll(self) -> int | None:
        """The exit status, or ``None`` while it runs."""
        return self.process.poll()

    def output(self) -> str:
        """Everything it printed so far (stdout and stderr)."""
        return self.log.read_text(errors="replace")

    def wait(self, *, timeout: float, check: bool = True, echo: TextIO | None = None) -> int:
        """Wait at most ``timeout`` seconds for it to exit; returns its exit status.

        Args:
            timeout: seconds; past them the run is killed and ``LocalDeploymentError`` raised.
            check: raise ``LocalDeploymentError`` on a non-zero exit status.
            echo: copy the run's output to this stream while waiting.
        """
        deadline = time.monotonic() + timeout
        shown = 0
        while True:
            code = self.process.poll()
            if echo is not None:
                with contextlib.suppress(OSError), self.log.open("rb") as f:
                    f.seek(shown)
                    chunk = f.read()
                    shown += len(chunk)
                    echo.write(chunk.decode(errors="replace"))
                    echo.flush()
            if code is not None:
                break
            if time.monotonic() > deadline:
                _stop_groups([self.process])
                raise LocalDeploymentError(
                    f"{self.name} did not finish within {timeout:g} s; read {self.log} (last line: {_tail(self.log)})"
                )
            time.sleep(_POLL_SECONDS)
        if check and code != 0:
            raise LocalDeploymentError(
                f"{self.name} exited with status {code}; read {self.log} (last line: {_tail(self.log)})"
            )
        return code


def _descendants(roots: Sequence[int]) -> list[tuple[int, str]]:
    """Descendants of the processes ``roots`` as (pid, start time) (Linux ``/proc``; elsewhere none)."""
    parent: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent[int(entry.name)] = (int(fields[1]), fields[19])
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in parent.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append((child, parent[child][1]))
            todo.append(child)
    return found


def _signal_if_same(pid: int, start_time: str, sig: int) -> None:
    """``kill(pid, sig)`` unless that pid now belongs to another process (its start time differs)."""
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19] == start_time:
            os.kill(pid, sig)


def _stop_groups(processes: Sequence[subprocess.Popen[bytes]], *, grace: float | None = None) -> None:
    """SIGTERM each process's group, SIGKILL the groups still running after ``grace`` s, then reap.

    Descendants that left the group (the SuperLink starts ``flower-superexec`` and the ServerApp in
    a session of their own) are found first and signalled too.
    """
    running = [p for p in processes if p.poll() is None]
    escaped = _descendants([p.pid for p in running])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        for pid, start_time in escaped:
            _signal_if_same(pid, start_time, sig)
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + (_STOP_GRACE_SECONDS if grace is None else grace)
            while time.monotonic() < deadline and any(p.poll() is None for p in running):
                time.sleep(0.1)
    for proc in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)


class LocalDeployment:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1, stopped on exit (a context manager).

    Node ``k`` is named ``supernodek`` (in :attr:`processes` and its log ``logs/supernodek.log``) and
    gets ``--node-config "partition-id=k ..."``.

    Args:
        work_dir: created if missing; holds ``flwrhome/`` (``FLWR_HOME``, with the connection
            :data:`CONNECTION`), ``logs/``, ``link/`` (the SuperLink's working directory) and
            copies of the apps run.
        num_nodes: SuperNodes to start (0: only the SuperLink; see :meth:`start_supernode`).
        node_env: environment added to node ``k``'s (after ``OMP_NUM_THREADS=1``).
        node_config: text added to node ``k``'s ``--node-config`` after ``partition-id=k``.
        env: environment added to every process's (``os.environ``, ``FLWR_HOME``, ...).
        supernode: ``"privfed"`` (``python -m privfed.transport.flower.supernode``: one long-lived
            ClientApp worker, short polling) or ``"flower"`` (plain ``flower-supernode``).
        tls: the SuperLink's certificates; ``None`` runs everything ``--insecure``.
        process_timeout: seconds any started process may run (coreutils ``timeout``).
        startup_timeout: seconds to wait for the SuperLink's health endpoint.
        host: the name the SuperNodes and ``flwr`` dial the SuperLink by (one its certificate names).

    Raises:
        ConfigError: ``num_nodes`` below 0, a node index out of range, an unknown ``supernode``.
    """

    def __init__(
        self,
        work_dir: str | Path,
        *,
        num_nodes: int,
        node_env: Mapping[int, Mapping[str, str]] | None = None,
        node_config: Mapping[int, str] | None = None,
        env: Mapping[str, str] | None = None,
        supernode: SupernodeKind = "privfed",
        tls: TLSCertificates | None = None,
        process_timeout: float = 600.0,
        startup_timeout: float = 60.0,
        host: str = "127.0.0.1",
    ) -> None:
        if num_nodes < 0:
            raise ConfigError(f"num_nodes must be >= 0; got {num_nodes}")
        for name, mapping in (("node_env", node_env or {}), ("node_config", node_config or {})):
            if bad := [k for k in mapping if not 0 <= k < num_nodes]:
                raise ConfigError(f"{name} names node(s) {bad}, outside 0..{num_nodes - 1}")
        if supernode not in ("privfed", "flower"):
            raise ConfigError(f"supernode must be 'privfed' or 'flower'; got {supernode!r}")
        self.work_dir = Path(work_dir)
        self.num_nodes = num_nodes
        self.supernode: SupernodeKind = supernode
        self.tls = tls
        self.process_timeout = process_timeout
        self.startup_timeout = startup_timeout
        self.host = host
        self._node_env = dict(node_env or {})
        self._node_config = dict(node_config or {})
        self.home = self.work_dir / "flwrhome"
        self.logs = self.work_dir / "logs"
        self.link_port = 0
        bin_dir = str(Path(sys.executable).parent)
        self.env: dict[str, str] = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "COLUMNS": "200",  # Flower's log lines unwrapped
            **(env or {}),
        }
        #: The started processes by name (``superlink``, ``supernode0``, ``flwr-run``, ...).
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._all: list[subprocess.Popen[bytes]] = []

    @property
    def address(self) -> str:
        """The SuperLink's address (``HOST:PORT``) once started."""
        return f"{self.host}:{self.link_port}"

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, wait for its health endpoint, then start the SuperNodes."""
        for folder in (self.home, self.logs, self.work_dir / "link"):
            folder.mkdir(parents=True, exist_ok=True)
        self.link_port, *node_ports = free_ports(1 + self.num_nodes)
        security = (
            "insecure = true" if self.tls is None else f"root-certificates = '{Path(self.tls.ca_certfile).resolve()}'"
        )
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.address}"\n{security}\n'
        )
        link = [_flower_command("flower-superlink"), "--port", str(self.link_port)]
        if self.tls is None:
            link.append("--insecure")
        else:
            link += ["--ssl-ca-certfile", str(self.tls.ca_certfile), "--ssl-certfile", str(self.tls.certfile)]
            link += ["--ssl-keyfile", str(self.tls.keyfile)]
        self.start_process(
            "superlink", [*link, "--disable-runtime-dependency-installation"], cwd=self.work_dir / "link"
        )
        self._wait_for_health()
        for k, port in enumerate(node_ports):
            self.start_supernode(k, port=port)

    def _wait_for_health(self) -> None:
        scheme = "http" if self.tls is None else "https"
        context = None if self.tls is None else ssl.create_default_context(cafile=str(self.tls.ca_certfile))
        link, log = self.processes["superlink"], self.logs / "superlink.log"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{scheme}://{self.address}/health", timeout=2, context=context):
                    return
            except OSError:
                if link.poll() is not None:
                    raise LocalDeploymentError(
                        f"flower-superlink exited with status {link.returncode}; read {log} (last line: {_tail(log)})"
                    ) from None
                if time.monotonic() > deadline:
                    raise LocalDeploymentError(
                        f"flower-superlink not healthy within {self.startup_timeout:g} s; read {log} "
                        f"(last line: {_tail(log)})"
                    ) from None
                time.sleep(_POLL_SECONDS)

    def start_supernode(
        self,
        k: int,
        *,
        port: int | None = None,
        name: str | None = None,
        node_config: str | None = None,
        env: Mapping[str, str] | None = None,
        root_certificates: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one SuperNode with ``partition-id=k`` (named ``name``, default ``supernodek``).

        ``node_config``, ``env`` default to the constructor's for ``k``; ``root_certificates``
        to the deployment's CA (``--insecure`` without TLS); ``port`` (its local API) to a free one.
        """
        if self.supernode == "privfed":
            command = [sys.executable, "-m", "privfed.transport.flower.supernode"]
        else:
            command = [_flower_command("flower-supernode")]
        ca = root_certificates
        if ca is None and self.tls is not None:
            ca = self.tls.ca_certfile
        command += ["--insecure"] if ca is None else ["--root-certificates", str(ca)]
        extra = self._node_config.get(k, "") if node_config is None else node_config
        command += ["--superlink", self.address, "--port", str(port or free_ports(1)[0])]
        command += ["--node-config", f"partition-id={k} {extra}".strip()]
        # one torch thread per node: several nodes share this machine's cores (docs/deploying.md)
        node_env = {"OMP_NUM_THREADS": "1", **(self._node_env.get(k, {}) if env is None else env)}
        return self.start_process(name or f"supernode{k}", command, env=node_env)

    def start_process(
        self, name: str, command: Sequence[str], *, cwd: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own process group, output to ``logs/<name>.log``; stopped on exit."""
        if name in self.processes and self.processes[name].poll() is None:
            raise ConfigError(f"a process named {name!r} is already running in this deployment")
        self.logs.mkdir(parents=True, exist_ok=True)
        bound = shutil.which("timeout")
        wrapper = [bound, "-k", "10", f"{self.process_timeout:g}"] if bound else []
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [*wrapper, *command],
                cwd=cwd or self.work_dir,
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = proc
        self._all.append(proc)
        return proc

    def start_app(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, str | bool | int | float] | None = None,
        *,
        name: str = "flwr-run",
    ) -> AppRun:
        """Start ``flwr run`` of a copy of ``app_dir`` on this deployment (``--stream``); returns at once."""
        source = Path(app_dir)
        if not (source / "pyproject.toml").is_file():
            raise ConfigError(f"Flower App {str(source)!r} has no pyproject.toml")
        app = self.work_dir / "apps" / name
        shutil.rmtree(app, ignore_errors=True)
        shutil.copytree(source, app, ignore=shutil.ignore_patterns("__pycache__"))
        command = [_flower_command("flwr"), "run", str(app), CONNECTION, "--stream"]
        if run_config:
            command += ["--run-config", run_config_arg(run_config)]
        proc = self.start_process(name, command)
        return AppRun(name=name, process=proc, log=self.logs / f"{name}.log", started=time.monotonic())

    def run_app(
        self,
        app_dir: str | Path,
        run_config: Mapping[str, str | bool | int | float] | None = None,
        *,
        name: str = "flwr-run",
        timeout: float | None = None,
        check: bool = True,
        echo: TextIO | None = None,
    ) -> AppRun:
        """:meth:`start_app`, then wait for the run to end (at most ``timeout``, default ``process_timeout`` s).

        Raises:
            LocalDeploymentError: the run ran past ``timeout`` or (``check``) exited with an error;
                the message names its log.
        """
        run = self.start_app(app_dir, run_config, name=name)
        run.wait(timeout=self.process_timeout if timeout is None else timeout, check=check, echo=echo)
        return run

    def stop(self) -> None:
        """Stop every process started here (SIGTERM to its group, SIGKILL after a short wait)."""
        _stop_groups(self._all)


# --- the command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m privfed.transport.flower.local",
        description="Run a privfed experiment on a Flower deployment on this machine: a SuperLink and one "
        "SuperNode per client on 127.0.0.1, then `flwr run examples/flower_app`; every process is stopped "
        "at the end.",
    )
    parser.add_argument("config", type=Path, help="privfed experiment config (TOML)")
    parser.add_argument("--out", type=Path, required=True, help="run directory to create")
    parser.add_argument(
        "--nodes", type=int, help="SuperNodes to start (sets partition.num_clients; default: the config's)"
    )
    parser.add_argument("--rounds", type=int, help="sets server.rounds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument(
        "--supernode",
        choices=("privfed", "flower"),
        default="privfed",
        help="privfed's SuperNode (a long-lived ClientApp worker; default) or plain flower-supernode",
    )
    parser.add_argument("--app", type=Path, default=None, help="the Flower App (default: examples/flower_app)")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and Flower's files (default: OUT.deployment next to OUT)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds the run may take (default 3600)")
    return parser


@dataclass(frozen=True)
class _Plan:
    config: Any
    config_text: str
    out: Path
    work_dir: Path
    app: Path


def _plan(args: argparse.Namespace) -> _Plan:
    """Everything checked before any process starts (one-line typed errors)."""
    from privfed.config import dump_config, load_config
    from privfed.experiments.run_dir import RunDirectory

    if args.nodes is not None and args.nodes < 1:
        raise ConfigError(f"--nodes must be at least 1; got {args.nodes}")
    if args.rounds is not None and args.rounds < 1:
        raise ConfigError(f"--rounds must be at least 1; got {args.rounds}")
    if not args.timeout > 0:
        raise ConfigError(f"--timeout must be > 0 seconds; got {args.timeout}")
    overrides = list(args.set)
    if args.nodes is not None:
        overrides.append(f"partition.num_clients={args.nodes}")
    if args.rounds is not None:
        overrides.append(f"server.rounds={args.rounds}")
    config = load_config(args.config, overrides=overrides)
    out = args.out.resolve()
    RunDirectory(out).check_new()
    work_dir = (args.work_dir or out.with_name(out.name + ".deployment")).resolve()
    if work_dir.exists() and not work_dir.is_dir():
        raise ConfigError(f"--work-dir {str(work_dir)!r} exists and is not a directory")
    app = (args.app or default_app_dir()).resolve()
    if not (app / "pyproject.toml").is_file():
        raise ConfigError(f"--app {str(app)!r} is not a Flower App (no pyproject.toml); pass --app DIR")
    return _Plan(config=config, config_text=dump_config(config), out=out, work_dir=work_dir, app=app)


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM to the launcher: leave the deployment's `with` and stop every process


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2: bad input, nothing started)."""
    args = _parser().parse_args(argv)
    try:
        plan = _plan(args)
    except PrivfedError as exc:
        print(f"privfed local: error: {exc}", file=sys.stderr)
        return 2
    nodes = plan.config.partition.num_clients
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    config_path = plan.work_dir / "experiment.toml"
    config_path.write_text(plan.config_text)
    run_config: dict[str, str | bool | int | float] = {"config": str(config_path), "out-dir": str(plan.out)}
    if args.supernode == "flower":
        run_config["warm-up"] = False  # a per-message ClientApp process would build the model for nothing
    previous = signal.signal(signal.SIGTERM, _interrupted)
    started = time.monotonic()
    try:
        # every process may live as long as the run may take (plus start-up and the final save)
        deployment = LocalDeployment(
            plan.work_dir, num_nodes=0, supernode=args.supernode, process_timeout=args.timeout + _PROCESS_MARGIN_SECONDS
        )
        with deployment:
            print(f"privfed local: superlink on {deployment.address} (log {deployment.logs / 'superlink.log'})")
            for k in range(nodes):
                deployment.start_supernode(k)
                print(f"privfed local: supernode{k} started, partition-id={k} (log {deployment.logs}/supernode{k}.log)")
            print(
                f"privfed local: flwr run {plan.app} with {config_path} ({plan.config.server.rounds} rounds; "
                f"log {deployment.logs / 'flwr-run.log'})",
                flush=True,
            )
            deployment.run_app(plan.app, run_config, timeout=args.timeout, echo=sys.stdout)
        if not (plan.out / "summary.json").exists():
            raise LocalDeploymentError(
                f"flwr run ended without a summary in {plan.out}; read {deployment.logs / 'flwr-run.log'}"
            )
    except PrivfedError as exc:
        print(f"privfed local: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"privfed local: interrupted; every process stopped (logs in {plan.work_dir / 'logs'})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"privfed local: stopped every process after {time.monotonic() - started:.0f} s")
    print(f"privfed local: run directory {plan.out} (metrics.jsonl, summary.json)")
    print(f"privfed local: adapter {plan.out / 'adapter'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
