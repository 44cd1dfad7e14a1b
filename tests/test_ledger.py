"""The signed, hash-chained ledger: appends, every kind of tampering, checkpoints, export, concurrency.

Tampering is done the way an attacker with file access would do it: open the
SQLite file directly, drop the append-only triggers, edit, and (where useful)
forge new rows with a key of their own.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests._constants import HANG_S
from tracer.errors import LedgerError, LedgerTampered
from tracer.keys.keyring import load_public_key, public_pem
from tracer.ledger import Ledger, canonical, export_lines, make_checkpoint, read_export, verify_export
from tracer.ledger.entries import GENESIS_PREV, entry_hash, sign_entry
from tracer.workspace import Workspace

TABLES = ("entries", "customers", "issuances", "events", "probe_queries")


def _issuance(cid: str, *, new: bool = True, name: str | None = None, **extra) -> dict:
    return {
        "customer_id": cid,
        "model_sha256": hashlib.sha256(cid.encode()).hexdigest(),
        "probe_sets": ["ps1", "ps2"],
        "display_name": name or cid.upper(),
        "new_customer": new,
        **extra,
    }


@pytest.fixture
def keyring(fresh_workspace, passphrase):
    return fresh_workspace.unlock(passphrase=passphrase, master=False)


@pytest.fixture
def populated(fresh_workspace, keyring) -> Workspace:
    """Seven entries, with rows in every index table::

    1 genesis  2 issuance acme (new)  3 issuance globex (new)  4 issuance acme (again)
    5 identification  6 probe-query  7 issuance initech (new)
    """
    key = keyring.signing_key
    with fresh_workspace.ledger() as ledger:
        ledger.append("issuance", _issuance("acme"), key=key)
        ledger.append("issuance", _issuance("globex"), key=key)
        ledger.append("issuance", _issuance("acme", new=False), key=key)
        ledger.append("identification", {"subject": "a" * 64, "verdict": "acme", "p_value": 1e-30}, key=key)
        ledger.append("probe-query", {"session": "s1", "idx": 0, "input_sha256": "b" * 64, "response": [0.25, 0.75]}, key=key)
        ledger.append("issuance", _issuance("initech", name="Initech Ltd."), key=key)
    return fresh_workspace


def _tamper(db: Path, fn: Callable[[sqlite3.Connection], None]) -> None:
    """Edit the SQLite file as an attacker would: drop the append-only triggers, then change rows."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("BEGIN")
        fn(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _rows(conn: sqlite3.Connection, first: int = 1) -> list[tuple]:
    return conn.execute("SELECT seq, kind, time, prev, payload, hash, signature FROM entries WHERE seq >= ? ORDER BY seq", (first,)).fetchall()


def _insert(conn: sqlite3.Connection, e) -> None:
    conn.execute(
        "INSERT INTO entries (seq, kind, time, prev, payload, hash, signature) VALUES (?,?,?,?,?,?,?)",
        (e.seq, e.kind, e.time, e.prev, canonical(e.payload).decode(), e.hash, e.signature),
    )


ATTACKER = Ed25519PrivateKey.generate()


def _shift_up(conn: sqlite3.Connection, first: int) -> None:
    conn.execute("UPDATE entries SET seq = -(seq + 1) WHERE seq >= ?", (first,))
    conn.execute("UPDATE entries SET seq = -seq WHERE seq < 0")


def _insert_forged_at(conn: sqlite3.Connection, seq: int) -> None:
    prev = conn.execute("SELECT hash FROM entries WHERE seq = ?", (seq - 1,)).fetchone()[0]
    _shift_up(conn, seq)
    _insert(conn, sign_entry(ATTACKER, seq=seq, kind="issuance", time="2020-01-01T00:00:00.000000Z", prev=prev,
                             payload=_issuance("mallory")))


def _append_forged(conn: sqlite3.Connection) -> None:
    seq, prev = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    _insert(conn, sign_entry(ATTACKER, seq=seq + 1, kind="note", time="2030-01-01T00:00:00.000000Z", prev=prev, payload={"x": 1}))


def _resign_from(conn: sqlite3.Connection, first: int, edit: Callable[[dict], None] = lambda p: None) -> None:
    """Rewrite entries ``first..`` with a modified first payload, re-chained and re-signed by the attacker."""
    prev = GENESIS_PREV if first == 1 else conn.execute("SELECT hash FROM entries WHERE seq = ?", (first - 1,)).fetchone()[0]
    rows = _rows(conn, first)
    conn.execute("DELETE FROM entries WHERE seq >= ?", (first,))
    for i, (seq, kind, time, _prev, payload, _h, _s) in enumerate(rows):
        payload = json.loads(payload)
        if i == 0:
            edit(payload)
        e = sign_entry(ATTACKER, seq=seq, kind=kind, time=time, prev=prev, payload=payload)
        _insert(conn, e)
        prev = e.hash


def _swap(conn: sqlite3.Connection, a: int, b: int) -> None:
    conn.execute("UPDATE entries SET seq = -1 WHERE seq = ?", (a,))
    conn.execute("UPDATE entries SET seq = ? WHERE seq = ?", (a, b))
    conn.execute("UPDATE entries SET seq = ? WHERE seq = -1", (b,))


def _copy_signature(conn: sqlite3.Connection) -> None:
    """A forged entry that borrows a genuine signature from another entry."""
    seq, prev = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
    sig = conn.execute("SELECT signature FROM entries WHERE seq = 2").fetchone()[0]
    payload = {"x": 1}
    conn.execute(
        "INSERT INTO entries (seq, kind, time, prev, payload, hash, signature) VALUES (?,?,?,?,?,?,?)",
        (seq + 1, "note", "2030-01-01T00:00:00.000000Z", prev, canonical(payload).decode(),
         entry_hash(seq + 1, "note", "2030-01-01T00:00:00.000000Z", prev, payload), sig),
    )


# name -> (edit, first bad entry, words in the message)
TAMPERING = {
    "modify-payload": (lambda c: c.execute("UPDATE entries SET payload = replace(payload, 'GLOBEX', 'EVIL') WHERE seq = 3"), 3, "modified"),
    "modify-payload-and-index": (lambda c: (
        c.execute("UPDATE entries SET payload = replace(payload, 'GLOBEX', 'EVIL') WHERE seq = 3"),
        c.execute("UPDATE customers SET display_name = 'EVIL' WHERE customer_id = 'globex'")), 3, "modified"),
    "modify-time": (lambda c: c.execute("UPDATE entries SET time = '2019-01-01T00:00:00.000000Z' WHERE seq = 4"), 4, "modified"),
    "modify-kind": (lambda c: c.execute("UPDATE entries SET kind = 'note' WHERE seq = 5"), 5, "modified"),
    "modify-stored-hash": (lambda c: c.execute("UPDATE entries SET hash = ? WHERE seq = 6", ("f" * 64,)), 6, "modified"),
    "payload-not-json": (lambda c: c.execute("UPDATE entries SET payload = '{broken' WHERE seq = 2"), 2, "not JSON"),
    "garbage-signature": (lambda c: c.execute("UPDATE entries SET signature = 'AAAA' WHERE seq = 2"), 2, "signature"),
    "delete-entry": (lambda c: c.execute("DELETE FROM entries WHERE seq = 4"), 4, "missing or deleted"),
    "delete-first-entry": (lambda c: c.execute("DELETE FROM entries WHERE seq = 1"), 1, "missing or deleted"),
    "delete-last-entry-only": (lambda c: c.execute("DELETE FROM entries WHERE seq = 7"), 7, "does not match the signed entries"),
    "reorder-swap-seq": (lambda c: _swap(c, 3, 4), 3, "does not link"),
    "insert-forged-middle": (lambda c: _insert_forged_at(c, 4), 4, "invalid signature"),
    "append-forged": (_append_forged, 8, "invalid signature"),
    "forged-with-copied-signature": (_copy_signature, 8, "invalid signature"),
    "resign-tail-with-other-key": (lambda c: _resign_from(c, 3, lambda p: p.update(display_name="EVIL")), 3, "invalid signature"),
    "resign-everything-with-other-key": (lambda c: _resign_from(c, 1), 1, "invalid signature"),
    "index-customers-row-modified": (lambda c: c.execute("UPDATE customers SET display_name = 'Evil Corp' WHERE customer_id = 'globex'"), 3, "table customers"),
    "index-customers-row-deleted": (lambda c: c.execute("DELETE FROM customers WHERE customer_id = 'initech'"), 7, "table customers"),
    "index-customers-row-forged": (lambda c: c.execute(
        "INSERT INTO customers (customer_id, display_name, entry, time) VALUES ('mallory', 'M', 99, '2030-01-01T00:00:00.000000Z')"), 99, "table customers"),
    "index-issuances-row-modified": (lambda c: c.execute("UPDATE issuances SET model_sha256 = ? WHERE entry = 4", ("0" * 64,)), 4, "table issuances"),
    "index-issuances-customer-swapped": (lambda c: c.execute("UPDATE issuances SET customer_id = 'globex' WHERE entry = 2"), 2, "table issuances"),
    "index-issuances-row-deleted": (lambda c: c.execute("DELETE FROM issuances WHERE entry = 7"), 7, "table issuances"),
    "index-events-verdict-modified": (lambda c: c.execute("UPDATE events SET verdict = 'globex' WHERE entry = 5"), 5, "table events"),
    "index-probe-queries-modified": (lambda c: c.execute("UPDATE probe_queries SET response = '[1.0, 0.0]' WHERE entry = 6"), 6, "table probe_queries"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_tampering_detected_with_first_bad_entry(populated, keyring, cli, how):
    edit, first_bad, words = TAMPERING[how]
    with populated.ledger() as ledger:
        assert ledger.verify(keyring.public_key)[0] == 7
    _tamper(populated.ledger_path, edit)

    with populated.ledger() as ledger, pytest.raises(LedgerTampered) as info:
        ledger.verify(keyring.public_key)
    assert info.value.entry == first_bad, info.value.message
    assert words in info.value.message

    r = cli(["-w", populated.root, "ledger", "verify", "--json"])  # in-process; test_tampering_cli_* use subprocesses
    assert r.exit_code == 1, r.output
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["first_bad_entry"] == first_bad, doc


def test_tampering_cli_plain_output(populated, run_cli):
    _tamper(populated.ledger_path, TAMPERING["modify-payload"][0])
    r = run_cli(["-w", populated.root, "ledger", "verify"])
    assert r.returncode == 1, r
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: entry 3 was modified")


# -- appending and reading -------------------------------------------------------------------------


def test_genesis_entry(fresh_workspace, keyring):
    with fresh_workspace.ledger() as ledger:
        assert ledger.count() == 1
        g = ledger.get(1)
        assert g.kind == "genesis" and g.prev == GENESIS_PREV
        assert g.payload["derivation"] == "tracer/v1"
        assert load_public_key(g.payload["public_key"].encode()) == keyring.public_key
        assert ledger.verify(keyring.public_key) == (1, g.hash)


def test_append_and_verify(populated, keyring):
    with populated.ledger() as ledger:
        count, head = ledger.verify(keyring.public_key)
        assert (count, head) == (7, ledger.head()[1]) and ledger.head()[0] == 7
        entries = list(ledger.entries())
        assert [e.seq for e in entries] == list(range(1, 8))
        assert all(e.prev == p.hash for p, e in zip(entries, entries[1:]))
        assert [e.seq for e in ledger.entries(kind="issuance")] == [2, 3, 4, 7]
        assert ledger.issued_customer_ids() == ["acme", "globex", "initech"]
        assert [c["display_name"] for c in ledger.customers()] == ["ACME", "GLOBEX", "Initech Ltd."]
        assert [e.seq for e in ledger.issuances("acme")] == [2, 4]
        assert ledger.probe_answers("s1") == {0: [0.25, 0.75]}
        assert ledger.get(5).payload == {"subject": "a" * 64, "verdict": "acme", "p_value": 1e-30}
        with pytest.raises(LedgerError):
            ledger.get(99)
        e = ledger.append("note", {"text": "ünïcode ✓", "n": 1}, key=keyring.signing_key)
        assert e.seq == 8 and e.prev == head
        assert ledger.verify(keyring.public_key) == (8, e.hash)


def test_append_many_is_atomic(populated, keyring):
    with populated.ledger() as ledger:
        before = ledger.head()
        with pytest.raises(LedgerError):  # second item re-registers an existing customer: UNIQUE violation
            ledger.append_many([("note", {"a": 1}), ("issuance", _issuance("acme", new=True))], key=keyring.signing_key)
        assert ledger.head() == before and ledger.count() == 7
        out = ledger.append_many([("note", {"a": 1}), ("note", {"a": 2})], key=keyring.signing_key)
        assert [e.seq for e in out] == [8, 9] and out[1].prev == out[0].hash
        assert ledger.verify(keyring.public_key)[0] == 9


def test_non_json_payload_rejected_before_writing(populated, keyring):
    with populated.ledger() as ledger:
        before = ledger.head()
        for bad in ({"x": float("nan")}, {"x": float("inf")}, {"x": object()}):
            with pytest.raises((ValueError, TypeError, LedgerError)):
                ledger.append("note", bad, key=keyring.signing_key)
        assert ledger.head() == before
        assert ledger.verify(keyring.public_key)[0] == 7


def test_verify_with_another_public_key_fails_at_entry_1(populated):
    with populated.ledger() as ledger, pytest.raises(LedgerTampered) as info:
        ledger.verify(ATTACKER.public_key())
    assert info.value.entry == 1


def test_entry_json_roundtrip(populated):
    with populated.ledger() as ledger:
        for e in ledger.entries():
            assert type(e).from_json(json.loads(json.dumps(e.to_json()))) == e


def test_opening_bad_ledgers(tmp_path):
    with pytest.raises(LedgerError, match="missing"):
        Ledger(tmp_path / "nope.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite database at all" * 100)
    with pytest.raises(LedgerError):
        Ledger(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(LedgerError, match="lacks table"):
        Ledger(other)


# -- append-only triggers --------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("op", ["UPDATE", "DELETE"])
def test_triggers_refuse_update_and_delete(populated, keyring, table, op):
    conn = sqlite3.connect(populated.ledger_path, isolation_level=None)
    try:
        before = conn.execute(f"SELECT * FROM {table}").fetchall()
        assert before, f"fixture should put rows in {table}"
        col = conn.execute(f"SELECT * FROM {table}").description[0][0]
        sql = f"UPDATE {table} SET {col} = {col}" if op == "UPDATE" else f"DELETE FROM {table}"
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(sql)
        assert conn.execute(f"SELECT * FROM {table}").fetchall() == before
    finally:
        conn.close()
    with populated.ledger() as ledger:
        assert ledger.verify(keyring.public_key)[0] == 7


# -- checkpoints -----------------------------------------------------------------------------------


def _checkpoint(cli, ws: Workspace, path: Path) -> dict:
    r = cli(["-w", ws.root, "ledger", "checkpoint", "-o", path])
    assert r.exit_code == 0, r.output
    cp = json.loads(r.stdout)
    assert json.loads(path.read_text()) == cp
    return cp


def _drop_tail(first: int) -> Callable[[sqlite3.Connection], None]:
    def fn(c: sqlite3.Connection) -> None:
        c.execute("DELETE FROM entries WHERE seq >= ?", (first,))
        for t in TABLES[1:]:
            c.execute(f"DELETE FROM {t} WHERE entry >= ?", (first,))
    return fn


def test_checkpoint_detects_truncated_tail(populated, keyring, cli, run_cli, tmp_path):
    cp_path = tmp_path / "cp.json"
    cp = _checkpoint(cli, populated, cp_path)
    with populated.ledger() as ledger:
        assert cp["entries"] == 7 and cp["head"] == ledger.head()[1]
        ledger.append("note", {"after": "checkpoint"}, key=keyring.signing_key)  # growth is fine
    r = cli(["-w", populated.root, "ledger", "verify", "--checkpoint", cp_path])
    assert r.exit_code == 0, r.output

    _tamper(populated.ledger_path, _drop_tail(6))  # cut entries 6..8 and their index rows
    r = cli(["-w", populated.root, "ledger", "verify", "--json"])
    assert r.exit_code == 0, r.output  # without a checkpoint, a clean cut of the tail is undetectable...
    r = run_cli(["-w", populated.root, "ledger", "verify", "--json", "--checkpoint", cp_path])
    assert r.returncode == 1, r  # ...with one it is caught
    doc = json.loads(r.stdout)
    assert doc["first_bad_entry"] == 6 and "truncated" in doc["error"]
    with populated.ledger() as ledger, pytest.raises(LedgerTampered, match="truncated"):
        ledger.verify(keyring.public_key, checkpoint=cp)


def test_checkpoint_detects_rewritten_history(populated, keyring, cli, tmp_path):
    cp = _checkpoint(cli, populated, tmp_path / "cp.json")
    _tamper(populated.ledger_path, _drop_tail(6))
    with populated.ledger() as ledger:  # someone holding the key re-appends a different history
        ledger.append("note", {"rewritten": 1}, key=keyring.signing_key)
        ledger.append("note", {"rewritten": 2}, key=keyring.signing_key)
        assert ledger.verify(keyring.public_key)[0] == 7
        with pytest.raises(LedgerTampered, match="differs from the checkpointed head"):
            ledger.verify(keyring.public_key, checkpoint=cp)
    r = cli(["-w", populated.root, "ledger", "verify", "--checkpoint", tmp_path / "cp.json"])
    assert r.exit_code == 1, r.output


def test_forged_or_malformed_checkpoint(populated, keyring, tmp_path):
    with populated.ledger() as ledger:
        count, head = ledger.head()
        genuine = make_checkpoint(count, head, keyring.signing_key)
        ledger.verify(keyring.public_key, checkpoint=genuine)
        with pytest.raises(LedgerTampered, match="signature"):
            ledger.verify(keyring.public_key, checkpoint={**genuine, "entries": 3})
        with pytest.raises(LedgerTampered, match="signature"):
            ledger.verify(keyring.public_key, checkpoint=make_checkpoint(count, head, ATTACKER))
        with pytest.raises(LedgerTampered, match="malformed"):
            ledger.verify(keyring.public_key, checkpoint={"head": head})


# -- export ----------------------------------------------------------------------------------------


@pytest.fixture
def exported(populated, cli, tmp_path) -> tuple[Path, Path, Path]:
    """(export file, public key file, an empty folder outside any workspace)."""
    export, pem = tmp_path / "ledger.jsonl", tmp_path / "signing.pub.pem"
    r = cli(["-w", populated.root, "ledger", "export", "-o", export])
    assert r.exit_code == 0, r.output
    r = cli(["-w", populated.root, "keys", "export-public"])
    assert r.exit_code == 0, r.output
    pem.write_text(r.stdout)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    return export, pem, empty


def _verify_export_cli(run_cli, export: Path, pem: Path, cwd: Path, *extra):
    return run_cli(["ledger", "verify", "--export", export, "--public-key", pem, "--json", *extra],
                   cwd=cwd, env={"TRACER_WORKSPACE": None, "TRACER_PASSPHRASE": None})


def _verify_export_inproc(cli, export: Path, pem: Path, *extra):
    """Same check in-process (fast); no workspace is involved since the key is given."""
    r = cli(["ledger", "verify", "--export", export, "--public-key", pem, "--json", *extra],
            env={"TRACER_WORKSPACE": None, "TRACER_PASSPHRASE": None})
    return r.exit_code, r.stdout


def test_export_verifies_offline_without_workspace(populated, keyring, run_cli, cli, exported):
    export, pem, empty = exported
    lines = export.read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(x)["seq"] == i for i, x in enumerate(lines, 1))
    with populated.ledger() as ledger:
        assert lines == list(export_lines(ledger))
        head = ledger.head()[1]
    r = _verify_export_cli(run_cli, export, pem, empty)
    assert r.returncode == 0, r
    assert json.loads(r.stdout) == {"ok": True, "entries": 7, "head": head}
    r = cli(["ledger", "verify", "--export", export, "--public-key", pem])
    assert r.exit_code == 0 and r.stdout.startswith("ledger OK: 7 entries"), r.output
    # without --public-key it needs a workspace, and says so
    r = run_cli(["ledger", "verify", "--export", export], cwd=empty)
    assert r.returncode == 3 and "tracer init" in r.stderr, r
    # stdout export is the same as the file
    r = cli(["-w", populated.root, "ledger", "export"])
    assert r.exit_code == 0 and r.stdout == export.read_text()


def _edit_line(n: int, fn: Callable[[dict], None]) -> Callable[[list[str]], list[str]]:
    def apply(lines: list[str]) -> list[str]:
        doc = json.loads(lines[n - 1])
        fn(doc)
        return lines[: n - 1] + [json.dumps(doc, sort_keys=True)] + lines[n:]
    return apply


EXPORT_TAMPERING = {
    "modify-line": (_edit_line(3, lambda d: d["payload"].update(display_name="EVIL")), 3),
    "modify-time": (_edit_line(5, lambda d: d.update(time="2001-01-01T00:00:00.000000Z")), 5),
    "delete-line": (lambda ls: ls[:3] + ls[4:], 4),
    "swap-lines": (lambda ls: ls[:2] + [ls[3], ls[2]] + ls[4:], 3),
    "duplicate-line": (lambda ls: ls[:4] + [ls[3]] + ls[4:], 5),
    "not-json-line": (lambda ls: ls[:1] + ["{nope"] + ls[2:], 2),
}


@pytest.mark.parametrize("how", list(EXPORT_TAMPERING))
def test_export_tampering_detected(cli, exported, keyring, how):
    export, pem, _empty = exported
    edit, first_bad = EXPORT_TAMPERING[how]
    export.write_text("\n".join(edit(export.read_text().splitlines())) + "\n")
    code, stdout = _verify_export_inproc(cli, export, pem)
    assert code == 1, stdout
    assert json.loads(stdout)["first_bad_entry"] == first_bad
    with pytest.raises(LedgerTampered) as info:
        verify_export(export.read_text().splitlines(), keyring.public_key)
    assert info.value.entry == first_bad


def test_export_with_wrong_public_key(cli, exported, tmp_path):
    export, _pem, _empty = exported
    other = tmp_path / "other.pem"
    other.write_bytes(public_pem(ATTACKER.public_key()))
    code, stdout = _verify_export_inproc(cli, export, other)
    assert code == 1 and json.loads(stdout)["first_bad_entry"] == 1, stdout


def test_export_truncation_needs_checkpoint(populated, cli, run_cli, exported, tmp_path):
    export, pem, empty = exported
    cp = tmp_path / "cp.json"
    _checkpoint(cli, populated, cp)
    assert _verify_export_inproc(cli, export, pem, "--checkpoint", cp)[0] == 0
    export.write_text("\n".join(export.read_text().splitlines()[:5]) + "\n")
    assert read_export(export.read_text().splitlines())[-1].seq == 5
    assert _verify_export_inproc(cli, export, pem)[0] == 0  # a shorter prefix is still a valid chain
    r = _verify_export_cli(run_cli, export, pem, empty, "--checkpoint", cp)
    assert r.returncode == 1 and json.loads(r.stdout)["first_bad_entry"] == 6, r


# -- concurrency -----------------------------------------------------------------------------------

WRITERS, APPENDS = 4, 50


def _append_worker(root: str, passphrase: str, worker: int, count: int, barrier) -> None:
    ws = Workspace(Path(root))
    key = ws.unlock(passphrase=passphrase, master=False).signing_key
    with ws.ledger() as ledger:
        barrier.wait(timeout=HANG_S)  # a loaded machine may start the writers minutes apart
        for i in range(count):
            if i % 10 == 0:
                ledger.append("issuance", _issuance(f"w{worker}-c{i}", worker=worker, i=i), key=key)
            else:
                ledger.append("note", {"worker": worker, "i": i}, key=key)


def test_concurrent_appends_from_processes_lose_nothing(fresh_workspace, keyring, passphrase, run_cli):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_append_worker, args=(str(fresh_workspace.root), passphrase, w, APPENDS, barrier))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=HANG_S)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    with fresh_workspace.ledger() as ledger:
        entries = list(ledger.entries())
        assert len(entries) == 1 + WRITERS * APPENDS
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        seen = [(e.payload["worker"], e.payload["i"]) for e in entries[1:]]
        assert sorted(seen) == [(w, i) for w in range(WRITERS) for i in range(APPENDS)]
        for w in range(WRITERS):  # each writer's own appends stay in its order
            mine = [i for (ww, i) in seen if ww == w]
            assert mine == sorted(mine)
        assert len(ledger.issued_customer_ids()) == WRITERS * APPENDS // 10
        assert ledger.verify(keyring.public_key)[0] == 1 + WRITERS * APPENDS
    r = run_cli(["-w", fresh_workspace.root, "ledger", "verify"])
    assert r.returncode == 0, r
