"""Flower's fixed waits, shortened to the pace of a round of training (flwr 1.41).

A round of split training is one message to every party and one reply from each, milliseconds
of work apart. Flower 1.41 waits seconds at several points of a message's way, none of which it
offers an option for:

- an idle SuperNode asks the SuperLink for messages every 3 s, and checks every 0.5 s whether
  its ClientApp has replied (``time.sleep(3)`` and ``time.sleep(0.5)`` in
  ``flwr.supernode.start_client_internal``): :func:`pace_supernode`;
- a message is visible before its content has arrived, and whoever pulls it then (a SuperNode
  from the SuperLink, a ClientApp from its SuperNode, the ServerApp a reply) waits 1 s, then
  2 s, ... up to 10 s before asking again (``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``):
  :func:`pace_object_pulls`.

Each is changed in the process that calls it, only on the flwr release these functions know
(:data:`PACED_VERSION`; a test reads Flower's source for the waits). Polls that find nothing back
off (:class:`Backoff`), so an idle federation is not polled every few milliseconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import flwr
import flwr.supercore.inflatable.inflatable_utils as inflatable
import flwr.supernode.start_client_internal as supernode_loop

log = logging.getLogger("vfl_sim.flower_pace")

PACED_VERSION = "1.41."
"""The flwr release whose waits this module knows."""
FLOWER_IDLE_S, FLOWER_REPLY_S = 3, 0.5
"""The two waits of the SuperNode's loop that :func:`pace_supernode` shortens."""
OBJECT_PULL_BACKOFF = (0.002, 0.05)
"""First wait and cap (s) between pulls of a message's content that has not arrived yet
(Flower's: 1 s and 10 s)."""


class Backoff:
    """Waits between polls that found nothing: ``first`` seconds, growing by ``factor`` up to
    ``cap``; :meth:`reset` after a poll that found work.

    A round of training is a message to every party and back within milliseconds, so polls
    right after a message must be quick; a server busy elsewhere (an audit's probes) must not
    be polled that often for minutes.
    """

    def __init__(self, first: float, cap: float, factor: float = 1.5) -> None:
        if not 0 < first <= cap or factor < 1:
            raise ValueError(f"bad backoff: first={first}, cap={cap}, factor={factor}")
        self.first, self.cap, self.factor = first, cap, factor
        self._next = first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        """The wait before the next poll (and grow the one after)."""
        wait = self._next
        self._next = min(self.cap, self._next * self.factor)
        return wait


def known_release() -> bool:
    """Whether this is the flwr release whose waits this module knows (a warning if not)."""
    if flwr.__version__.startswith(PACED_VERSION):
        return True
    log.warning("flwr %s: Flower keeps its own waits (seconds a message)", flwr.__version__)
    return False


def pace_object_pulls(first: float = OBJECT_PULL_BACKOFF[0], cap: float = OBJECT_PULL_BACKOFF[1]) -> bool:
    """Pull a message's content that has not arrived yet again after ``first`` seconds, doubling
    up to ``cap``, in this process; returns whether it did."""
    if not known_release():
        return False
    for function in (inflatable.pull_objects, inflatable.pull_and_inflate_object_from_tree):
        defaults = function.__kwdefaults__
        assert defaults is not None and "initial_backoff" in defaults and "backoff_cap" in defaults
        defaults.update(initial_backoff=first, backoff_cap=cap)
    return True


class PacedTime:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: its two fixed waits
    become ``idle.next()`` and ``reply_wait``; everything else is the ``time`` module."""

    def __init__(self, idle: Backoff, reply_wait: float) -> None:
        self.idle = idle
        self.reply_wait = reply_wait

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_IDLE_S:
            time.sleep(self.idle.next())
        elif seconds == FLOWER_REPLY_S:
            time.sleep(self.reply_wait)
        else:
            time.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def pace_supernode(idle: Backoff | None = None, reply_wait: float = 0.002) -> PacedTime | None:
    """Shorten the waits of Flower's SuperNode loop in this process: the idle wait starts at
    5 ms after each message and backs off to 1 s; the node's own memory is checked for the
    ClientApp's reply every ``reply_wait`` s. Returns the pacer, or None (Flower's waits) on
    another flwr release."""
    if not known_release():
        return None
    paced = PacedTime(idle or Backoff(0.005, 1.0), reply_wait)
    pull = supernode_loop._pull_and_store_message

    def pull_and_reset(*args: Any, **kwargs: Any) -> int | None:
        run_id = pull(*args, **kwargs)
        if run_id is not None:
            paced.idle.reset()  # a message: the next one is likely close behind
        return run_id

    supernode_loop.time = paced  # type: ignore[assignment]
    supernode_loop._pull_and_store_message = pull_and_reset
    return paced


def log_to_stderr(logger: logging.Logger, prefix: str) -> None:
    """Send ``logger``'s records (only its: the root logger's INFO would relay every HTTP request
    Flower makes) to standard error with a time stamp; DEBUG with ``VFL_SIM_FLOWER_TRACE`` set."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if os.environ.get("VFL_SIM_FLOWER_TRACE") else logging.INFO)
    logger.propagate = False
