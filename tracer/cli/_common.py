"""CLI plumbing shared by every command: options, output, and turning errors into exit codes.

Results go to stdout (one JSON document with --json); progress and diagnostics
go to stderr. Library errors become a one-line diagnosis plus hint; --verbose
adds the traceback (never with local variables) and any library warnings.
With --json, a failure also prints one JSON error document on stdout:
``{"error": ..., "hint": ..., "exit_code": ...}``.

Every piece of text that comes from a user, a file or a server is printed
escaped (or with markup off): rich must never read it as markup.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from typer.core import TyperGroup

from ..errors import EXIT_ERROR, EXIT_USAGE, TracerError, UsageError
from ..workspace import Workspace, find_workspace

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

EXIT_CODES_HELP = (
    "Exit codes: 0 success or a customer identified; 1 a check failed or no customer identified; "
    "2 usage error; 3 runtime error (unreadable file, bad passphrase, network failure, failed gate, vendor code failed); "
    "130 interrupted."
)
#: What each command says about exit codes: the codes themselves are listed once, in `tracer --help`.
EXIT_CODES_SEE = "Exit codes as in `tracer --help`."

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else (on failure: {error, hint, exit_code}).")


@dataclass
class State:
    workspace: str | None = None
    verbose: bool = False


STATE = State()

F = TypeVar("F", bound=Callable[..., Any])


# -- shared options ----------------------------------------------------------------------------------


def check_alpha(value: float | None) -> float | None:
    """--alpha must lie strictly between 0 and 1 (NaN does not)."""
    if value is not None and not 0 < value < 1:
        raise UsageError(f"--alpha {value:g} is not between 0 and 1 (exclusive)", hint="e.g. --alpha 1e-6")
    return value


AlphaOpt = typer.Option(
    None, "--alpha", callback=check_alpha,
    help="Family-wise bound on naming any innocent customer, in (0, 1) (default: identify.alpha in tracer.toml, 1e-6).",
)


def _set_workspace(value: str | None) -> str | None:
    if value is not None:
        STATE.workspace = value  # after the subcommand it overrides one given before it
    return value


#: ``-w/--workspace`` after the subcommand (``tracer ledger verify -w DIR``), as well as before it.
WorkspaceOpt = typer.Option(None, "--workspace", "-w", callback=_set_workspace, expose_value=False, metavar="DIR",
                            help="Workspace folder (also accepted before the command).")


def _no_bool_metavar() -> None:
    """typer shows ``<bool>`` after every flag (``--json <bool>``), which reads as if the flag took a value."""
    from typer.core import TyperOption

    if getattr(TyperOption.display_type_rich, "_tracer", False):
        return
    original = TyperOption.display_type_rich

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._tracer = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_no_bool_metavar()


# -- output ------------------------------------------------------------------------------------------


PROGRESS_MODES = ("auto", "bar", "log", "none")


def check_progress(value: str) -> str:
    """--progress must name one of :data:`PROGRESS_MODES`."""
    mode = (value or "auto").strip().lower()
    if mode not in PROGRESS_MODES:
        raise UsageError(f"--progress {value!r} is not one of {', '.join(PROGRESS_MODES)}", hint="e.g. --progress log in a batch job")
    return mode


ProgressOpt = typer.Option(
    "auto", "--progress", metavar="MODE", callback=check_progress,
    help="auto: a bar on a terminal, else log lines (none with --json); bar; log: one timestamped line on stderr "
         "per stage and every 10 % of its steps; none.",
)


def _now() -> str:
    from datetime import datetime

    return datetime.now().astimezone().isoformat(timespec="seconds")


class LogProgress:
    """The subset of rich's Progress the commands use, as timestamped lines on stderr (for logs and pipes).

    One line when a counted stage starts (at its first news), every ``1/every`` of its steps, when a run starts over (a retry
    or a polish of issuance), and when a stage ends.
    """

    def __init__(self, every: int = 10) -> None:
        self.every = every
        self.tasks: dict[int, dict[str, Any]] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def _line(self, text: str) -> None:
        err.print(f"{_now()} {text}", markup=False, highlight=False)

    def _count(self, t: dict[str, Any]) -> str:
        return f"{t['completed']}/{t['total']}" if t["total"] else str(t["completed"])

    def add_task(self, description: str, total: float | None = None, **_: Any) -> TaskID:
        tid = TaskID(len(self.tasks))
        # the start line waits for the stage's first news: a command that fails first prints only its error
        self.tasks[tid] = {"description": description, "total": int(total) if total else None, "completed": 0, "logged": 0,
                           "t0": time.monotonic(), "started": not total}
        return tid

    def _started(self, t: dict[str, Any]) -> None:
        if not t["started"]:
            t["started"] = True
            self._line(f"{t['description']}: started, 0/{t['total']}")

    def update(self, tid: int, *, completed: float | None = None, advance: float | None = None, description: str | None = None, **_: Any) -> None:
        t = self.tasks[tid]
        self._started(t)
        if description is not None and description != t["description"]:
            t["description"] = description
            self._line(f"{description}")
        if advance is not None:
            completed = t["completed"] + advance
        if completed is None:
            return
        completed = int(completed)
        if completed < t["completed"]:
            self._line(f"{t['description']}: another run (a retry, or a polish of a missed try)")
            t["logged"] = completed
        t["completed"] = completed
        step = max(1, (t["total"] or self.every) // self.every)
        if completed - t["logged"] >= step or (t["total"] and completed >= t["total"] > t["logged"]):
            t["logged"] = completed
            self._line(f"{t['description']}: {self._count(t)} ({time.monotonic() - t['t0']:.1f}s)")

    def advance(self, tid: int, advance: float = 1) -> None:
        self.update(tid, advance=advance)

    def reset(self, tid: int, **_: Any) -> None:
        t = self.tasks[tid]
        t.update(completed=0, logged=0, t0=time.monotonic())

    def remove_task(self, tid: int) -> None:
        t = self.tasks.pop(tid)
        self._line(f"{t['description']}: done ({time.monotonic() - t['t0']:.1f}s)")


class _NoProgress(LogProgress):
    def _line(self, text: str) -> None:
        return None


def progress_bar(enabled: bool = True, mode: str = "auto") -> Progress | LogProgress:
    """Progress on stderr: a bar on a terminal, timestamped log lines elsewhere (``--progress``), or nothing.

    ``enabled=False`` (``--json``) silences ``auto`` only; an explicit ``bar`` or ``log`` is honoured,
    since stderr stays free of the JSON document either way.
    """
    mode = check_progress(mode)
    if mode == "auto":
        mode = "none" if not enabled else ("bar" if err.is_terminal else "log")
    if mode == "log":
        return LogProgress()
    if mode == "none":
        return _NoProgress()
    from .._progress import progress_bar as bars

    return bars(err, force=True)


def workspace() -> Workspace:
    return find_workspace(STATE.workspace)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def say(text: str) -> None:
    """A plain line on stderr, never read as markup."""
    err.print(text, markup=False)


def warn(text: str) -> None:
    """``warning: TEXT`` on stderr, the label highlighted on a terminal, the text never read as markup."""
    err.print("[bold yellow]warning:[/] ", end="")
    say(text)


def error_document(message: str, *, hint: str | None, exit_code: int) -> dict[str, Any]:
    """The one JSON document a failing command prints on stdout under --json."""
    return {"error": message, "hint": hint, "exit_code": exit_code}


def report_error(message: str, *, hint: str | None, exit_code: int, json_out: bool, label: str = "error") -> typer.Exit:
    """One line (plus hint) on stderr, the JSON error document on stdout under --json; returns the Exit to raise."""
    err.print(f"[bold red]{label}:[/] {escape(message)}")
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}")
    if json_out:
        print_json(error_document(message, hint=hint, exit_code=exit_code))
    return typer.Exit(exit_code)


def fail(exc: TracerError, *, json_out: bool = False) -> typer.Exit:
    return report_error(exc.message, hint=exc.hint, exit_code=exc.exit_code, json_out=json_out)


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Library warnings are shown with --verbose only: without it they would bury the one-line diagnosis."""
    if not STATE.verbose:
        return
    for w in caught:
        say(f"warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})")


