"""Flower's processes (flwr 1.41): command lines, their lifecycle, and runs submitted to them.

One place builds the command lines of the SuperLink and the SuperNodes. The process-level
runtime (``runtime: flower-sim`` and ``flower-deploy`` on 127.0.0.1), its tests and the
services of ``docker-compose.yml`` all run these same commands (a test compares them).

Everything started here carries a random tag in its environment. Flower detaches some of its
own children (the SuperLink starts its SuperExec in a new session, Ray starts its daemons), so
stopping a process group is not enough; :meth:`FlowerProcesses.stop` also ends every process
that inherited the tag.

The processes also end when the process that started them dies without stopping them (``kill
-9``, a crash): each one it starts gets a parent-death signal (``PR_SET_PDEATHSIG``, SIGKILL),
and a watchdog process (:func:`watch`) that holds one end of a pipe from it ends them and every
process below them, detached grandchildren included, once that pipe closes. SIGTERM stops them
gracefully first.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

import tomli_w

from vfl_sim.errors import VflSimError

TAG_VAR = "VFL_SIM_FLOWER_TAG"

# What every Flower process started here needs in its environment. A SuperLink installs an app's
# dependencies with `uv sync` unless told not to: the app runs in this environment instead.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "UV_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


class FlowerRuntimeError(VflSimError):
    """A Flower process did not start, or a run did not finish well."""


@dataclass(frozen=True)
class TlsFiles:
    """Certificates for a TLS deployment (``scripts/flower-certs.sh`` writes them).

    ``ca_cert`` signs ``server_cert``; SuperNodes and the ``flwr`` CLI trust ``ca_cert``.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path


def superlink_command(host: str, port: int, *, simulation: bool = False, tls: TlsFiles | None = None) -> list[str]:
    """The SuperLink: Fleet, Control and ServerAppIo APIs on ``host:port``.

    With ``--isolation subprocess`` it starts the ServerApp (or, with ``simulation``, the
    simulation with its Ray backend) in its own processes, in this Python environment.
    """
    cmd = [
        "flower-superlink",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if simulation:
        cmd.append("--simulation")
    return cmd + _tls_server_flags(tls)


def supernode_command(
    superlink: str, partition_id: int, num_partitions: int, host: str, port: int, *, tls: TlsFiles | None = None
) -> list[str]:
    """One party's node (:mod:`vfl_sim.runtimes.flower_node`): a SuperNode connected to
    ``superlink`` and the party's long-lived ClientApp process, which talk over the SuperNode's
    Runtime API on ``host:port`` (127.0.0.1: it is for the party process only)."""
    cmd = [
        "vfl-sim-supernode",
        "--superlink",
        superlink,
        "--node-config",
        f"partition-id={partition_id} num-partitions={num_partitions}",
        "--host",
        host,
        "--port",
        str(port),
    ]
    return cmd + (["--root-certificates", str(tls.ca_cert)] if tls else ["--insecure"])


def _tls_server_flags(tls: TlsFiles | None) -> list[str]:
    if tls is None:
        return ["--insecure"]
    return [
        "--ssl-ca-certfile",
        str(tls.ca_cert),
        "--ssl-certfile",
        str(tls.server_cert),
        "--ssl-keyfile",
        str(tls.server_key),
    ]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def tool(name: str) -> str:
    """The path of a Flower command in this Python environment (Flower finds its own children
    on ``PATH`` by bare name, so that directory also goes first on ``PATH``)."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


# Run before a command, in its own process: die with the parent (PR_SET_PDEATHSIG survives the
# exec that follows), unless it died already, then become the command. A wrapper rather than a
# preexec_fn, which is not safe while other threads run (they do: Flower's log relay).
_PDEATHSIG_SHIM = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    os._exit(137)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _parent_death_supported() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "prctl")
    except OSError:
        return False


PARENT_DEATH_SIGNAL = _parent_death_supported()


def die_with_parent(cmd: Sequence[str]) -> list[str]:
    """``cmd`` wrapped so that the process gets SIGKILL when this one dies (Linux; elsewhere
    ``cmd`` as it is, and only the watchdog stops it).

    The signal follows the thread that started the process: start it from the thread that
    also stops it (as :class:`FlowerProcesses` does).
    """
    if not PARENT_DEATH_SIGNAL:
        return list(cmd)
    return [sys.executable, "-I", "-S", "-c", _PDEATHSIG_SHIM, str(os.getpid()), *cmd]


def watch(parent: int, tag: str, fd: int, grace: float = 3.0) -> None:
    """The watchdog's loop: until ``parent`` has died (the pipe ``fd`` from it reads end of
    file, or this process got another parent), remember the processes that ``parent`` names on
    the pipe (one pid a line) and everything below them; then end them all (:func:`end_processes`).

    ``parent`` closes the pipe when it stops its processes itself, or the kernel closes it for
    a process that died. The tree is looked at every half second while ``parent`` lives, since
    a process whose parent died is no longer found below it. Ctrl-C is for ``parent``, which
    stops its processes then.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    roots: set[int] = set()
    known: dict[int, int] = {}
    pending = b""
    while os.getppid() == parent:
        readable, _, _ = select.select([fd], [], [], 0.5)
        if readable:
            data = os.read(fd, 4096)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            roots.update(int(line) for line in lines if line.strip())
        remember(known, roots, tag)
    end_processes(known, roots, tag, grace)


