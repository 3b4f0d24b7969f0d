"""The same run on every runtime, and processes that end with their run.

- The processes that the Flower runtimes start end when ``vfl-sim`` is killed (``kill -9`` or
  SIGTERM), grandchildren included.

Every process a test starts carries a marker of its own in its environment (inherited by
everything below it), which is how the tests find what is left, and clean it up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import small_config
from vfl_sim.config import dump_config
from vfl_sim.runfolder import partial_dir

MARK = "VFL_SIM_TEST_MARK"
ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {
    "name": "synthetic",
    "synthetic": {"samples": 240, "features": 8, "classes": 3, "informative_per_party": 2},
}
QUICK_AUDIT = {"relearning": {"enabled": False}, "calibration": {"retrains": 0}, "plots": False}


def marked_pids(mark: str) -> list[int]:
    """Processes (zombies aside) whose environment carries ``MARK=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found.append(int(entry.name))
    return found


def describe(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            proc = Path("/proc") / str(pid)
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            out.append(f"{pid} (state {stat[0]}, parent {stat[1]}) {cmdline[:100]!r}")
        except OSError:
            pass
    return out


def wait_until_gone(mark: str, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked_pids(mark)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


def kill_marked(mark: str) -> None:
    """SIGKILL whatever a test left running (it failed): nothing outlives the test."""
    for _ in range(20):
        pids = marked_pids(mark)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.25)


@pytest.fixture
def mark() -> Iterator[str]:
    value = uuid.uuid4().hex
    try:
        yield value
    finally:
        kill_marked(value)


def marked_env(mark: str) -> dict[str, str]:
    env = {**os.environ, MARK: mark}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


# -- the Flower processes end with vfl-sim --------------------------------------------------------

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# A parent that starts a process group as the Flower runtime does: one child that detaches a
# grandchild into a session of its own (as the SuperLink does with its SuperExec) and sleeps.
_PARENT = """
import sys, time
from pathlib import Path
from vfl_sim.runtimes.flower_launch import FlowerProcesses

child = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
    "time.sleep(600)"
)
with FlowerProcesses(Path(sys.argv[1])) as procs:
    procs.start("child", [sys.executable, "-c", child])
    print("started", flush=True)
    time.sleep(600)
"""


@LINUX
@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_started_processes_end_with_their_parent(tmp_path: Path, mark: str, sig: signal.Signals) -> None:
    """The mechanism alone, without Flower: a process group whose parent dies (SIGKILL: the
    watchdog; SIGTERM: the parent stops them) leaves nothing behind, detached grandchildren
    included."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=marked_env(mark),
        cwd=ROOT,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 30
        while len(marked_pids(mark)) < 4 and time.monotonic() < deadline:  # parent, watchdog, child, grandchild
            time.sleep(0.1)
        assert len(marked_pids(mark)) >= 4, describe(marked_pids(mark))
        parent.send_signal(sig)
        assert parent.wait(timeout=30) == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM)
        left = wait_until_gone(mark, timeout=30)
        assert left == [], f"left running: {describe(left)}"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def _flower_config(tmp_path: Path) -> Path:
    cfg = small_config(
        runtime="flower-sim",
        data=TINY_DATA,
        partition={"parties": 2},
        train={"epochs": 50},  # still training when the test kills it
        methods=["retrain"],
        audit=QUICK_AUDIT,
        flower={"connect_timeout": 60, "round_timeout": 60, "run_timeout": 300},
    )
    path = tmp_path / "flower.yaml"
    path.write_text(dump_config(cfg))
    return path


@LINUX
@pytest.mark.processes
@pytest.mark.timeout(240)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killed_vfl_sim_leaves_no_flower_process(tmp_path: Path, mark: str, sig: signal.Signals) -> None:
    """``vfl-sim run`` on flower-sim, killed while it trains: within a bounded time no process
    of the run is left (SuperLink, SuperExec, simulation, its Ray, the ClientApps, flwr)."""
    out = tmp_path / "run"
    vfl_sim = str(Path(sys.executable).with_name("vfl-sim"))
    run = subprocess.Popen(
        [vfl_sim, "run", str(_flower_config(tmp_path)), "--out", str(out), "--quiet"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "stderr.log").open("wb"),
        env=marked_env(mark),
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 150
        # The ServerApp makes the partial run folder once every party has connected.
        while not partial_dir(out).exists():
            assert run.poll() is None, (tmp_path / "stderr.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the run did not start training in time"
            time.sleep(0.5)
        time.sleep(2)  # training under way
        before = marked_pids(mark)
        assert len(before) >= 8, describe(before)  # vfl-sim, watchdog, SuperLink ... ClientApps
        run.send_signal(sig)
        run.wait(timeout=60)
        left = wait_until_gone(mark, timeout=60)
        assert left == [], f"{len(left)} of {len(before)} processes left running: {describe(left)}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
