"""JSON-lines export of the ledger, verifiable offline with the public key alone.

Lines are read strictly (``tracer._json``): a duplicate key, a ``seq`` that is not an
integer, or a field that is not part of a signed entry makes the line tampered.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .._json import loads_strict
from ..errors import LedgerTampered
from .entries import Entry, verify_chain
from .store import Ledger, verify_checkpoint

__all__ = ["export_lines", "read_export", "verify_export"]


def export_lines(ledger: Ledger) -> Iterator[str]:
    for e in ledger.entries():
        yield json.dumps(e.to_json(), sort_keys=True, ensure_ascii=False)


def read_export(lines: Iterable[str]) -> list[Entry]:
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(Entry.from_json(loads_strict(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerTampered(f"line {n} of the export is not a ledger entry ({exc})", entry=n) from exc
    return out


def verify_export(lines: Iterable[str], public_key: Ed25519PublicKey, *, checkpoint: dict[str, Any] | None = None) -> tuple[int, str]:
    entries = read_export(lines)
    result = verify_chain(entries, public_key)
    if checkpoint is not None:
        verify_checkpoint(checkpoint, public_key, entries)
    return result
