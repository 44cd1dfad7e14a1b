"""Ledger entries: canonical encoding, hash chaining and Ed25519 signatures.

An entry is ``{"seq", "kind", "time", "prev", "payload"}``. Its hash is
SHA-256 over the RFC 8785 canonical JSON of those five fields, and ``prev``
is the previous entry's hash (64 zeros for the first), so changing, removing,
reordering or inserting any entry breaks the chain. The signature is Ed25519
over ``b"tracer-ledger-entry/v1\\0" + hash``: without the private key nobody
can re-chain a modified ledger. This module is pure: no database, so the same
code verifies a live ledger and an exported JSON-lines file offline.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import LedgerTampered

__all__ = ["Entry", "GENESIS_PREV", "canonical", "entry_hash", "sign_entry", "verify_chain", "utc_now", "sign_blob", "verify_blob"]

GENESIS_PREV = "0" * 64
_ENTRY_DOMAIN = b"tracer-ledger-entry/v1\0"
ENTRY_FIELDS = frozenset({"seq", "kind", "time", "prev", "payload", "hash", "signature"})


def utc_now() -> str:
    """UTC time as ISO-8601 with microseconds and a Z suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes."""
    return rfc8785.dumps(obj)


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: str
    time: str
    prev: str
    payload: dict[str, Any]
    hash: str
    signature: str

    def body(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": self.time, "prev": self.prev, "payload": self.payload}

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "hash": self.hash, "signature": self.signature}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Entry:
        """Read an entry exactly as :meth:`to_json` wrote it; raise ValueError otherwise.

        Strict on purpose: ``seq`` must be an integer (not a bool, float or string), the
        other fields strings, ``payload`` an object, and no field may be added, since
        nobody signed it and a reader could be misled by it.
        """
        if not isinstance(doc, dict):
            raise ValueError("a ledger entry must be a JSON object")
        extra, missing = set(doc) - ENTRY_FIELDS, ENTRY_FIELDS - set(doc)
        if missing:
            raise ValueError(f"field {sorted(missing)[0]!r} is missing")
        if extra:
            raise ValueError(f"field {sorted(extra)[0][:40]!r} is not part of a signed entry")
        seq = doc["seq"]
        if type(seq) is not int:
            raise ValueError(f"seq must be an integer, not {type(seq).__name__}")
        for name in ("kind", "time", "prev", "hash", "signature"):
            if not isinstance(doc[name], str):
                raise ValueError(f"{name} must be a string")
        if not isinstance(doc["payload"], dict):
            raise ValueError("payload must be a JSON object")
        return cls(seq=seq, kind=doc["kind"], time=doc["time"], prev=doc["prev"],
                   payload=doc["payload"], hash=doc["hash"], signature=doc["signature"])


def entry_hash(seq: int, kind: str, time: str, prev: str, payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({"seq": seq, "kind": kind, "time": time, "prev": prev, "payload": payload})).hexdigest()


def sign_blob(key: Ed25519PrivateKey, domain: bytes, data: bytes) -> str:
    return base64.b64encode(key.sign(domain + data)).decode("ascii")


def verify_blob(key: Ed25519PublicKey, domain: bytes, data: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), domain + data)
        return True
    except (InvalidSignature, ValueError):
        return False


def sign_entry(key: Ed25519PrivateKey, *, seq: int, kind: str, time: str, prev: str, payload: dict[str, Any]) -> Entry:
    h = entry_hash(seq, kind, time, prev, payload)
    return Entry(seq, kind, time, prev, payload, h, sign_blob(key, _ENTRY_DOMAIN, bytes.fromhex(h)))


def verify_chain(entries: Iterable[Entry], public_key: Ed25519PublicKey) -> tuple[int, str]:
    """Check every link, hash and signature; return (count, head hash).

    Raises :class:`LedgerTampered` naming the first bad entry.
    """
    prev, count = GENESIS_PREV, 0
    for expected_seq, e in enumerate(entries, start=1):
        where = f"entry {e.seq}"
        if e.seq != expected_seq:
            what = "missing or deleted" if e.seq > expected_seq else "duplicated or reordered"
            raise LedgerTampered(f"entry {expected_seq} is {what} (found seq {e.seq} in its place)", entry=expected_seq)
        if e.prev != prev:
            raise LedgerTampered(f"{where} does not link to the entry before it (removed, reordered or inserted)", entry=e.seq)
        try:
            recomputed = entry_hash(e.seq, e.kind, e.time, e.prev, e.payload)
        except Exception as exc:
            raise LedgerTampered(f"{where} cannot be canonicalized (modified)", entry=e.seq) from exc
        if recomputed != e.hash:
            raise LedgerTampered(f"{where} was modified (its content no longer matches its hash)", entry=e.seq)
        if not verify_blob(public_key, _ENTRY_DOMAIN, bytes.fromhex(e.hash), e.signature):
            raise LedgerTampered(f"{where} has an invalid signature (forged)", entry=e.seq)
        prev, count = e.hash, e.seq
    return count, prev
