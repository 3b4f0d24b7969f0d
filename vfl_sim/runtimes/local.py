"""The in-process runtime: parties are objects in this process, requests are direct calls."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from vfl_sim.experiment import Experiment
from vfl_sim.runtimes.base import Runtime, register_runtime
from vfl_sim.transport import Transport


@register_runtime("local")
class LocalRuntime(Runtime):
    """``runtime: local``: the experiment builds its parties in this process."""

    starts_processes = False

    @contextmanager
    def parties(self, exp: Experiment) -> Iterator[Transport | None]:
        yield None  # Experiment.run builds in-process parties when given no transport