def _process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (parent pid, start time)`` of every process that runs (zombies have ended)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X"):
            table[int(entry.name)] = (int(fields[1]), int(fields[19]))  # ppid, starttime
    return table


def remember(known: dict[int, int], roots: set[int], tag: str) -> dict[int, int]:
    """Add to ``known`` (``pid -> start time``) the processes in ``roots``, everything below
    them or below a process already known, and every process carrying ``tag``; forget those
    that have ended. Neither the tag nor the process groups find them all: Flower and Ray
    start some in sessions of their own, and Ray's rewrite their environment (their title)."""
    table = _process_table()
    for pid in [p for p, start in known.items() if table.get(p, (0, -1))[1] != start]:
        del known[pid]  # ended (or its pid reused)
    below = {p for p in roots if p in table} | set(known)
    grew = True
    while grew:
        more = {p for p, (ppid, _) in table.items() if ppid in below} - below
        grew, below = bool(more), below | more
    for pid in below | set(tagged_pids(tag)):
        if pid in table and pid != os.getpid():
            known.setdefault(pid, table[pid][1])
    return known


def end_processes(known: dict[int, int], roots: set[int], tag: str, grace: float) -> None:
    """End the processes in ``known``, below them and tagged with ``tag``: SIGTERM, SIGKILL
    after ``grace`` seconds. Asks again until none is left (some start others while they are
    being stopped), for at most ten times ``grace``."""
    deadline = time.monotonic() + 10 * grace
    stop_asking = time.monotonic() + grace
    while remember(known, roots, tag) and time.monotonic() < deadline:
        sig = signal.SIGTERM if time.monotonic() < stop_asking else signal.SIGKILL
        for pid in known:
            _kill(pid, sig)
        time.sleep(0.1)


