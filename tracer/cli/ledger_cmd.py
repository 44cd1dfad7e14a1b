"""`tracer ledger ...`: list, show, verify, export, checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from ..errors import LedgerError, LedgerTampered
from ..keys.keyring import load_public_key
from ..ledger import export_lines, make_checkpoint, verify_export
from ._common import EXIT_CODES_SEE, JsonOpt, WorkspaceOpt, handle_errors, out, print_json, say, workspace

app = typer.Typer(help="The signed, append-only evidence ledger.\n\n" + EXIT_CODES_SEE, no_args_is_help=True)


def _summary(payload: dict) -> str:
    for key in ("customer_id", "subject", "suspect_sha256", "session"):
        if key in payload:
            return f"{key}={payload[key]}" + (f" verdict={payload['verdict']}" if "verdict" in payload else "")
    return ""


@app.command("list", help="List ledger entries, oldest first.")
@handle_errors
def list_(kind: str = typer.Option(None, "--kind", help="Only entries of this kind (issuance, identification, probe-result, ...)."), json_out: bool = JsonOpt,
          _workspace: str = WorkspaceOpt) -> None:
    with workspace().ledger() as ledger:
        entries = list(ledger.entries(kind=kind))
    if json_out:
        print_json([{"seq": e.seq, "kind": e.kind, "time": e.time, "hash": e.hash} for e in entries])
        return
    for e in entries:
        out.print(f"{e.seq:>6}  {e.time}  {e.kind:<20} {_summary(e.payload)}", markup=False)


@app.command("show", help="Show one entry in full.")
@handle_errors
def show(entry_id: int = typer.Argument(..., metavar="ID", help="Entry number (seq)."), json_out: bool = JsonOpt,
         _workspace: str = WorkspaceOpt) -> None:
    with workspace().ledger() as ledger:
        e = ledger.get(entry_id)
    if json_out:
        print_json(e.to_json())
    else:
        out.print(json.dumps(e.to_json(), indent=2, ensure_ascii=False), markup=False)


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise LedgerError(f"cannot read {what} {path}: {exc}") from exc


@app.command("verify", help="Check every hash link and signature; exit 1 naming the first bad entry.")
@handle_errors
def verify(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A checkpoint file from `tracer ledger checkpoint`: also detects truncation."),
    export: Path = typer.Option(None, "--export", help="Verify an exported JSON-lines file instead of the workspace ledger."),
    public_key: Path = typer.Option(None, "--public-key", help="PEM public key to verify with (default: the workspace's)."),
    json_out: bool = JsonOpt,
    _workspace: str = WorkspaceOpt,
) -> None:
    cp = _read_json(checkpoint, "checkpoint") if checkpoint else None
    if public_key is not None:
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            raise LedgerError(f"cannot read public key {public_key}: {exc.strerror}") from exc
    else:
        pem = workspace().public_key_pem()
    key = load_public_key(pem)
    try:
        if export is not None:
            try:
                text = export.read_text(encoding="utf-8")
            except OSError as exc:
                raise LedgerError(f"cannot read export {export}: {exc.strerror}") from exc
            count, head = verify_export(text.splitlines(), key, checkpoint=cp)
        else:
            with workspace().ledger() as ledger:
                count, head = ledger.verify(key, checkpoint=cp)
    except LedgerTampered as exc:
        if json_out:
            print_json({"ok": False, "first_bad_entry": exc.entry, "error": exc.message})
            raise typer.Exit(exc.exit_code)
        raise
    if json_out:
        print_json({"ok": True, "entries": count, "head": head})
    else:
        out.print(f"ledger OK: {count} entries, head {head}", markup=False)


@app.command("export", help="Write all entries as JSON lines, verifiable offline with the public key alone.")
@handle_errors
def export(output: Path = typer.Option(None, "--output", "-o", help="File to write (default: stdout)."), _workspace: str = WorkspaceOpt) -> None:
    with workspace().ledger() as ledger:
        lines = [line + "\n" for line in export_lines(ledger)]
    if output is None:
        sys.stdout.writelines(lines)
    else:
        from .._files import atomic_write_bytes

        atomic_write_bytes(output, "".join(lines).encode("utf-8"))
        say(f"wrote {len(lines)} entries to {output}")


@app.command("checkpoint", help="Print a signed head (entry count, head hash, time) to publish or file elsewhere.")
@handle_errors
def checkpoint(output: Path = typer.Option(None, "--output", "-o", help="Also write it to this file."), _workspace: str = WorkspaceOpt) -> None:
    ws = workspace()
    keyring = ws.unlock(master=False, signing=True)
    with ws.ledger() as ledger:
        count, head = ledger.head()
    cp = make_checkpoint(count, head, keyring.signing_key)
    text = json.dumps(cp, indent=2) + "\n"
    if output is not None:
        from .._files import atomic_write_bytes

        atomic_write_bytes(output, text.encode())
    sys.stdout.write(text)
