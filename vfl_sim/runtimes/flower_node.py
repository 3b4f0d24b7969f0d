"""A party's SuperNode at Flower's message floor: ``flower-supernode`` with its party process.

``python -m vfl_sim.runtimes.flower_node ARGS`` takes ``flower-supernode``'s own arguments and
runs Flower's SuperNode in this process, with two changes that flwr 1.41 offers no option for:

- **Its ClientApps run in one long-lived party process** (:mod:`vfl_sim.runtimes.flower_exec`),
  started here beside the SuperNode when it runs with ``--isolation process`` (Flower's mode
  for an executor of one's own) and started again should it die. It ends with this process.
- **It looks for messages, replies and their content at once**
  (:mod:`vfl_sim.runtimes.flower_pace`): Flower's SuperNode sleeps 3 s whenever the SuperLink
  had no message for it, 0.5 s between looks for its ClientApp's reply, and 1 s or more when a
  message's content has not arrived yet, which made every round of training cost seconds.

Everything else (its connection to the SuperLink, TLS, node config, heartbeats) is Flower's.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from flwr.supernode.cli import flower_supernode

from vfl_sim.runtimes.flower_launch import die_with_parent
from vfl_sim.runtimes.flower_pace import log_to_stderr, pace_object_pulls, pace_supernode

log = logging.getLogger("vfl_sim.flower_node")

RESTART_S = 1.0
"""Seconds before a party process that died is started again."""


def runtime_api_address(argv: Sequence[str]) -> tuple[str, str]:
    """``(isolation, host:port)`` of the SuperNode's Runtime API from its arguments, as a
    client on this host reaches it (a wildcard address as the loopback one)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--isolation", default="subprocess")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", default="9094")
    args, _ = p.parse_known_args(list(argv))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(args.host, args.host)
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return args.isolation, f"{host}:{args.port}"


def party_process_command(address: str) -> list[str]:
    """The party process of the SuperNode whose Runtime API is at ``address`` (this process)."""
    return die_with_parent(
        [
            sys.executable,
            "-m",
            "vfl_sim.runtimes.flower_exec",
            "--runtime-api-address",
            address,
            "--parent-pid",
            str(os.getpid()),
        ]
    )


def keep_party_process(address: str, alive: Callable[[], bool] = lambda: True) -> threading.Thread:
    """Start the party process, and start it again whenever it dies, from a thread that lives
    as long as this process (the parent-death signal follows the starting thread)."""

    def keep() -> None:
        while alive():
            proc = subprocess.Popen(party_process_command(address), stdin=subprocess.DEVNULL)
            code = proc.wait()
            if alive():
                log.warning("the party process exited with code %s; starting it again", code)
                time.sleep(RESTART_S)

    thread = threading.Thread(target=keep, name="vfl-sim-party-process", daemon=True)
    thread.start()
    return thread


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``flower-supernode`` with ``argv`` (default: this process's arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    log_to_stderr(log, "vfl-sim supernode")
    pace_supernode()
    pace_object_pulls()
    isolation, address = runtime_api_address(args)
    if isolation == "process":
        keep_party_process(address)
    sys.argv = ["flower-supernode", *args]
    flower_supernode()


if __name__ == "__main__":
    main()
