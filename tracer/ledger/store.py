"""The ledger: an append-only, hash-chained, signed log in one SQLite file.

``entries`` is the chain itself. ``customers``, ``issuances``, ``events`` and
``probe_queries`` are typed indexes derived from the entries (written in the
same transaction) so that queries stay simple; ``verify`` rebuilds them from
the chain and compares, so editing an index is detected as well.

Concurrency: WAL mode (set once, when the file is created: opening never
changes the journal mode, so concurrent first opens cannot race on it), a busy
timeout, and ``BEGIN IMMEDIATE`` around read-head/sign/insert, so several
processes can append at once and every entry still links to its true predecessor.

Binding: every append first checks that the genesis entry names the public key
of the signing key in hand and is signed by it, so nothing is ever appended to a
ledger copied in from another workspace.

Read-only opening (``readonly=True``) never writes: a live workspace is opened
with SQLite's ``mode=ro``; a copy nobody can write (no write permission bit on
the file or its folder, or a read-only file system) and without a ``-wal`` file
is opened ``immutable``, so not even ``-wal``/``-shm`` files are created there.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._json import JSONSyntaxError, StrictJSONError, loads_strict
from ..errors import KeyMismatch, LedgerError, LedgerTampered
from .entries import _ENTRY_DOMAIN, GENESIS_PREV, Entry, canonical, entry_hash, sign_blob, sign_entry, utc_now, verify_blob, verify_chain

__all__ = ["Ledger", "Checkpoint", "make_checkpoint", "verify_checkpoint", "read_checkpoint"]

BUSY_TIMEOUT_MS = 60_000
#: the rank-code style an issuance record carries (NULL: none), as SQL over the entry ``e``
_RANK_STYLE = "json_extract(e.payload, '$.rank_code.style')"
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


def _payload(seq: int, text: Any) -> dict[str, Any]:
    """A stored payload, parsed strictly: a duplicate key is tampering even if the hash would match."""
    try:
        payload = loads_strict(text)
    except (StrictJSONError, TypeError) as exc:
        raise LedgerTampered(f"entry {seq} has a payload that is not JSON (modified): {exc}", entry=seq) from exc
    if not isinstance(payload, dict):
        raise LedgerTampered(f"entry {seq} has a payload that is not a JSON object (modified)", entry=seq)
    return payload


def _signable(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload as it will read back: refuses NaN/inf, non-JSON values and what the strict reader refuses."""
    try:
        out = loads_strict(canonical(payload))
    except (ValueError, TypeError, RecursionError) as exc:
        raise LedgerError(f"cannot record a {kind!r} entry: its payload is not canonical JSON ({type(exc).__name__}: {str(exc)[:120]})") from exc
    if not isinstance(out, dict):
        raise LedgerError(f"cannot record a {kind!r} entry: its payload is not a JSON object")
    return out


class Checkpoint(dict):
    """A signed ledger head: {"format", "entries", "head", "time", "signature"}."""


def make_checkpoint(count: int, head: str, key: Ed25519PrivateKey) -> Checkpoint:
    body = {"format": "tracer-checkpoint/1", "entries": count, "head": head, "time": utc_now()}
    return Checkpoint({**body, "signature": sign_blob(key, _CHECKPOINT_DOMAIN, canonical(body))})


CHECKPOINT_FIELDS = frozenset({"format", "entries", "head", "time", "signature"})


def verify_checkpoint(cp: dict[str, Any], public_key: Ed25519PublicKey, entries: list[Entry]) -> None:
    """Raise LedgerTampered unless the checkpoint is authentic and the ledger still contains its head."""
    if not isinstance(cp, dict) or set(cp) != CHECKPOINT_FIELDS:
        raise LedgerTampered("the checkpoint file is malformed (missing fields, or fields nobody signed)")
    body = {k: cp[k] for k in ("format", "entries", "head", "time")}
    n, sig = body["entries"], cp["signature"]
    if type(n) is not int or n < 0 or not all(isinstance(cp[k], str) for k in ("format", "head", "time", "signature")):
        raise LedgerTampered("the checkpoint file is malformed (a field has the wrong type)")
    if not verify_blob(public_key, _CHECKPOINT_DOMAIN, canonical(body), sig):
        raise LedgerTampered("the checkpoint's signature is invalid (not made with this workspace's key)")
    if len(entries) < n:
        raise LedgerTampered(f"the ledger has {len(entries)} entries but the checkpoint of {body['time']} saw {n}: entries were truncated",
                             entry=len(entries) + 1)
    if n and entries[n - 1].hash != body["head"]:
        raise LedgerTampered(f"entry {n} differs from the checkpointed head", entry=n)


