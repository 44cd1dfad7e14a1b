"""`tracer keys ...`."""

from __future__ import annotations

import sys

import typer

from ._common import EXIT_CODES_SEE, WorkspaceOpt, handle_errors, workspace

app = typer.Typer(help="Key management.\n\n" + EXIT_CODES_SEE, no_args_is_help=True)


@app.command("export-public", help="Print the public verification key (PEM) so a third party can verify signed records.")
@handle_errors
def export_public(_workspace: str = WorkspaceOpt) -> None:
    sys.stdout.write(workspace().public_key_pem().decode("ascii"))
