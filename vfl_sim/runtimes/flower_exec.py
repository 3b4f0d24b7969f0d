"""A party's long-lived ClientApp process for a SuperNode in ``--isolation process``.

Flower 1.41's default (``--isolation subprocess``) has the SuperNode start a SuperExec that
launches a fresh ``flwr-clientapp`` process for every message: Python, torch and the app are
imported again and the party is rebuilt from ``Context.state`` each time, about 9 s per message
in a container. Split learning sends a message per party per training step, so that does not
scale. With ``--isolation process`` the SuperNode leaves the execution of its tasks to "a
separate independent process"; :func:`serve` is that process. It claims the node's ClientApp
tasks from the SuperNode's Runtime API one after another and runs each one in this process,
with Flower's own task protocol (pull the task input and message, call the ClientApp, push the
reply and the task output). The app is imported once, so the party built by the first message
stays resident (:mod:`vfl_sim.runtimes.flower_app`) and every message after it costs what it
costs on ``flower-sim``.

The ClientApp is the one the run's FAB names (``[tool.flwr.app.components] clientapp``),
imported from this Python environment: the app must be installed here (FAB installation and
per-run dependency installation are off in vfl-sim's deployments anyway, see
:data:`~vfl_sim.runtimes.flower_launch.FLOWER_ENV`).

Started by :mod:`vfl_sim.runtimes.flower_node`; ``python -m vfl_sim.runtimes.flower_exec
--runtime-api-address HOST:PORT`` runs it by hand.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import signal
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable
from types import FrameType

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullTaskInputRequest,
)
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from vfl_sim.runtimes.flower_pace import PULL_BACKOFF, PULL_BACKOFF_CAP
from vfl_sim.runtimes.flower_state import keep_state_in_process

log = logging.getLogger("vfl_sim.party")

_APPS: dict[str, ClientApp] = {}  # by FAB hash: a ClientApp is imported once per process


class AppLoadError(RuntimeError):
    """The run's FAB names no ClientApp that this environment can import."""


def client_app_of(fab_hash: str, fab_content: bytes) -> ClientApp:
    """The ClientApp that a FAB's ``pyproject.toml`` names, imported from this environment."""
    app = _APPS.get(fab_hash)
    if app is not None:
        return app
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as fab:
            project = tomllib.loads(fab.read("pyproject.toml").decode())
        ref = str(project["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (zipfile.BadZipFile, KeyError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AppLoadError(f"the run's FAB names no clientapp in its pyproject.toml ({exc!r})") from None
    module_name, _, attr = ref.partition(":")
    try:
        app = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise AppLoadError(f"cannot import the run's clientapp {ref!r} here: {exc}") from None
    if not isinstance(app, ClientApp):
        raise AppLoadError(f"{ref!r} is a {type(app).__name__}, not a ClientApp")
    _APPS[fab_hash] = app
    return app


def _client(address: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp")]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on this host only (flower_node)
        root_certificates=None,
        interceptors=interceptors,  # type: ignore[arg-type]
        retry_invoker=make_simple_http_retry_invoker(),
    )


# The SuperNode offers a task as soon as it has the message's header and fetches the content
# from the SuperLink after that: a process started per message never noticed Flower's 1 s wait
# for content that is not there yet; a resident one asks again sooner (flower_pace).
def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The task's message, context, run and FAB (Flower's ``pull_task_input``, with a short
    backoff for content the SuperNode is still fetching)."""
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the SuperNode gave this task no message")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree,
        make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message,
        initial_backoff=PULL_BACKOFF,
        backoff_cap=PULL_BACKOFF_CAP,
    )
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower does: not part of the tree
    return message, context, run, fab


def run_task(address: str, token: str) -> bool:
    """Run one claimed ClientApp task in this process; ``True`` when the app answered.

    The steps and their order are those of Flower's ``flwr-clientapp`` (``run_clientapp``),
    without the process around them: an exception in the app becomes an ``Error`` reply and a
    failed task, as there, and this process goes on with the next task.
    """
    t0 = t1 = t2 = time.perf_counter()
    client = _client(address, token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    message = reply = context = None
    status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        t1 = time.perf_counter()
        app = client_app_of(fab.hash_str, fab.content)
        reply = app(message=message, context=context)
        t2 = time.perf_counter()
        status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001  (reported to the server, as flwr-clientapp does)
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        if isinstance(exc, AppLoadError):
            code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
        details = f"{type(exc)}:<'{exc}'>"
        log.exception("the ClientApp raised an exception")
        if message is not None:
            reply = Message(Error(code=code, reason=details), reply_to=message)
    try:
        if reply is not None and context is not None:
            push_message(client, reply, context)
    except Exception:  # noqa: BLE001  (the server times out on the missing reply and names the party)
        log.exception("could not push the reply to the SuperNode")
        status, details = SubStatus.FAILED, "the reply could not be pushed to the SuperNode"
    try:
        push_task_output(client=client, context=context, sub_status=status, details=details)
    finally:
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()
    log.debug("task: %.3fs pulling, %.3fs in the app, %.3fs pushing", t1 - t0, t2 - t1, time.perf_counter() - t2)
    return status == SubStatus.COMPLETED


def serve(address: str, *, poll_interval: float = 0.01, stop: Callable[[], bool] = lambda: False) -> None:
    """Claim and run the SuperNode's ClientApp tasks, one at a time, until ``stop()``.

    ``poll_interval`` is the pause after finding no task; a task is claimed as soon as the
    previous one is done.
    """
    client = _client(address)
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
    try:
        while not stop():
            res = client.AcquireTask(request)
            if res.HasField("task") and res.token:
                run_task(address, res.token)
            else:
                time.sleep(poll_interval)
    finally:
        client.close()


def _watch_parent(parent: int) -> None:
    """End this process when ``parent`` (its SuperNode) is gone."""

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, daemon=True, name="parent-watch").start()


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """``python -m vfl_sim.runtimes.flower_exec --runtime-api-address HOST:PORT``."""
    parser = argparse.ArgumentParser(description="Run a SuperNode's ClientApp tasks in one long-lived process.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (HOST:PORT)")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds between polls when idle")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="party: %(message)s", stream=sys.stdout)
    signal.signal(signal.SIGTERM, _exit)
    if args.parent_pid is not None:
        _watch_parent(args.parent_pid)
    # This process serves every message of its SuperNode and the node ends with it, so the
    # party's state need not travel in Context.state (flower_state).
    keep_state_in_process()
    try:
        serve(args.runtime_api_address, poll_interval=args.poll_interval)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
