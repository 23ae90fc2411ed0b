"""A progress bar for long evaluations: rich on a terminal (stderr, so stdout stays clean for the
results table), silent otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def progress_bar(total: int, description: str, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``, which moves a bar of ``total`` units on by n."""
    console = Console(stderr=True)
    if not enabled or total <= 0 or not console.is_terminal:
        yield lambda n=1: None
        return
    progress = Progress(
        TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=console, transient=True,
    )
    task = progress.add_task(description, total=total)
    with progress:
        yield lambda n=1: progress.advance(task, n)
