"""A Flower SuperNode whose ClientApp lives in one long-running process.

``python -m privfed.transport.flower.supernode`` takes ``flower-supernode``'s arguments.

Flower 1.42's ``flower-supernode`` (default ``--isolation subprocess``) starts a
``flower-superexec`` that polls the node's Runtime API every second and starts a fresh
``flwr-clientapp`` process for every message: each one imports privfed and torch and
builds the model again (seconds per message), and a ``flwr-clientapp`` process serves
exactly one message before it exits (Flower has no flag to keep it). The SuperNode
itself, when the SuperLink has nothing for it, sleeps 3 s before asking again, and
waits for its ClientApp's reply in 0.5 s steps. A SecAgg+ round is five message
rounds, so a deployment paid tens of seconds per round whatever the model.

This command runs the same SuperNode (``flower-supernode``'s own code and arguments)
with two changes:

* ``--isolation process`` and one :func:`serve_tasks` worker process per SuperNode,
  started here and stopped with the node: it takes the node's ClientApp tasks from the
  Runtime API one after another (Flower's own task protocol: a token per task, the
  message, the node's ``Context`` in and out), loads the app once and keeps the built
  experiment in memory (privfed's per-process cache). Everything a node keeps between
  messages, SecAgg+ state included, still travels in Flower's ``context.state``, so a
  worker that dies is started again (up to 10 times) and carries on; a task it was
  serving is lost like a crashed ``flwr-clientapp``'s (the server sees no reply). Nothing
  is pickled.
* The SuperNode's polling waits are capped at ``--poll-interval`` seconds (default
  0.05): an idle node asks the SuperLink for work 20 times a second instead of every
  3 s (one small HTTP request each; set 3 to get Flower's behaviour back).

Usage (every ``flower-supernode`` argument is accepted as is)::

    python -m privfed.transport.flower.supernode --insecure --superlink 127.0.0.1:9092 \\
        --port 9094 --node-config "partition-id=0" [--poll-interval 0.05]

The worker alone (for a SuperNode started with ``--isolation process`` elsewhere)::

    python -m privfed.transport.flower.supernode --worker --runtime-api-address 127.0.0.1:9094 --insecure
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from privfed.transport.flower.latency import OBJECT_PULL_BACKOFF_SECONDS, cap_supernode_waits

__all__ = ["DEFAULT_POLL_SECONDS", "main", "serve_tasks"]

#: Seconds an idle SuperNode waits before asking the SuperLink again (Flower's own: 3).
DEFAULT_POLL_SECONDS = 0.05
_MAX_WORKER_RESTARTS = 10
_TASK_POLL_SECONDS = 0.05  # the worker asking its own SuperNode for a task (a local HTTP request each)


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _pull_task_input(client: Any) -> tuple[Any, Any, Any, Any]:
    """Flower's ``pull_task_input`` with 10 ms retries (Flower's: 1 s, doubling).

    The SuperNode hands out a task before it has pulled the message's contents from the
    SuperLink; a worker that asks at once waited 1-3 s in Flower's back-off.
    """
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=OBJECT_PULL_BACKOFF_SECONDS,
        backoff_cap=0.1,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id
    return message, context, run, fab


def _run_task(address: str, token: str, certificates: bytes | None, insecure: bool, apps: dict[str, Any]) -> None:
    """One ClientApp task, as ``flwr-clientapp`` runs it, in this process (the app loaded once per FAB)."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.cli.install import install_from_fab
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.clientapp.utils import get_load_client_app_fn
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
    from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
            RuntimeTokenHttpInterceptor(token),
        ],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        message, context, run, fab = _pull_task_input(client)
        app = apps.get(fab.hash_str)
        if app is None:
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            app = apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        reply = app(message=message, context=context)
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # as flwr-clientapp: the error goes back as the reply; the worker lives on
        loading = isinstance(exc, LoadClientAppError)
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if loading else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(exc)}:<'{exc}'>"
        details = reason
        print(f"privfed worker: ClientApp raised {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            heartbeat.stop()
            client.close()


def serve_tasks(
    *, runtime_api_address: str, insecure: bool, root_certificates: str | None = None, parent_pid: int | None = None
) -> None:
    """Take this SuperNode's ClientApp tasks one after another, forever, in this process.

    Args:
        runtime_api_address: the SuperNode's Runtime API (``host:port``; its ``--port``).
        insecure: plain HTTP to the Runtime API (a SuperNode without ``--ssl-certfile``).
        root_certificates: CA certificate of the Runtime API (``--ssl-ca-certfile``).
        parent_pid: exit when this process (the SuperNode) is gone.
    """
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.app_utils import start_parent_process_monitor
    from flwr.supercore.constant import TaskType
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient
    from flwr.supercore.tls import validate_and_resolve_root_certificates

    if parent_pid is not None:
        start_parent_process_monitor(parent_pid)
    certificates = validate_and_resolve_root_certificates(root_certificates, insecure)
    # Load privfed and torch before the first task arrives, not in round 1.
    import privfed.transport.flower.client_app  # noqa: F401

    tasks = RuntimeHttpClient.from_server_address(
        server_address=runtime_api_address,
        insecure=insecure,
        root_certificates=certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=make_simple_http_retry_invoker(),
    )
    apps: dict[str, Any] = {}
    try:
        while True:
            got = tasks.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
            if got.HasField("task") and got.token:
                try:
                    _run_task(runtime_api_address, got.token, certificates, insecure, apps)
                except Exception as exc:  # the reply could not be pushed: that task is lost, not the worker
                    print(f"privfed worker: task failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                continue
            time.sleep(_TASK_POLL_SECONDS)
    finally:
        tasks.close()


def main(argv: Sequence[str] | None = None) -> None:
    """``flower-supernode`` with a long-lived ClientApp worker and short polling (module docstring)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in args:
        parser = argparse.ArgumentParser(prog="python -m privfed.transport.flower.supernode --worker")
        parser.add_argument("--worker", action="store_true")
        parser.add_argument("--runtime-api-address", required=True)
        parser.add_argument("--insecure", action="store_true")
        parser.add_argument("--root-certificates")
        parser.add_argument("--parent-pid", type=int)
        worker = parser.parse_args(args)
        serve_tasks(
            runtime_api_address=worker.runtime_api_address,
            insecure=worker.insecure,
            root_certificates=worker.root_certificates,
            parent_pid=worker.parent_pid,
        )
        return
    poll = DEFAULT_POLL_SECONDS
    if (value := _option(args, "--poll-interval")) is not None:
        poll = float(value)
        if not 0.001 <= poll <= 3.0:
            raise SystemExit(f"--poll-interval must be between 0.001 and 3 seconds; got {value}")
        i = next(i for i, a in enumerate(args) if a.startswith("--poll-interval"))
        del args[i : i + (1 if "=" in args[i] else 2)]
    isolation = _option(args, "--isolation")
    if isolation not in (None, "process"):
        raise SystemExit(
            f"this SuperNode runs its own ClientApp worker: --isolation must be 'process'; got {isolation}"
        )
    if isolation is None:
        args += ["--isolation", "process"]
    host = _option(args, "--host") or "127.0.0.1"
    port = _option(args, "--port") or "9094"
    ca = _option(args, "--ssl-ca-certfile")
    command = [sys.executable, "-m", "privfed.transport.flower.supernode", "--worker"]
    command += ["--runtime-api-address", f"{host}:{port}", "--parent-pid", str(os.getpid())]
    command += ["--root-certificates", ca] if ca is not None else ["--insecure"]
    workers = [subprocess.Popen(command)]
    stopping = threading.Event()

    def supervise() -> None:  # a worker that died is started again (its state is in context.state)
        for restart in range(_MAX_WORKER_RESTARTS + 1):
            code = workers[-1].wait()
            if stopping.is_set() or restart == _MAX_WORKER_RESTARTS:
                return
            print(f"privfed: ClientApp worker exited ({code}); starting it again", file=sys.stderr, flush=True)
            time.sleep(1.0)
            if not stopping.is_set():
                workers.append(subprocess.Popen(command))

    threading.Thread(target=supervise, name="privfed-worker-supervisor", daemon=True).start()
    cap_supernode_waits(cap=poll)
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *args]
    try:
        flower_supernode()
    finally:
        stopping.set()
        workers[-1].terminate()


if __name__ == "__main__":
    main()
