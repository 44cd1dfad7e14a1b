"""The ledger: an append-only, hash-chained, signed log in one SQLite file.

``entries`` is the chain itself. ``customers``, ``issuances``, ``events`` and
``probe_queries`` are typed indexes derived from the entries (written in the
same transaction) so that queries stay simple; ``verify`` rebuilds them from
the chain and compares, so editing an index is detected as well.

Concurrency: WAL mode, a busy timeout, and ``BEGIN IMMEDIATE`` around
read-head/sign/insert, so several processes can append at once and every
entry still links to its true predecessor.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import sqlite_utils
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import LedgerError, LedgerTampered
from .entries import GENESIS_PREV, Entry, canonical, sign_blob, sign_entry, utc_now, verify_blob, verify_chain

__all__ = ["Ledger", "Checkpoint", "make_checkpoint", "verify_checkpoint"]

BUSY_TIMEOUT_MS = 60_000
_CHECKPOINT_DOMAIN = b"tracer-ledger-checkpoint/v1\0"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT NOT NULL, prev TEXT NOT NULL,
    payload TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, signature TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS customers (
    customer_id TEXT PRIMARY KEY, display_name TEXT NOT NULL, entry INTEGER NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS issuances (
    entry INTEGER PRIMARY KEY, customer_id TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    time TEXT NOT NULL, probe_sets TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS issuances_customer ON issuances(customer_id);
CREATE TABLE IF NOT EXISTS events (
    entry INTEGER PRIMARY KEY, kind TEXT NOT NULL, time TEXT NOT NULL, subject TEXT, verdict TEXT);
CREATE TABLE IF NOT EXISTS probe_queries (
    entry INTEGER PRIMARY KEY, session TEXT NOT NULL, idx INTEGER NOT NULL,
    input_sha256 TEXT NOT NULL, response TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS probe_queries_session ON probe_queries(session, idx);
"""
_TABLES = ("entries", "customers", "issuances", "events", "probe_queries")


def _index_rows(e: Entry) -> list[tuple[str, dict[str, Any]]]:
    """The typed-index rows an entry implies (a pure function of the entry)."""
    p = e.payload
    if e.kind == "issuance":
        rows = [("issuances", {"entry": e.seq, "customer_id": p["customer_id"], "model_sha256": p["model_sha256"],
                               "time": e.time, "probe_sets": json.dumps(p["probe_sets"])})]
        if p.get("new_customer"):
            rows.append(("customers", {"customer_id": p["customer_id"], "display_name": p["display_name"],
                                       "entry": e.seq, "time": e.time}))
        return rows
    if e.kind == "probe-query":
        return [("probe_queries", {"entry": e.seq, "session": p["session"], "idx": p["idx"],
                                   "input_sha256": p["input_sha256"], "response": json.dumps(p["response"])})]
    if e.kind in ("identification", "probe-result", "probe-start", "probe-set-revealed", "evaluation"):
        return [("events", {"entry": e.seq, "kind": e.kind, "time": e.time,
                            "subject": p.get("subject"), "verdict": p.get("verdict")})]
    return []


class Checkpoint(dict):
    """A signed ledger head: {"format", "entries", "head", "time", "signature"}."""


def make_checkpoint(count: int, head: str, key: Ed25519PrivateKey) -> Checkpoint:
    body = {"format": "tracer-checkpoint/1", "entries": count, "head": head, "time": utc_now()}
    return Checkpoint({**body, "signature": sign_blob(key, _CHECKPOINT_DOMAIN, canonical(body))})


def verify_checkpoint(cp: dict[str, Any], public_key: Ed25519PublicKey, entries: list[Entry]) -> None:
    """Raise LedgerTampered unless the checkpoint is authentic and the ledger still contains its head."""
    try:
        body = {k: cp[k] for k in ("format", "entries", "head", "time")}
        sig = cp["signature"]
    except (KeyError, TypeError):
        raise LedgerTampered("the checkpoint file is malformed") from None
    if not verify_blob(public_key, _CHECKPOINT_DOMAIN, canonical(body), sig):
        raise LedgerTampered("the checkpoint's signature is invalid (not made with this workspace's key)")
    n = int(body["entries"])
    if len(entries) < n:
        raise LedgerTampered(f"the ledger has {len(entries)} entries but the checkpoint of {body['time']} saw {n}: entries were truncated", entry=len(entries) + 1)
    if n and entries[n - 1].hash != body["head"]:
        raise LedgerTampered(f"entry {n} differs from the checkpointed head", entry=n)


