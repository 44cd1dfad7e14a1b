"""`tracer init`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from ..keys.keyring import get_passphrase
from ..workspace import LOSS_WARNING, init_workspace
from ._common import EXIT_CODES_SEE, JsonOpt, err, handle_errors, print_json


def register(app: typer.Typer) -> None:
    @app.command("init", help="Create a workspace: tracer.toml, encrypted keys/ and the ledger tracer.db.\n\n" + EXIT_CODES_SEE)
    @handle_errors
    def init(
        directory: Path = typer.Argument(Path("."), metavar="DIR", help="Folder for the new workspace (created if missing)."),
        example: str = typer.Option(None, "--example", help="Make a ready workspace for a bundled example: digits, tabular or shapes."),
        json_out: bool = JsonOpt,
    ) -> None:
        from ..examples import example_config, prepare_example

        config_text = example_config(example) if example else None
        passphrase = get_passphrase(confirm=True)
        kwargs: dict[str, Any] = {"config_text": config_text} if config_text else {}
        ws = init_workspace(directory, passphrase=passphrase, **kwargs)
        if example:
            prepare_example(ws, example, progress=not json_out)
            from ..data import load_dataset
            from .issue_cmd import show_gate_resolution

            show_gate_resolution(load_dataset(ws.config), ws.config)
        err.print(f"[bold yellow]warning:[/] {escape(LOSS_WARNING)}")
        if json_out:
            print_json({"workspace": str(ws.root), "config": str(ws.config_path), "ledger": str(ws.ledger_path), "keys": str(ws.keys_dir), "example": example})
        else:
            print(f"created workspace {ws.root}")
