"""The one progress-bar construction (CLI commands and the demo): on stderr, and only on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar"]


def progress_bar(console: Console, *, enabled: bool = True, force: bool = False) -> Progress:
    """Bars that vanish when done (labels are plain text, never markup).

    Disabled when ``console`` is not a terminal (pipes and logs get results, not redraws), unless
    ``force`` (``--progress bar``): then drawn anyway, and kept where there is no terminal to clear.
    """
    shown = force or (enabled and console.is_terminal)
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=not shown, transient=console.is_terminal or not force)
