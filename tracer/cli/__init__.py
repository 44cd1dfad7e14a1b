"""The `tracer` command line: a thin layer that parses options and calls the library."""

from __future__ import annotations

import typer

from .._version import __version__
from . import demo_cmd, evaluate_cmd, evidence_cmd, identify_cmd, issue_cmd, keys_cmd, ledger_cmd, probe_cmd, workspace_cmd
from ._common import EXIT_CODES_HELP, STATE, TracerGroup

app = typer.Typer(
    name="tracer",
    cls=TracerGroup,  # errors found while parsing: one line, or the JSON error document under --json
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
    workspace: str = typer.Option(None, "--workspace", "-w", metavar="DIR",
        help="Workspace folder (default: $TRACER_WORKSPACE, else the current folder or a parent); also accepted after the command."),
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

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        pass


def main() -> None:
    _sigterm_as_interrupt()
    app()