def read_checkpoint(text: str | bytes, *, source: str = "the checkpoint file") -> dict[str, Any]:
    """Parse a checkpoint strictly: not JSON is LedgerError (exit 3); duplicate keys, odd numbers or deep nesting are LedgerTampered (exit 1)."""
    try:
        doc = loads_strict(text)
    except JSONSyntaxError as exc:
        raise LedgerError(f"cannot read {source}: {exc}") from exc
    except StrictJSONError as exc:
        raise LedgerTampered(f"{source} was tampered with: {exc}") from exc
    if not isinstance(doc, dict):
        raise LedgerTampered(f"{source} is malformed (not a JSON object)")
    return doc


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_only_copy(path: Path) -> bool:
    """True for a ledger nobody writes: no write bit on the file or folder, or a read-only file system."""
    try:
        modes = [os.stat(p).st_mode for p in (path, path.parent)]
    except OSError:
        return False
    if any(not (m & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) for m in modes):
        return True
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    if not readonly:
        return sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    wal = Path(str(path) + "-wal")
    immutable = _read_only_copy(path) and not (wal.exists() and wal.stat().st_size > 0)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro" + ("&immutable=1" if immutable else "")
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)


class Ledger:
    """Open the ledger at ``path``: ``create`` makes a new one (in WAL mode), ``readonly`` never writes."""

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly and not create
        if not create and not self.path.exists():
            raise LedgerError(f"ledger {self.path} is missing", hint="run `tracer init` or pass --workspace")
        try:
            conn = _connect(self.path, readonly=self.readonly)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not self.readonly:
                conn.execute("PRAGMA synchronous = FULL")
            self.db = sqlite_utils.Database(conn)
            if create:
                conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file: set once, here only
                self._create_schema()
            missing = [t for t in _TABLES if not self.db[t].exists()]
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"ledger {self.path} cannot be opened: {exc}") from exc
        if missing:
            raise LedgerError(f"ledger {self.path} lacks table {missing[0]!r} (not a tracer ledger?)")

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Ledger:
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
        """Append several entries in one transaction, after checking the ledger is bound to ``key``."""
        items = [(kind, _signable(kind, payload)) for kind, payload in items]
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (row[0], row[1]) if row else (0, GENESIS_PREV)
                if row:
                    self.check_bound_to(key.public_key())
                out = []
                for kind, payload in items:
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
            raise LedgerError(f"cannot append to ledger {self.path}: {exc}") from exc

    # -- reading ---------------------------------------------------------------------------------

    @staticmethod
    def _entry(row: dict[str, Any]) -> Entry:
        return Entry(row["seq"], row["kind"], row["time"], row["prev"], _payload(row["seq"], row["payload"]),
                     row["hash"], row["signature"])

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

    def issuance_seqs(self) -> list[int]:
        """Entry numbers of every issuance, oldest first."""
        return [r[0] for r in self.db.execute("SELECT entry FROM issuances ORDER BY entry").fetchall()]

    def has_issuance(self, customer_id: str) -> bool:
        """True if ``customer_id`` (already normalized) has at least one issuance."""
        return self.db.execute("SELECT 1 FROM issuances WHERE customer_id = ? LIMIT 1", [customer_id]).fetchone() is not None

    def count_issuances_with_sha(self, sha256: str) -> int:
        """How many issuances recorded a copy with this SHA-256 (crash recovery: was it committed?)."""
        return self.db.execute("SELECT count(*) FROM issuances WHERE model_sha256 = ?", [sha256]).fetchone()[0]

    def recorded_key_set_digests(self, set_id: str) -> set[str]:
        """Every digest the issuance records give for key set ``set_id`` (one per distinct record, normally one)."""
        return {str(ps["digest"]) for ps in self._recorded_sets() if ps.get("id") == set_id}

    def issued_customers(self) -> list[tuple[str, str, frozenset[str]]]:
        """(customer id, display name, ids of every probe set its copies carry), in order of first issuance.

        The ids include the rank-code style (``rank-code/v1``) where one of its copies' records carries
        a rank code: what identification reads, per customer, beside the key sets. One SQL query for the
        key sets (each distinct probe-set document parsed once, since most customers share one), one for
        the rank codes.
        """
        rows = self.db.execute(
            "SELECT c.customer_id, c.display_name, group_concat(i.probe_sets, char(10)) FROM customers c "
            "JOIN issuances i ON i.customer_id = c.customer_id GROUP BY c.customer_id ORDER BY c.entry"
        ).fetchall()
        coded: dict[str, set[str]] = {}
        for cid, style in self.db.execute(
                f"SELECT DISTINCT i.customer_id, {_RANK_STYLE} FROM issuances i JOIN entries e ON e.seq = i.entry "
                f"WHERE {_RANK_STYLE} IS NOT NULL").fetchall():
            coded.setdefault(cid, set()).add(str(style))
        parsed: dict[str, frozenset[str]] = {}
        out = []
        for cid, name, docs in rows:
            if docs not in parsed:
                parsed[docs] = frozenset(ps["id"] if isinstance(ps, dict) else str(ps)
                                         for doc in docs.split("\n") for ps in json.loads(doc))
            out.append((cid, name, parsed[docs] | coded[cid] if cid in coded else parsed[docs]))
        return out

    def entry_hash(self, seq: int) -> str | None:
        """The hash of entry ``seq`` (None if there is none): one primary-key lookup."""
        row = self.db.execute("SELECT hash FROM entries WHERE seq = ?", [seq]).fetchone()
        return row[0] if row else None

    def issuances_after(self, seq: int) -> tuple[tuple[int, str], list[tuple[int, str, str, int | None, str | None, str | None]]]:
        """The head and every issuance after entry ``seq``, read in one transaction so that they agree.

        Rows are (entry, customer id, probe_sets JSON, the entry that registered the customer or
        None, display name or None, the record's rank-code style or None), oldest first; a range on
        the issuances' primary key, so an identification that is current but for a few issuances
        reads only those.
        """
        conn = self.db.conn
        conn.execute("BEGIN")
        try:
            head = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            rows = conn.execute(
                f"SELECT i.entry, i.customer_id, i.probe_sets, c.entry, c.display_name, {_RANK_STYLE} FROM issuances i "
                "JOIN entries e ON e.seq = i.entry "
                "LEFT JOIN customers c ON c.customer_id = i.customer_id WHERE i.entry > ? ORDER BY i.entry", [seq]).fetchall()
        finally:
            conn.execute("COMMIT")
        return ((head[0], head[1]) if head else (0, GENESIS_PREV)), rows

    def session_entries(self, session: str, kind: str) -> list[dict[str, Any]]:
        """Payloads of the ``kind`` entries of one probe session, oldest first."""
        if kind == "probe-query":
            rows = self.db.execute("SELECT e.seq, e.payload FROM probe_queries q JOIN entries e ON e.seq = q.entry "
                                   "WHERE q.session = ? ORDER BY q.entry", [session]).fetchall()
            return [_payload(seq, text) for seq, text in rows]
        return [e.payload for e in self.entries(kind=kind) if e.payload.get("session") == session]

    def session_journal(self, session: str) -> dict[str, list[dict[str, Any]]]:
        """Payloads of every entry of one probe session, by kind, oldest first (one SQL query, for --resume)."""
        rows = self.db.execute(
            "SELECT seq, kind, payload FROM entries WHERE kind LIKE 'probe-%' AND json_extract(payload, '$.session') = ? "
            "ORDER BY seq", [session]).fetchall()
        out: dict[str, list[dict[str, Any]]] = {}
        for seq, kind, text in rows:
            out.setdefault(kind, []).append(_payload(seq, text))
        return out

    def _recorded_sets(self) -> Iterator[dict[str, Any]]:
        """Every key-set document of the issuance records, once per distinct record (normally a handful)."""
        for (doc,) in self.db.execute("SELECT DISTINCT probe_sets FROM issuances").fetchall():
            yield from (ps for ps in json.loads(doc) if isinstance(ps, dict))

    def recorded_pools(self) -> dict[str, int]:
        """Key pools (id -> size) the issuance records name."""
        return {str(ps["id"]): int(ps["size"]) for ps in self._recorded_sets() if str(ps.get("id", "")).startswith("pool")}

    def sent_keys(self, pool_id: str) -> set[int]:
        """Pool keys that left for an endpoint: the ``key`` of every ``probe-sent`` entry of ``pool_id`` (revelation per key)."""
        rows = self.db.execute(
            "SELECT DISTINCT json_extract(payload, '$.key') FROM entries WHERE kind = 'probe-sent' "
            "AND json_extract(payload, '$.pool') = ?", [pool_id]).fetchall()
        return {int(k) for (k,) in rows if k is not None}

    def pool_sessions(self, pool_id: str) -> list[tuple[str, list[int]]]:
        """(session, keys it scheduled) of every probe session that drew keys from ``pool_id``."""
        rows = self.db.execute(
            "SELECT json_extract(payload, '$.session'), json_extract(payload, '$.keys') FROM entries WHERE kind = 'probe-start' "
            "AND json_extract(payload, '$.probe_set') = ? AND json_extract(payload, '$.keys') IS NOT NULL", [pool_id]).fetchall()
        return [(str(sess), [int(k) for k in json.loads(keys)]) for sess, keys in rows]

    def session_finished(self, session: str) -> bool:
        """Whether probe session ``session`` has its ``probe-result``."""
        return self.db.execute("SELECT 1 FROM entries WHERE kind = 'probe-result' AND json_extract(payload, '$.session') = ? LIMIT 1",
                               [session]).fetchone() is not None

    def probe_answers(self, session: str) -> dict[int, Any]:
        return {r["idx"]: json.loads(r["response"]) for r in self.db.query(
            "SELECT idx, response FROM probe_queries WHERE session = ? ORDER BY idx", [session])}

    def wal_checkpoint(self) -> None:
        """Move the WAL's content into the main file and empty the WAL (before copying or renaming it)."""
        self.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def check_bound_to(self, public_key: Ed25519PublicKey) -> None:
        """Raise :class:`KeyMismatch` unless the genesis entry names ``public_key`` and is signed by it.

        A ledger copied in from another workspace fails here, before anything is appended to it.
        """
        rows = list(self.db.query("SELECT * FROM entries WHERE seq = 1"))
        hint = "the ledger and keys/ come from different workspaces; restore the matching tracer.db or keys/"
        if not rows:
            if self.count():
                raise KeyMismatch(f"ledger {self.path} has no genesis entry", hint=hint)
            return
        g = self._entry(rows[0])
        try:
            pem = g.payload["public_key"]
            recorded = serialization.load_pem_public_key(pem.encode("ascii"))
            same = isinstance(recorded, Ed25519PublicKey) and _raw_public(recorded) == _raw_public(public_key)
        except (KeyError, AttributeError, ValueError, UnicodeEncodeError):
            same = False
        if g.kind != "genesis" or not same:
            raise KeyMismatch(f"ledger {self.path} was made with another signing key than the one in keys/", hint=hint)
        try:
            intact = entry_hash(g.seq, g.kind, g.time, g.prev, g.payload) == g.hash
        except Exception:
            intact = False
        if not (intact and verify_blob(public_key, _ENTRY_DOMAIN, bytes.fromhex(g.hash), g.signature)):
            raise KeyMismatch(f"the genesis entry of ledger {self.path} is not signed by the key in keys/", hint=hint)

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
