"""Progress bars for training and unlearning phases (rich), silent when asked."""

from __future__ import annotations

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