class FlowerProcesses:
    """Flower processes started as one group: a SuperLink, SuperNodes, the ``flwr`` CLI.

    They end with this process: :meth:`stop` (also on SIGTERM while the group is in use as a
    context manager in the main thread), and where this process dies without stopping them,
    their parent-death signal and the watchdog (see the module's description).

    Parameters
    ----------
    folder
        Where Flower keeps its home (``FLWR_HOME``: connections, installed apps) and where
        every process writes its log.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.home = folder / "flwr_home"
        self.logs = folder / "logs"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.tag = secrets.token_hex(8)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None  # this process's end of the watchdog's pipe
        self._sigterm: Any = None  # the SIGTERM handler replaced while in use
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            **FLOWER_ENV,
            "FLWR_HOME": str(self.home),
            TAG_VAR: self.tag,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }

    def __enter__(self) -> FlowerProcesses:
        # SIGTERM ends Python at once, without stopping the processes; as an exception it
        # unwinds through stop(). Only where nobody else handles it (a handler is per process).
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                self._sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None

    def _start_watchdog(self) -> None:
        """Start the watchdog (:func:`watch`) before the first process, once."""
        if self._watchdog is not None:
            return
        read_end, write_end = os.pipe()  # not inherited by anything else this process starts
        code = f"from vfl_sim.runtimes.flower_launch import watch; watch({os.getpid()}, {self.tag!r}, {read_end})"
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", code],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(read_end,),
                # Not in this process's group or session: signals to those must not end it
                # before it has done its work.
                start_new_session=True,
                env={k: v for k, v in os.environ.items() if k != TAG_VAR},
            )
        finally:
            os.close(read_end)
        self._lifeline = write_end

    def _watch(self, pid: int) -> None:
        """Tell the watchdog about a process started here (it ends it, and all below it)."""
        if self._lifeline is not None:
            os.write(self._lifeline, f"{pid}\n".encode())

    # -- processes -----------------------------------------------------------------------------

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in a new session, its output in ``logs/<name>.log``."""
        self._start_watchdog()
        log = (self.logs / f"{name}.log").open("ab")
        self._log_files.append(log)
        proc = subprocess.Popen(
            die_with_parent([tool(cmd[0]), *cmd[1:]]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **(env or {})},
            start_new_session=True,
        )
        self._watch(proc.pid)
        self.procs[name] = proc
        return proc

    def start_superlink(
        self,
        port: int,
        *,
        simulation: bool = False,
        tls: TlsFiles | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> str:
        """Start a SuperLink on 127.0.0.1 and wait until it answers; returns its address.
        ``env`` adds to its environment (which the ServerApp it starts inherits)."""
        self.start("superlink", superlink_command("127.0.0.1", port, simulation=simulation, tls=tls), env=env)
        self.wait_ready("superlink", port, tls=tls, timeout=timeout)
        return f"127.0.0.1:{port}"

    def start_supernodes(
        self, superlink: str, parties: int, *, tls: TlsFiles | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """One SuperNode per party, each with its own ClientAppIo port and Flower home; ``env``
        adds to their environment."""
        for k in range(parties):
            home = self.folder / f"node_{k}"
            home.mkdir(exist_ok=True)
            cmd = supernode_command(superlink, k, parties, "127.0.0.1", free_port(), tls=tls)
            self.start(f"supernode_{k}", cmd, env={**(env or {}), "FLWR_HOME": str(home)})

    def wait_ready(self, name: str, port: int, *, tls: TlsFiles | None, timeout: float) -> None:
        """Wait until the SuperLink's HTTP API answers its health check."""
        scheme = "https" if tls else "http"
        context = None
        if tls is not None:
            import ssl

            context = ssl.create_default_context(cafile=str(tls.ca_cert))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive(name)
            try:
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health", timeout=2, context=context):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise FlowerRuntimeError(
            f"{name} did not answer on 127.0.0.1:{port} within {timeout:.0f}s; see {self.log(name)}"
        )

    def check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise FlowerRuntimeError(
                f"{name} exited with code {proc.returncode}: {self.tail(name)} (log: {self.log(name)})"
            )

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def tail(self, name: str, lines: int = 5) -> str:
        """The last lines of a process's log, on one line."""
        path = self.log(name)
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(line.strip() for line in text[-lines:])

    def kill(self, name: str) -> None:
        """Kill one process and its group at once (a party that crashes, in tests)."""
        _signal_group(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=10)

    def stop(self, grace: float = 3.0) -> None:
        """End every process of this group, detached descendants included."""
        roots = {proc.pid for proc in self.procs.values()}
        known = remember({}, roots, self.tag)  # before their parents end and they are orphans
        for proc in self.procs.values():
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        end_processes(known, roots, self.tag, grace)
        for log in self._log_files:
            log.close()
        self._log_files.clear()
        self._stop_watchdog()

    def _stop_watchdog(self) -> None:
        """Close the watchdog's pipe: it finds nothing left to stop, and exits."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None

    # -- the flwr CLI --------------------------------------------------------------------------

    def add_connection(self, name: str, address: str, *, root_certificates: Path | None = None) -> None:
        """Declare a SuperLink connection in this group's Flower home (``flwr`` reads it);
        ``root_certificates`` (a CA file) makes it a TLS connection."""
        path = self.home / "config.toml"
        config: dict[str, Any] = {"superlink": {"default": name}}
        if path.exists():
            import tomli

            config = tomli.loads(path.read_text())
        entry: dict[str, Any] = {"address": address}
        if root_certificates is None:
            entry["insecure"] = True
        else:
            entry["root-certificates"] = str(root_certificates)
        config.setdefault("superlink", {})[name] = entry
        path.write_text(tomli_w.dumps(config))

    def flwr(self, *args: str, timeout: float = 120.0) -> str:
        """Run one ``flwr`` command; returns its standard output."""
        self._start_watchdog()
        with subprocess.Popen(
            die_with_parent([tool("flwr"), *args]),
            env={**self.env, "COLUMNS": "200"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            self._watch(proc.pid)
            try:
                stdout, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise FlowerRuntimeError(f"'flwr {args[0]}' did not finish within {timeout:.0f}s") from None
        if proc.returncode != 0:
            detail = (stdout + stderr).strip().splitlines()
            raise FlowerRuntimeError(f"'flwr {' '.join(args[:2])}' failed: {' | '.join(detail[-5:])}")
        return stdout

    def submit(
        self,
        app_dir: Path,
        connection: str,
        run_config: Mapping[str, Any],
        federation_config: Mapping[str, Any] | None = None,
    ) -> int:
        """``flwr run``: start the app on the SuperLink; returns the run id."""
        config_file = self.folder / "run_config.toml"
        config_file.write_text(tomli_w.dumps(dict(run_config)))
        args = ["run", str(app_dir), connection, "--run-config", str(config_file), "--format", "json"]
        if federation_config:
            args += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
        out = self.flwr(*args)
        try:
            return int(json.loads(out)["run-id"])
        except (ValueError, KeyError) as exc:
            raise FlowerRuntimeError(f"'flwr run' did not return a run id ({exc}): {out.strip()[-500:]}") from None

    def wait(
        self, run_id: int, connection: str, *, timeout: float, on_line: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Stream the run's logs until it ends (or ``timeout``); returns its entry from ``flwr ls``.

        Raises :class:`FlowerRuntimeError` when the run is not over by then; it is stopped first.
        """
        log_path = self.logs / f"run_{run_id}.log"
        self._start_watchdog()
        proc = subprocess.Popen(
            die_with_parent([tool("flwr"), "log", str(run_id), connection, "--stream"]),
            env={**self.env, "COLUMNS": "200"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._watch(proc.pid)

        def relay() -> None:
            assert proc.stdout is not None
            with log_path.open("w") as log:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if on_line is not None:
                        on_line(line.rstrip("\n"))

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            self._stop_run(run_id, connection)
            raise FlowerRuntimeError(f"run {run_id} did not finish within {timeout:.0f}s; stopped it") from None
        finally:
            reader.join(timeout=5)
        return self.run_status(run_id, connection)

    def run_status(self, run_id: int, connection: str) -> dict[str, Any]:
        out = self.flwr("ls", connection, "--run-id", str(run_id), "--format", "json")
        runs = json.loads(out).get("runs", [])
        if not runs:
            raise FlowerRuntimeError(f"the SuperLink knows no run {run_id}")
        return dict(runs[0])

    def _stop_run(self, run_id: int, connection: str) -> None:
        try:
            self.flwr("stop", str(run_id), connection, timeout=30)
        except FlowerRuntimeError:
            pass  # the processes are stopped anyway


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM ends this process at once; the watchdog then stops what is left.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).split("=", 1)[1].strip()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries ``tag`` (everything a :class:`FlowerProcesses` started,
    and whatever those started in turn)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found
