"""A party's SuperNode at Flower's message floor: its long-lived party process
(:mod:`vfl_sim.runtimes.flower_exec`), the SuperNode that starts it
(:mod:`vfl_sim.runtimes.flower_node`) and Flower's shortened waits
(:mod:`vfl_sim.runtimes.flower_pace`).

Everything here runs in this process with stand-ins for the SuperNode's Runtime API; the
deployment tests (``tests/test_flower_runtime.py``) run the real processes and compare the
parties' numbers with the local runtime.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import flwr
import flwr.supercore.inflatable.inflatable_utils as inflatable
import flwr.supernode.start_client_internal as supernode_loop
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode, SubStatus
from flwr.supercore.task_identity import TaskIdentity

from vfl_sim.runtimes import flower_exec, flower_launch, flower_node, flower_pace
from vfl_sim.runtimes.flower_pace import Backoff, PacedTime

# -- Flower's waits --------------------------------------------------------------------------


def test_the_waits_paced_are_flowers() -> None:
    """The SuperNode loop and the object pulls of this flwr wait as :mod:`flower_pace` assumes;
    another release fails here rather than keep seconds a message unnoticed."""
    assert flower_pace.known_release()
    source = inspect.getsource(supernode_loop)
    assert source.count(f"time.sleep({flower_pace.FLOWER_IDLE_S})") == 1  # idle: no message
    assert source.count(f"time.sleep({flower_pace.FLOWER_REPLY_S})") == 2  # the reply, its content
    assert "_pull_and_store_message(" in inspect.getsource(supernode_loop.start_client_internal)
    for function in (inflatable.pull_objects, inflatable.pull_and_inflate_object_from_tree):
        assert {"initial_backoff", "backoff_cap"} <= set(inspect.signature(function).parameters)


def test_backoff_grows_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.01, 0.05, factor=2)
    assert [backoff.next() for _ in range(5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    backoff.reset()
    assert backoff.next() == 0.01
    for bad in ((0.0, 1.0, 2.0), (2.0, 1.0, 2.0), (0.1, 1.0, 0.5)):
        with pytest.raises(ValueError, match="bad backoff"):
            Backoff(*bad)


def test_paced_time_shortens_only_flowers_two_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(flower_pace.time, "sleep", slept.append)
    paced = PacedTime(Backoff(0.005, 1.0, factor=2), reply_wait=0.002)
    for seconds in (3, 3, 0.5, 7):
        paced.sleep(seconds)
    assert slept == [0.005, 0.01, 0.002, 7]
    assert paced.monotonic is flower_pace.time.monotonic  # the rest is the time module


def test_pace_supernode_resets_the_idle_wait_on_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    pulled: list[int | None] = [None, None, 42]
    monkeypatch.setattr(supernode_loop, "_pull_and_store_message", lambda **_: pulled.pop(0))
    monkeypatch.setattr(supernode_loop, "time", supernode_loop.time)  # restored afterwards
    paced = flower_pace.pace_supernode(Backoff(0.005, 1.0, factor=2))
    assert paced is not None and supernode_loop.time is paced
    for _ in range(2):
        assert supernode_loop._pull_and_store_message() is None
        paced.idle.next()  # the loop's idle wait
    assert paced.idle.next() == 0.02
    assert supernode_loop._pull_and_store_message() == 42
    assert paced.idle.next() == 0.005


def test_pace_object_pulls_changes_flowers_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    for function in (inflatable.pull_objects, inflatable.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        assert defaults is not None
        for key in ("initial_backoff", "backoff_cap"):
            monkeypatch.setitem(defaults, key, defaults[key])  # restored afterwards
    assert flower_pace.pace_object_pulls(0.003, 0.04)
    for function in (inflatable.pull_objects, inflatable.pull_and_inflate_object_from_tree):
        params = inspect.signature(function).parameters
        assert (params["initial_backoff"].default, params["backoff_cap"].default) == (0.003, 0.04)


def test_another_flower_release_keeps_its_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flower_pace.flwr, "__version__", "1.42.0")
    monkeypatch.setattr(supernode_loop, "time", supernode_loop.time)
    assert flower_pace.pace_supernode() is None
    assert supernode_loop.time is flower_pace.time
    assert not flower_pace.pace_object_pulls()


# -- the SuperNode and its party process -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--isolation", "process", "--host", "0.0.0.0", "--port", "9094"], ("process", "127.0.0.1:9094")),
        (["--superlink", "x:1", "--host", "127.0.0.1", "--port", "5000"], ("subprocess", "127.0.0.1:5000")),
        (["--isolation", "process", "--host", "::", "--port", "7"], ("process", "[::1]:7")),
    ],
)
def test_the_party_process_reaches_the_supernodes_runtime_api(args: list[str], expected: tuple[str, str]) -> None:
    assert flower_node.runtime_api_address(args) == expected


def test_a_party_process_that_dies_is_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    starts: list[int] = []
    monkeypatch.setattr(flower_node, "RESTART_S", 0.0)
    monkeypatch.setattr(flower_node, "party_process_command", lambda _: [sys.executable, "-c", "raise SystemExit(3)"])
    stop = threading.Event()

    def alive() -> bool:
        if len(starts) == 3:
            stop.set()
            return False
        starts.append(1)
        return True

    thread = flower_node.keep_party_process("127.0.0.1:1", alive)
    assert stop.wait(60)
    thread.join(timeout=60)
    assert not thread.is_alive() and len(starts) == 3


def test_the_party_process_dies_with_the_supernode() -> None:
    command = flower_node.party_process_command("127.0.0.1:9094")
    i = command.index("vfl_sim.runtimes.flower_exec")
    assert command[i - 1] == "-m"
    assert command[i + 1 :] == ["--runtime-api-address", "127.0.0.1:9094", "--parent-pid", str(flower_node.os.getpid())]
    if flower_launch.PARENT_DEATH_SIGNAL:
        assert "PR_SET_PDEATHSIG" in " ".join(command)


# -- the party process's tasks ---------------------------------------------------------------


@pytest.fixture
def _task_identity() -> Iterator[None]:
    # Flower's task input sets the run id of the process before any Message is built.
    previous = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 2, 3
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = previous


class FakeRuntime:
    """The SuperNode's Runtime API as :func:`flower_exec.run_task` and :func:`flower_exec.serve`
    use it: tasks to claim, the message and context of each, what comes back."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.polls = 0
        self.replies: list[Message] = []
        self.outputs: list[tuple[str, str]] = []
        self.closed = 0

    # AcquireTask: a task only every other poll.
    def AcquireTask(self, request: Any) -> Any:  # noqa: N802 - Flower's name
        self.polls += 1
        claimed = self.polls % 2 == 0 and self.tasks > 0
        self.tasks -= claimed

        class Response:
            token = "t" if claimed else ""

            def HasField(self, name: str) -> bool:  # noqa: N802 - protobuf's name
                return claimed

        return Response()

    def close(self) -> None:
        self.closed += 1


