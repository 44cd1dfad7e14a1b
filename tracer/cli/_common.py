"""CLI plumbing shared by every command: options, output, and turning errors into exit codes.

Results go to stdout (one JSON document with --json); progress and diagnostics
go to stderr. Library errors become a one-line diagnosis plus hint; --verbose
adds the traceback (never with local variables).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import EXIT_ERROR, TracerError
from ..workspace import Workspace, find_workspace

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

EXIT_CODES_HELP = (
    "Exit codes: 0 success or a customer identified; 1 a check failed or no customer identified; "
    "2 usage error; 3 runtime error (unreadable file, bad passphrase, network failure, failed gate)."
)

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")


@dataclass
class State:
    workspace: str | None = None
    verbose: bool = False


STATE = State()

F = TypeVar("F", bound=Callable[..., Any])


def progress_bar(enabled: bool = True) -> Progress:
    """Progress bars on stderr, only on a terminal: pipes and logs get the results, not redraws."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, disable=not (enabled and err.is_terminal), transient=True)


def workspace() -> Workspace:
    return find_workspace(STATE.workspace)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def fail(exc: TracerError) -> "typer.Exit":
    err.print(f"[bold red]error:[/] {exc.message}", markup=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {exc.hint}", markup=True)
    return typer.Exit(exc.exit_code)


def handle_errors(fn: F) -> F:
    """Turn library exceptions into a one-line diagnosis and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TracerError as exc:
            if STATE.verbose:
                err.print(traceback.format_exc(), markup=False)
            raise fail(exc) from None
        except KeyboardInterrupt:
            err.print("interrupted; nothing half-written was kept")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, typer.BadParameter):
            raise  # click turns these into exit codes (BadParameter: usage error, exit 2)
        except Exception as exc:  # a bug: say so briefly; traceback only on request
            if STATE.verbose:
                err.print(traceback.format_exc(), markup=False)
            else:
                err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", markup=True)
                err.print("[dim]hint:[/] rerun with --verbose for the traceback and report it", markup=True)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper  # type: ignore[return-value]
