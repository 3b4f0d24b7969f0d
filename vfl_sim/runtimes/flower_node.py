"""``vfl-sim-supernode``: one party's node for ``flower-deploy``, a SuperNode and its party process.

It takes ``flower-supernode``'s arguments and runs Flower's SuperNode in this process with
``--isolation process``, its Runtime API on 127.0.0.1, and the party's long-lived ClientApp
process (:mod:`vfl_sim.runtimes.flower_exec`) as its child. Both end together: the child has a
parent-death signal and watches its parent; the SuperNode ends when the child does.

The SuperNode's own waits, paced for federated rounds that last minutes, are capped at
``--poll-interval`` (default 0.01 s; :func:`~vfl_sim.runtimes.flower_pace.pace_supernode`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading

from vfl_sim.runtimes.flower_launch import die_with_parent, free_port
from vfl_sim.runtimes.flower_pace import pace_supernode

DEFAULT_POLL_INTERVAL = 0.01


def _split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll-interval", type=float, default=DEFAULT_POLL_INTERVAL)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host")
    parser.add_argument("--isolation")
    ours, flower = parser.parse_known_args(argv)
    if ours.isolation not in (None, "process"):
        parser.exit(2, f"vfl-sim-supernode: --isolation is always 'process' here, not {ours.isolation!r}\n")
    if ours.host not in (None, "127.0.0.1", "localhost"):
        parser.exit(2, "vfl-sim-supernode: the Runtime API is for the party process beside it: --host 127.0.0.1\n")
    if ours.poll_interval <= 0:
        parser.exit(2, f"vfl-sim-supernode: --poll-interval must be > 0, not {ours.poll_interval}\n")
    return ours, flower


def _supervise(party: subprocess.Popen[bytes]) -> None:
    """End this SuperNode (as SIGTERM would) once its party process has exited."""

    def loop() -> None:
        code = party.wait()
        print(f"vfl-sim-supernode: the party process exited with code {code}; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=loop, daemon=True, name="party-watch").start()


def main(argv: list[str] | None = None) -> None:
    """Run the SuperNode and its party process (arguments: those of ``flower-supernode``)."""
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "-V", "--version") for a in args):
        sys.argv = ["flower-supernode", *args]
        from flwr.supernode.cli.flower_supernode import flower_supernode

        flower_supernode()
        return
    ours, flower = _split_args(args)
    port = ours.port or free_port()
    address = f"127.0.0.1:{port}"
    party = subprocess.Popen(
        die_with_parent(
            [
                sys.executable,
                "-m",
                "vfl_sim.runtimes.flower_exec",
                "--runtime-api-address",
                address,
                "--poll-interval",
                str(ours.poll_interval),
                "--parent-pid",
                str(os.getpid()),
            ]
        )
    )
    _supervise(party)
    pace_supernode(ours.poll_interval)
    sys.argv = ["flower-supernode", *flower, "--isolation", "process", "--host", "127.0.0.1", "--port", str(port)]
    from flwr.supernode.cli.flower_supernode import flower_supernode

    try:
        flower_supernode()
    finally:
        if party.poll() is None:
            party.terminate()
            try:
                party.wait(timeout=5)
            except subprocess.TimeoutExpired:
                party.kill()


if __name__ == "__main__":
    main()
