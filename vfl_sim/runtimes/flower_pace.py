"""Flower 1.41's waits, fitted to split learning's message rate.

Flower paces its deployment processes for federated rounds that last minutes: a SuperNode waits
3 s before asking the SuperLink again after finding no message and polls for its ClientApp's
reply every 0.5 s, and whoever pulls a message's content (a SuperNode from the SuperLink, the
ServerApp's grid from the SuperLink, a ClientApp from its SuperNode) waits 1 s, doubling, when
the sender has not finished pushing it. Split learning exchanges a message per party per
training step, a few milliseconds of work each, so those waits would be the whole run. These
functions cap them in the process that calls them; nothing else of Flower changes. They patch
module attributes of Flower's (named below), which a Flower upgrade must check: a test fails
when one of them is gone.
"""

from __future__ import annotations

import functools
import time
from types import ModuleType
from typing import Any

PULL_BACKOFF, PULL_BACKOFF_CAP = 0.002, 0.05
"""First and largest wait (s) before asking again for content that is not there yet."""


class _PacedTime:
    """The ``time`` module with ``sleep`` capped (installed in one Flower module only)."""

    def __init__(self, module: ModuleType, cap: float) -> None:
        self._module, self._cap = module, cap

    def sleep(self, seconds: float) -> None:
        self._module.sleep(min(seconds, self._cap))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)


def _quick_pulls(module: ModuleType) -> None:
    pull = module.pull_objects
    while isinstance(pull, functools.partial):  # once, however often this is called
        pull = pull.func
    quick = functools.partial(pull, initial_backoff=PULL_BACKOFF, backoff_cap=PULL_BACKOFF_CAP)
    module.pull_objects = quick  # type: ignore[attr-defined]


def pace_supernode(cap: float) -> None:
    """Cap the SuperNode loop's sleeps (``flwr.supernode.start_client_internal``) at ``cap``
    seconds and its pulls' backoff at :data:`PULL_BACKOFF_CAP`."""
    from flwr.supernode import start_client_internal

    start_client_internal.time = _PacedTime(time, cap)  # type: ignore[assignment]
    _quick_pulls(start_client_internal)


def pace_grid() -> None:
    """Cap the backoff of the ServerApp grid's pulls of reply content
    (``flwr.superlink.grid.http_grid``) at :data:`PULL_BACKOFF_CAP`."""
    from flwr.superlink.grid import http_grid

    _quick_pulls(http_grid)
