"""Progress bars for training and unlearning phases (rich), silent when asked."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressReporter:
    """One bar per phase; ``enabled=False`` makes every phase a no-op."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    @contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[float], None]]:
        """Yield a step callback ``(loss) -> None`` that advances the bar and shows the loss."""
        if not self.enabled:
            yield lambda loss: None
            return
        with Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:>8}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as bar:
            task = bar.add_task(description, total=total, loss="")

            def step(loss: float) -> None:
                bar.update(task, advance=1, loss=f"{loss:.4f}")

            yield step


class LogProgress(ProgressReporter):
    """Progress as log lines, for processes whose output is streamed rather than shown on a
    terminal (the Flower ServerApp, whose output ``flwr log`` relays): a line when a phase
    starts, about every tenth of it, and when it ends."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(enabled=True)
        self.log = log

    @contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[float], None]]:
        self.log(f"{description}: started ({total} steps)" if total else f"{description}: started")
        done = 0
        every = max(1, (total or 0) // 10)
        start = time.perf_counter()

        def step(loss: float) -> None:
            nonlocal done
            done += 1
            if done % every == 0 and done != total:
                self.log(f"{description}: {done}/{total} steps, loss {loss:.4f}, {time.perf_counter() - start:.1f}s")

        yield step
        self.log(f"{description}: done in {time.perf_counter() - start:.1f}s")
