"""`tracer ledger ...`: list, show, verify, export, checkpoint."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from ..errors import ConfigError, CustomerError, LedgerError, LedgerTampered, UsageError
from ..fingerprint.revelation import recorded_pool_usage
from ..keys.derive import normalize_customer_id
from ..keys.keyring import load_public_key
from ..ledger import export_lines, list_entries, make_checkpoint, parse_time, read_checkpoint, verify_export
from ._common import EXIT_CODES_SEE, JsonOpt, WorkspaceOpt, err, handle_errors, out, print_json, say, workspace

app = typer.Typer(help="The signed, append-only evidence ledger.\n\n" + EXIT_CODES_SEE, no_args_is_help=True)


def _parsed(option: str, convert: Callable[[str], str], refused: type[Exception]) -> Callable[[str | None], str | None]:
    """An option callback: ``convert`` the value, turning ``refused`` into a usage error (exit 2) naming the option."""
    def callback(value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return convert(value)
        except refused as exc:
            raise UsageError(f"{option}: {exc}") from exc

    return callback


_since = _parsed("--since", parse_time, ValueError)
_customer = _parsed("--customer", normalize_customer_id, CustomerError)


def _keys_per_probe(ws) -> int:
    """The configured keys per probe; listing the ledger must not need a loadable tracer.toml."""
    from ..config import FingerprintConfig

    try:
        return ws.config.fingerprint.keys_per_probe
    except ConfigError:
        return FingerprintConfig().keys_per_probe


@app.command("list", help="List ledger entries, oldest first. Per-query probe entries are hidden unless --all.")
@handle_errors
def list_(
    kind: str = typer.Option(None, "--kind", help="Only entries of this kind (issuance, identification, probe-result, ...)."),
    all_entries: bool = typer.Option(False, "--all", help="Also show the per-query entries of probes (probe-query, probe-failed)."),
    since: str = typer.Option(None, "--since", callback=_since, metavar="TIME",
                              help="Only entries at or after this ISO-8601 date or time (UTC unless it says otherwise)."),
    limit: int = typer.Option(None, "--limit", min=1, metavar="N", help="Only the N most recent matching entries."),
    customer: str = typer.Option(None, "--customer", callback=_customer, metavar="ID",
                                 help="Only entries about this customer (its issuances, and verdicts naming it)."),
    json_out: bool = JsonOpt,
    _workspace: str = WorkspaceOpt,
) -> None:
    ws = workspace()
    with ws.ledger(readonly=True) as ledger:
        listing = list_entries(ledger, kind=kind, all_entries=all_entries, since=since, limit=limit, customer=customer)
        pools = recorded_pool_usage(ledger, _keys_per_probe(ws))
    for usage in pools:  # on stderr, whatever the format: say early that fresh probe keys run low
        warning = usage.warning()
        if warning:
            err.print(f"warning: {warning}", markup=False)
    if json_out:
        print_json(listing.rows())
        return
    for row in listing.rows():
        out.print(f"{row['seq']:>6}  {row['time']}  {row['kind']:<20} {row['summary']}", markup=False)
    if listing.hidden:
        err.print(f"({listing.hidden} per-query probe entries hidden; --all shows them)", markup=False)


@app.command("show", help="Show one entry in full.")
@handle_errors
def show(entry_id: int = typer.Argument(..., metavar="ID", help="Entry number (seq)."), json_out: bool = JsonOpt,
         _workspace: str = WorkspaceOpt) -> None:
    with workspace().ledger(readonly=True) as ledger:
        e = ledger.get(entry_id)
    if json_out:
        print_json(e.to_json())
    else:
        out.print(json.dumps(e.to_json(), indent=2, ensure_ascii=False), markup=False)


def _read_checkpoint(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LedgerError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    return read_checkpoint(data, source=f"checkpoint {path}")


@app.command("verify", help="Check every hash link and signature; exit 1 naming the first bad entry.")
@handle_errors
def verify(
    checkpoint: Path = typer.Option(None, "--checkpoint", help="A checkpoint file from `tracer ledger checkpoint`: also detects truncation."),
    export: Path = typer.Option(None, "--export", help="Verify an exported JSON-lines file instead of the workspace ledger."),
    public_key: Path = typer.Option(None, "--public-key", help="PEM public key to verify with (default: the workspace's)."),
    json_out: bool = JsonOpt,
    _workspace: str = WorkspaceOpt,
) -> None:
    cp = _read_checkpoint(checkpoint) if checkpoint else None
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
            with workspace().ledger(readonly=True) as ledger:
                count, head = ledger.verify(key, checkpoint=cp)
    except LedgerTampered as exc:
        if json_out:
            print_json({"ok": False, "first_bad_entry": exc.entry, "error": exc.message})
            raise typer.Exit(exc.exit_code) from exc
        raise
    if json_out:
        print_json({"ok": True, "entries": count, "head": head})
    else:
        out.print(f"ledger OK: {count} entries, head {head}", markup=False)


@app.command("export", help="Write all entries as JSON lines, verifiable offline with the public key alone.")
@handle_errors
def export(output: Path = typer.Option(None, "--output", "-o", help="File to write (default: stdout)."), _workspace: str = WorkspaceOpt) -> None:
    with workspace().ledger(readonly=True) as ledger:
        lines = [line + "\n" for line in export_lines(ledger)]
    if output is None:
        sys.stdout.writelines(lines)
    else:
        from .._files import atomic_write_bytes

        atomic_write_bytes(output, "".join(lines).encode("utf-8"))
        say(f"wrote {len(lines)} entries to {output}")


@app.command("checkpoint", help=(
    "Verify the ledger, then print a signed head (entry count, head hash, time) to publish or file elsewhere. "
    "Refuses (exit 1) to sign a ledger that does not verify."))
@handle_errors
def checkpoint(output: Path = typer.Option(None, "--output", "-o", help="Also write it to this file."), _workspace: str = WorkspaceOpt) -> None:
    ws = workspace()
    keyring = ws.unlock(master=False, signing=True)
    with ws.ledger(readonly=True) as ledger:
        count, head = ledger.verify(keyring.public_key)
    cp = make_checkpoint(count, head, keyring.signing_key)
    text = json.dumps(cp, indent=2) + "\n"
    if output is not None:
        from .._files import atomic_write_bytes

        atomic_write_bytes(output, text.encode())
    sys.stdout.write(text)
