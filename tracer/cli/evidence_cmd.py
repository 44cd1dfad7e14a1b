"""`tracer evidence verify FILE --public-key PEM`: check a signed evidence file; needs no workspace."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from .._json import JSONSyntaxError, StrictJSONError, loads_strict
from ..errors import EXIT_FAILED, KeyFileError, LedgerTampered, TracerError
from ._common import EXIT_CODES_SEE, JsonOpt, err, handle_errors, out, print_json

app = typer.Typer(help="Signed evidence files written beside identification reports.\n\n" + EXIT_CODES_SEE, no_args_is_help=True)


def _read_evidence(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise TracerError(f"cannot read evidence file {path}: {why}") from exc
    try:
        doc = loads_strict(text)
    except JSONSyntaxError as exc:
        raise TracerError(f"evidence file {path} is {exc}") from exc
    except StrictJSONError as exc:  # parsable, but crafted: a duplicate key could make readers disagree
        raise LedgerTampered(f"evidence check failed: evidence file {path} was tampered with: {exc}",
                             hint="the evidence file was modified; ask its sender for the original") from exc
    if not isinstance(doc, dict):
        raise TracerError(f"evidence file {path} is not a tracer evidence document (not a JSON object)")
    return doc


@app.command("verify", help=(
    "Check an evidence file with the vendor's public key alone (from `tracer keys export-public`): its signature, "
    "and the hash and signature of every ledger record it embeds. Works without a workspace.\n\n"
    "Exit 0 if everything is valid, 1 if any check fails, 3 if the file or key cannot be read."
))
@handle_errors
def verify(
    file: Path = typer.Argument(..., metavar="FILE", help="The .evidence.json file written beside a report."),
    public_key: Path = typer.Option(..., "--public-key", help="The vendor's public key (PEM), from `tracer keys export-public`."),
    json_out: bool = JsonOpt,
) -> None:
    from ..keys.keyring import load_public_key
    from ..report import check_evidence
    from ..report.evidence import key_fingerprint

    try:
        pem = public_key.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read public key {public_key}: {exc.strerror}") from exc
    key = load_public_key(pem)
    doc = _read_evidence(file)
    check = check_evidence(doc, key)
    raw_result = doc.get("result")
    result: dict = raw_result if isinstance(raw_result, dict) else {}
    summary = {
        "valid": check.ok,
        "file": str(file),
        "key_sha256": key_fingerprint(key),
        "verdict": result.get("verdict"),
        "customers": result.get("customers"),
        "model_sha256": result.get("model_sha256"),
        "created": doc.get("created"),
        "checks": check.passed,
        "failures": check.failed,
    }
    if json_out:
        print_json(summary)
    elif check.ok:
        out.print(f"VALID: {file.name} is authentic and unmodified (key sha256 {summary['key_sha256']})", markup=False)
        for line in check.passed:
            out.print(f"  ok  {line}", markup=False)
        named = ", ".join(map(str, result.get("customers") or [])) or "no customer"
        out.print(f"verdict: {result.get('verdict')} ({named}), suspect sha256 {result.get('model_sha256')}", markup=False)
    if not check.ok:
        if not json_out:
            err.print(f"[bold red]error:[/] {escape('evidence check failed: ' + '; '.join(check.failed))}")
        raise typer.Exit(EXIT_FAILED)
