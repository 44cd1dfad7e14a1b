"""The one progress-bar construction (CLI commands and the demo): on stderr, and only on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


def progress_bar(console: Console, *, enabled: bool = True) -> Progress:
    """Bars that vanish when done; disabled when ``console`` is not a terminal: pipes and logs get results, not redraws."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not (enabled and console.is_terminal), transient=True)