class Ledger:
    """Open (and create) the ledger at ``path``."""

    def __init__(self, path: Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise LedgerError(f"ledger {self.path} is missing", hint="run `tracer init` or pass --workspace")
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self.db = sqlite_utils.Database(conn)
            if create:
                self._create_schema()
            missing = [t for t in _TABLES if not self.db[t].exists()]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} cannot be opened: {exc}") from None
        if missing:
            raise LedgerError(f"ledger {self.path} lacks table {missing[0]!r} (not a tracer ledger?)")

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        conn = self.db.conn
        conn.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
        for t in _TABLES:
            for op in ("UPDATE", "DELETE"):
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
                    f"BEGIN SELECT RAISE(ABORT, 'tracer ledger is append-only'); END"
                )

    # -- writing ---------------------------------------------------------------------------------

    def append(self, kind: str, payload: dict[str, Any], *, key: Ed25519PrivateKey) -> Entry:
        """Append one signed entry atomically (with its index rows) and return it."""
        return self.append_many([(kind, payload)], key=key)[0]

    def append_many(self, items: list[tuple[str, dict[str, Any]]], *, key: Ed25519PrivateKey) -> list[Entry]:
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0], row[1]) if row else (0, GENESIS_PREV)
                out = []
                for kind, payload in items:
                    payload = json.loads(canonical(payload))  # reject NaN/inf and non-JSON values up front
                    seq += 1
                    e = sign_entry(key, seq=seq, kind=kind, time=utc_now(), prev=prev, payload=payload)
                    conn.execute(
                        "INSERT INTO entries (seq, kind, time, prev, payload, hash, signature) VALUES (?,?,?,?,?,?,?)",
                        (e.seq, e.kind, e.time, e.prev, canonical(e.payload).decode(), e.hash, e.signature),
                    )
                    for table, r in _index_rows(e):
                        cols = ", ".join(r)
                        conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(r))})", tuple(r.values()))
                    prev = e.hash
                    out.append(e)
                conn.execute("COMMIT")
                return out
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"cannot append to ledger {self.path}: {exc}") from None

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        try:
            payload = json.loads(row["payload"])
        except (TypeError, ValueError):
            raise LedgerTampered(f"entry {row['seq']} has a payload that is not JSON (modified)", entry=row["seq"]) from None
        return Entry(row["seq"], row["kind"], row["time"], row["prev"], payload, row["hash"], row["signature"])

    def entries(self, *, kind: str | None = None) -> Iterator[Entry]:
        sql, args = "SELECT * FROM entries", []
        if kind:
            sql, args = sql + " WHERE kind = ?", [kind]
        for row in self.db.query(sql + " ORDER BY seq", args):
            yield self._entry(row)

    def get(self, seq: int) -> Entry:
        rows = list(self.db.query("SELECT * FROM entries WHERE seq = ?", [seq]))
        if not rows:
            raise LedgerError(f"no ledger entry {seq}")
        return self._entry(rows[0])

    def count(self) -> int:
        return self.db.execute("SELECT count(*) FROM entries").fetchone()[0]

    def head(self) -> tuple[int, str]:
        row = self.db.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS_PREV)

    def customers(self) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM customers ORDER BY entry"))

    def issuances(self, customer_id: str | None = None) -> list[Entry]:
        sql, args = "SELECT entry FROM issuances", []
        if customer_id is not None:
            sql, args = sql + " WHERE customer_id = ?", [customer_id]
        return [self.get(r["entry"]) for r in self.db.query(sql + " ORDER BY entry", args)]

    def issued_customer_ids(self) -> list[str]:
        return [r["customer_id"] for r in self.db.query("SELECT customer_id FROM customers ORDER BY entry")]

    def probe_answers(self, session: str) -> dict[int, Any]:
        return {r["idx"]: json.loads(r["response"]) for r in self.db.query(
            "SELECT idx, response FROM probe_queries WHERE session = ? ORDER BY idx", [session])}

    # -- verification ----------------------------------------------------------------------------

    def verify(self, public_key: Ed25519PublicKey, *, checkpoint: dict[str, Any] | None = None) -> tuple[int, str]:
        """Verify the chain, the signatures, the typed indexes and optionally a checkpoint.

        Returns (entry count, head hash); raises :class:`LedgerTampered` at the first bad entry.
        """
        entries = list(self.entries())
        count, head = verify_chain(entries, public_key)
        expected: dict[str, set[str]] = {t: set() for t in _TABLES[1:]}
        for e in entries:
            for table, r in _index_rows(e):
                expected[table].add(json.dumps(r, sort_keys=True))
        for table, want in expected.items():
            have = {json.dumps(dict(r), sort_keys=True) for r in self.db.query(f"SELECT * FROM {table}")}
            if have != want:
                bad = sorted(json.loads(x).get("entry", 0) for x in have ^ want)
                raise LedgerTampered(f"table {table} does not match the signed entries (entry {bad[0]} modified, inserted or deleted)", entry=bad[0])
        if checkpoint is not None:
            verify_checkpoint(checkpoint, public_key, entries)
        return count, head
