"""A SuperNode's long-lived ClientApp process: every message of the node, one process.

Flower 1.41's own executor (``flower-superexec``) starts a new ``flwr-clientapp`` process for
every message a SuperNode receives; each one imports torch and the app and rebuilds the party
from ``Context.state``, several seconds a message. Flower has no executor that keeps a ClientApp
process across messages (its warm pools, for Kubernetes only, also run one task per process).
This module is one: started beside a SuperNode that runs with ``--isolation process``, it
claims the node's ClientApp tasks over the SuperNode's Runtime API and runs each in this
process with Flower's own task functions (:func:`run_task`: the same requests, in the same
order, as ``flwr-clientapp``), so the app is imported once and the party stays in memory
between messages (:mod:`vfl_sim.runtimes.flower_app` keeps it while the node's state carries the
stamp it saved). The party's state still goes back to the node's ``Context.state`` after every
message, so a restarted process rebuilds it.

Tasks run one at a time, in the order the SuperNode created them, which is also the order it
receives messages (it handles one at a time). The process ends when the process that started it
(the SuperNode's, :mod:`vfl_sim.runtimes.flower_node`) ends.

    python -m vfl_sim.runtimes.flower_exec --runtime-api-address 127.0.0.1:9094 --parent-pid PID
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import httpx
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from vfl_sim.runtimes.flower_pace import Backoff, log_to_stderr, pace_object_pulls

log = logging.getLogger("vfl_sim.flower_exec")

PRELOAD = "vfl_sim.runtimes.flower_app"
"""Imported when the process starts, so that the node's first message (the server's discovery
query, under ``flower.connect_timeout``) does not wait for torch."""

HEARTBEAT_S = 20.0
"""Seconds between heartbeats of a task that runs long: the SuperNode fails a running task that
has not sent one for 60 s (``HEARTBEAT_PATIENCE * HEARTBEAT_DEFAULT_INTERVAL`` in flwr 1.41)."""


def runtime_client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    """A client of the SuperNode's Runtime API (plain HTTP: this process runs beside the
    SuperNode, which serves it on its own host)."""
    interceptors: list[RuntimeTokenHttpInterceptor | RuntimeVersionHttpInterceptor] = [
        RuntimeVersionHttpInterceptor(component_name=component)
    ]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


class AppCache:
    """ClientApps by the hash of the FAB they come from: installed and imported once."""

    def __init__(self) -> None:
        self._apps: dict[str, ClientApp] = {}
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)

    def get(self, fab_id: str, fab_version: str, fab_hash: str, fab_content: bytes) -> ClientApp:
        app = self._apps.get(fab_hash)
        if app is None:
            install_from_fab(fab_content, skip_prompt=True)
            app = self._apps[fab_hash] = self._load(fab_id, fab_version, fab_hash)
        return app


def _heartbeats(client: RuntimeHttpClient, done: threading.Event) -> None:
    while not done.wait(HEARTBEAT_S):
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.HTTPError as exc:
            log.warning("task heartbeat failed: %s", exc)


def run_task(address: str, token: str, apps: AppCache) -> None:
    """Run one ClientApp task claimed with ``token``, as ``flwr-clientapp`` would: pull the
    message and the node's context, call the app, push the reply, then the context and the
    task's status. An exception of the app becomes an error reply (as in Flower), and this
    process serves the next task."""
    start = time.perf_counter()
    client = runtime_client(address, "flwr-clientapp", token)
    done = threading.Event()
    beat = threading.Thread(target=_heartbeats, args=(client, done), daemon=True)
    beat.start()
    message: Message | None = None
    context: Context | None = None
    reply: Message | None = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    try:
        message, context, run, fab = pull_task_input(client)
        pulled = time.perf_counter()
        app = apps.get(run.fab_id, run.fab_version, fab.hash_str, fab.content)
        reply = app(message=message, context=context)
        log.debug(
            "%s: pulled in %.1f ms, answered in %.1f ms",
            message.metadata.message_type,
            1e3 * (pulled - start),
            1e3 * (time.perf_counter() - pulled),
        )
        sub_status, details = SubStatus.COMPLETED, ""
    except Exception as exc:  # noqa: BLE001 - whatever the app raises is the task's error reply
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = f"{type(exc)}:<'{exc}'>"  # Flower's format
        if isinstance(exc, LoadClientAppError):
            code, reason = (
                ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
                "An exception was raised when attempting to load `ClientApp`",
            )
        log.exception("ClientApp raised an exception")
        details = reason
        if message is not None:
            reply = Message(Error(code=code, reason=reason), reply_to=message)
    finally:
        done.set()
        try:
            if reply is not None and context is not None:
                push_message(client, reply, context)
            push_task_output(client, context, sub_status, details)
            log.debug("task done in %.1f ms", 1e3 * (time.perf_counter() - start))
        except Exception:  # noqa: BLE001 - the SuperNode fails the task when it expires
            log.exception("could not hand the task's reply to the SuperNode")
        finally:
            beat.join(timeout=1)
            client.close()


def serve(
    address: str,
    *,
    parent_alive: Callable[[], bool] = lambda: True,
    backoff: Backoff | None = None,
    max_tasks: int | None = None,
) -> int:
    """Claim and run the SuperNode's ClientApp tasks until ``parent_alive()`` is false (or
    ``max_tasks`` have run); returns the number run."""
    backoff = backoff or Backoff(0.002, 0.5)
    apps = AppCache()
    client = runtime_client(address, "SuperExec")
    request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
    ran = 0
    try:
        while parent_alive() and (max_tasks is None or ran < max_tasks):
            try:
                claimed = client.AcquireTask(request)
            except httpx.HTTPError:  # the SuperNode is not up yet, or going away
                time.sleep(backoff.cap)
                continue
            if claimed.HasField("task") and claimed.token:
                run_task(address, claimed.token, apps)
                ran += 1
                backoff.reset()
            else:
                time.sleep(backoff.next())
    finally:
        client.close()
    return ran


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API, host:port")
    p.add_argument("--parent-pid", type=int, default=None, help="end when this process ends")
    args = p.parse_args(argv)
    log_to_stderr(log, "vfl-sim party process")
    pace_object_pulls()
    importlib.import_module(PRELOAD)
    parent = args.parent_pid

    def parent_alive() -> bool:
        return parent is None or os.getppid() == parent

    log.info("serving the ClientApp tasks of the SuperNode at %s", args.runtime_api_address)
    serve(args.runtime_api_address, parent_alive=parent_alive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
