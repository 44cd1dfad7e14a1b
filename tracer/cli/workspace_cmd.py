"""`tracer init`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..keys.keyring import get_passphrase
from ..workspace import LOSS_WARNING, init_workspace
from ._common import EXIT_CODES_SEE, JsonOpt, handle_errors, print_json, warn


def register(app: typer.Typer) -> None:
    @app.command("init", help="Create a workspace: tracer.toml, encrypted keys/ and the ledger tracer.db.\n\n" + EXIT_CODES_SEE)
    @handle_errors
    def init(
        directory: Path = typer.Argument(Path("."), metavar="DIR", help="Folder for the new workspace (created if missing)."),
        example: str = typer.Option(None, "--example", help="Make a ready workspace for a bundled example: digits, tabular or shapes."),
        key_style: str = typer.Option(None, "--key-style", metavar="STYLE",
                                      help="Fingerprint keys: natural-mix/v3 (keys that look like real queries; 3+ classes; what the generic "
                                           "template writes), natural-mix/v2 (its image keys are smoother than real ones) or v1 (its tabular keys "
                                           "plain mixtures), kept for copies issued with them, or "
                                           "uniform-grid/v1 (noise probe sets, with the rank code: the style for two-class "
                                           "tasks and the bundled examples' own). The [embedding] settings follow it; --example digits with "
                                           "a natural-mix style takes the 4x CNN and the rank code."),
        json_out: bool = JsonOpt,
    ) -> None:
        from ..config import with_key_style
        from ..examples import example_config, prepare_example
        from ..workspace import GENERIC_CONFIG

        config_text = example_config(example, key_style=key_style) if example else None
        if key_style and not example:
            config_text = with_key_style(GENERIC_CONFIG, key_style)
        passphrase = get_passphrase(confirm=True)
        kwargs: dict[str, Any] = {"config_text": config_text, "starter": not example} if config_text else {}
        ws = init_workspace(directory, passphrase=passphrase, **kwargs)
        if example:
            prepare_example(ws, example, progress=not json_out)
            from ..data import load_dataset
            from .issue_cmd import show_gate_resolution

            show_gate_resolution(load_dataset(ws.config), ws.config)
        warn(LOSS_WARNING)
        if json_out:
            print_json({"workspace": str(ws.root), "config": str(ws.config_path), "ledger": str(ws.ledger_path), "keys": str(ws.keys_dir), "example": example})
        else:
            print(f"created workspace {ws.root}")
