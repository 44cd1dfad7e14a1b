"""The `tracer` command line: a thin layer that parses options and calls the library."""

from __future__ import annotations

import sys

import typer

from .._version import __version__
from ..errors import EXIT_USAGE, TracerError
from ._common import EXIT_CODES_HELP, STATE, error_document, fail, print_json
from . import demo_cmd, evaluate_cmd, evidence_cmd, identify_cmd, issue_cmd, keys_cmd, ledger_cmd, probe_cmd, workspace_cmd

app = typer.Typer(
    name="tracer",
    help="Per-customer fingerprinting and leak tracing for ML models.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tracer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    workspace: str = typer.Option(None, "--workspace", "-w", metavar="DIR", help="Workspace folder (default: $TRACER_WORKSPACE, else the current folder or a parent); also accepted after the command."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks of errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    STATE.workspace = workspace
    STATE.verbose = verbose


workspace_cmd.register(app)
demo_cmd.register(app)
issue_cmd.register(app)
identify_cmd.register(app)
evaluate_cmd.register(app)
probe_cmd.register(app)
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(evidence_cmd.app, name="evidence")


def _sigterm_as_interrupt() -> None:
    """Turn SIGTERM into KeyboardInterrupt so cleanup handlers run (nothing half-written)."""
    import signal

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        pass


def _json_requested(args: list[str]) -> bool:
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _parse_error(exc: Exception, *, json_out: bool) -> int:
    """A usage error click found while parsing: typer's own message on stderr, plus the JSON document under --json."""
    from typer import rich_utils

    code = getattr(exc, "exit_code", EXIT_USAGE)
    rich_utils.rich_format_error(exc)  # type: ignore[arg-type]
    if json_out:
        ctx = getattr(exc, "ctx", None)
        hint = f"see `{ctx.command_path} --help`" if ctx is not None else "see `tracer --help`"
        print_json(error_document(exc.format_message(), hint=hint, exit_code=code))  # type: ignore[attr-defined]
    return code


def main() -> None:
    """The `tracer` entry point: typer's app, plus the error paths that happen before a command runs."""
    from typer._click.exceptions import ClickException  # typer vendors click; never `import click`

    _sigterm_as_interrupt()
    json_out = _json_requested(sys.argv[1:])
    try:
        if not json_out:
            app()
            return
        rv = app(standalone_mode=False)  # so that parse errors reach us and become a JSON document
    except TracerError as exc:  # raised by a shared option's check while parsing (e.g. --alpha)
        sys.exit(fail(exc, json_out=json_out).exit_code)
    except ClickException as exc:
        sys.exit(_parse_error(exc, json_out=json_out))
    except typer.Abort:
        print_json(error_document("aborted", hint=None, exit_code=1))
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)