class Fab:
    hash_str, content = "h1", b"fab"


class Run:
    fab_id, fab_version = "vfl-sim/app", "1"


def _install(monkeypatch: pytest.MonkeyPatch, runtime: FakeRuntime, app: Any) -> list[str]:
    installs: list[str] = []
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    monkeypatch.setattr(flower_exec, "runtime_client", lambda *a, **k: runtime)
    monkeypatch.setattr(
        flower_exec,
        "pull_task_input",
        lambda client: (Message(RecordDict(), dst_node_id=2, message_type="query.embed"), context, Run(), Fab()),
    )
    monkeypatch.setattr(flower_exec, "push_message", lambda client, reply, ctx: runtime.replies.append(reply))
    monkeypatch.setattr(
        flower_exec, "push_task_output", lambda client, ctx, status, details: runtime.outputs.append((status, details))
    )
    monkeypatch.setattr(flower_exec, "install_from_fab", lambda content, skip_prompt: installs.append(content))
    monkeypatch.setattr(flower_exec, "get_load_client_app_fn", lambda **_: lambda *fab: app)
    return installs


@pytest.mark.usefixtures("_task_identity")
def test_tasks_run_in_this_process_with_the_app_loaded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = FakeRuntime(tasks=3)
    calls: list[int] = []

    def app(message: Message, context: Context) -> Message:
        calls.append(len(calls))
        return Message(RecordDict({"n": ConfigRecord({"n": len(calls)})}), reply_to=message)

    installs = _install(monkeypatch, runtime, app)
    monkeypatch.setattr(flower_exec.time, "sleep", lambda s: None)
    ran = flower_exec.serve("127.0.0.1:1", parent_alive=lambda: runtime.tasks > 0 or runtime.polls < 6)
    assert ran == 3 and calls == [0, 1, 2]
    assert installs == [b"fab"]  # one FAB, installed and imported once
    assert [int(str(r.content.config_records["n"]["n"])) for r in runtime.replies] == [1, 2, 3]
    assert runtime.outputs == [(SubStatus.COMPLETED, "")] * 3


@pytest.mark.usefixtures("_task_identity")
def test_an_app_that_raises_answers_with_an_error_and_the_process_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = FakeRuntime(tasks=2)

    def app(message: Message, context: Context) -> Message:
        raise RuntimeError("party exploded")

    _install(monkeypatch, runtime, app)
    monkeypatch.setattr(flower_exec.time, "sleep", lambda s: None)
    assert flower_exec.serve("127.0.0.1:1", max_tasks=2) == 2
    assert [r.error.code for r in runtime.replies] == [ErrorCode.CLIENT_APP_RAISED_EXCEPTION] * 2
    assert "party exploded" in runtime.replies[0].error.reason
    assert [status for status, _ in runtime.outputs] == [SubStatus.FAILED] * 2


def test_the_supernode_command_runs_flowers_supernode() -> None:
    """``supernode_command``'s program is Flower's SuperNode (its own arguments, its version)."""
    cmd = flower_launch.supernode_command("127.0.0.1:1", 0, 2, "127.0.0.1", 2)
    assert cmd[:3] == ["python", "-m", "vfl_sim.runtimes.flower_node"]
    assert cmd[cmd.index("--isolation") + 1] == "process"
    done = subprocess.run(
        [sys.executable, "-m", "vfl_sim.runtimes.flower_node", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert f"Flower version: {flwr.__version__}" in done.stdout