# -- the error handler -------------------------------------------------------------------------------


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, *, json_out: bool) -> Any:
    try:
        return fn(*args, **kwargs)
    except TracerError as exc:
        if STATE.verbose:
            say(traceback.format_exc())
        raise fail(exc, json_out=json_out) from None
    except KeyboardInterrupt:
        say("interrupted; nothing half-written was kept")
        if json_out:
            print_json(error_document("interrupted; nothing half-written was kept", hint=None, exit_code=130))
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise  # click turns these into exit codes
    except OSError as exc:  # the file system said no (disk full, file too large, permissions) where no diagnosis was written
        if STATE.verbose:
            say(traceback.format_exc())
        where = f"{exc.filename}: " if exc.filename else ""
        raise report_error(f"{where}{exc.strerror or exc}", hint="free disk space, raise the file-size limit or fix permissions, then rerun",
                           exit_code=EXIT_ERROR, json_out=json_out) from None
    except Exception as exc:  # a bug: say so briefly; traceback only on request
        if STATE.verbose:
            say(traceback.format_exc())
        raise report_error(f"{type(exc).__name__}: {exc}", hint="rerun with --verbose for the traceback and report it",
                           exit_code=EXIT_ERROR, json_out=json_out, label="internal error") from None


def handle_errors(fn: F) -> F:
    """Turn library exceptions into a one-line diagnosis and the documented exit code.

    Whether --json was given is read from the command's ``json_out`` argument.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        with warnings.catch_warnings(record=True) as caught:
            try:
                return _run(fn, args, kwargs, json_out=json_out)
            finally:
                _show_warnings(caught)

    return wrapper  # type: ignore[return-value]


# -- errors found while the command line is parsed ------------------------------------------------------


def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _parse_error(exc: Any, *, json_out: bool) -> int:
    """A usage error click found while parsing: typer's own message on stderr, plus the JSON document under --json."""
    from typer import rich_utils

    code = getattr(exc, "exit_code", EXIT_USAGE)
    rich_utils.rich_format_error(exc)
    if json_out:
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `tracer --help`"
        print_json(error_document(exc.format_message(), hint=hint, exit_code=code))
    return code


class TracerGroup(TyperGroup):
    """The root command: also turns errors raised while parsing into the documented output.

    Those are click's usage errors (exit 2), under --json also as the JSON error document, and
    the TracerErrors of shared option checks (e.g. --alpha), which click itself would not catch.
    """

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        from typer._click.exceptions import ClickException  # typer vendors click; never `import click`

        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        json_out = _json_requested(argv)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, windows_expand_args=windows_expand_args, **extra)
        except TracerError as exc:
            sys.exit(fail(exc, json_out=json_out).exit_code)
        except ClickException as exc:
            sys.exit(_parse_error(exc, json_out=json_out))
        except typer.Abort:
            sys.exit(report_error("aborted", hint=None, exit_code=1, json_out=json_out).exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)
