"""Hardening of the ledger, keys and evidence (issue 13 items 1, 2, 3, 5, 17; issue 14 item 3 and the store's queries;
issue 17 item 11): evidence that cannot mislead.

Real SQLite files, real key files, and real subprocesses wherever an exit code is the contract.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests._constants import LOW_SCRYPT as FAST_SCRYPT
from tests._constants import PASSPHRASE as ISSUED_PASSPHRASE
from tests.conftest import run_limited
from tracer._json import MAX_DEPTH, JSONSyntaxError, StrictJSONError, loads_strict
from tracer.errors import KeyFileError, KeyMismatch, LedgerError, LedgerTampered
from tracer.fingerprint import trigger_commitment
from tracer.keys.keyfile import decrypt_secret
from tracer.ledger import Ledger, list_entries, parse_time, read_export
from tracer.workspace import MASTER_CHECK_SAMPLE, Workspace, init_workspace, verify_master_matches

ATTACKER = Ed25519PrivateKey.generate()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tamper(db: Path, sql: str, args: tuple = ()) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, args)
    finally:
        conn.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the strict JSON reader ------------------------------------------------------------------------


def test_strict_json_refuses_what_readers_could_disagree_on():
    assert loads_strict('{"a": [1, 2.5, {"b": null}], "c": "x"}') == {"a": [1, 2.5, {"b": None}], "c": "x"}
    assert loads_strict(b'{"a": 1}') == {"a": 1}
    with pytest.raises(StrictJSONError, match="duplicate key 'verdict'"):
        loads_strict('{"result": {"verdict": "no_match", "verdict": "match"}}')
    for bad in ("NaN", '{"x": Infinity}', "1e999", "-1e400"):
        with pytest.raises(StrictJSONError):
            loads_strict(bad)
    with pytest.raises(StrictJSONError, match="5000 digits") as info:
        loads_strict('{"n": ' + "7" * 5000 + "}")
    assert "\n" not in str(info.value)
    with pytest.raises(StrictJSONError, match="nested more than"):
        loads_strict("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StrictJSONError, match="nested more than"):
        loads_strict('{"a":' * 5000 + "1" + "}" * 5000)
    assert loads_strict("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None
    assert loads_strict('["[[[[' + "[" * 300 + '"]') == ["[[[[" + "[" * 300]  # brackets inside strings do not count
    with pytest.raises(JSONSyntaxError):
        loads_strict("{nope")
    with pytest.raises(JSONSyntaxError):
        loads_strict(b"\xff\xfe")


# -- item 1: a wrong master key, a foreign ledger ----------------------------------------------------


class _Set:
    def __init__(self, sid: str, size: int) -> None:
        self.id, self.size = sid, size

    def digest(self) -> str:
        return hashlib.sha256(self.id.encode()).hexdigest()


def _record_issuances(ws: Workspace, keyring, count: int, *, start: int = 0, master: bytes | None = None) -> None:
    """Issuance records with real trigger commitments (as Issuer writes them), without training anything."""
    sets = [_Set("ps1", 64), _Set("ps2", 64)]
    with ws.ledger() as ledger:
        for i in range(start, start + count):
            cid = f"cust{i:03d}"
            ledger.append("issuance", {
                "customer_id": cid, "display_name": cid.upper(), "new_customer": True, "model_sha256": hashlib.sha256(cid.encode()).hexdigest(),
                "probe_sets": [{"id": s.id, "size": s.size, "digest": s.digest()} for s in sets],
                "trigger_commitment": trigger_commitment(master or keyring.master, cid, sets, 10),  # type: ignore[arg-type]
                "parameters": {"task": {"num_classes": 10}},
            }, key=keyring.signing_key)


def _other_workspace(tmp_path: Path, passphrase: str, scrypt=None) -> Workspace:
    return init_workspace(tmp_path / "other", passphrase=passphrase, scrypt=scrypt)


def test_master_check_all_when_few_a_spread_sample_when_many(fresh_workspace, passphrase, tmp_path):
    keyring = fresh_workspace.unlock(passphrase=passphrase)
    _record_issuances(fresh_workspace, keyring, 5)
    with fresh_workspace.ledger() as ledger:
        assert verify_master_matches(ledger, keyring) == 5
    _record_issuances(fresh_workspace, keyring, 30, start=5)
    with fresh_workspace.ledger() as ledger:
        assert verify_master_matches(ledger, keyring) == MASTER_CHECK_SAMPLE == 16
    fresh_workspace.unlock(passphrase=passphrase)  # the right keys still unlock


def test_wrong_master_key_is_refused_at_unlock(fresh_workspace, passphrase, tmp_path):
    keyring = fresh_workspace.unlock(passphrase=passphrase)
    _record_issuances(fresh_workspace, keyring, 3)
    other = _other_workspace(tmp_path, passphrase, scrypt={"n": 2**12, "r": 8, "p": 1})
    shutil.copyfile(other.keys_dir / "master.key", fresh_workspace.keys_dir / "master.key")
    before = _sha(fresh_workspace.ledger_path)
    with pytest.raises(KeyMismatch, match="master.key is not the master secret") as info:
        fresh_workspace.unlock(passphrase=passphrase)
    assert info.value.exit_code == 3 and isinstance(info.value, KeyFileError)
    fresh_workspace.unlock(passphrase=passphrase, master=False)  # the signing key alone is still fine
    assert _sha(fresh_workspace.ledger_path) == before


def test_a_tampered_record_reads_as_tampering_not_as_a_wrong_key(fresh_workspace, passphrase):
    keyring = fresh_workspace.unlock(passphrase=passphrase)
    _record_issuances(fresh_workspace, keyring, 2)
    _tamper(fresh_workspace.ledger_path, "UPDATE entries SET payload = replace(payload, 'CUST001', 'EVIL') WHERE seq = 3")
    with pytest.raises(LedgerTampered) as info:
        fresh_workspace.unlock(passphrase=passphrase)
    assert info.value.entry == 3


def test_append_to_a_ledger_of_another_key_is_refused(fresh_workspace, passphrase):
    before = _sha(fresh_workspace.ledger_path)
    with fresh_workspace.ledger() as ledger:
        with pytest.raises(KeyMismatch, match="another signing key"):
            ledger.append("note", {"x": 1}, key=ATTACKER)
        assert ledger.count() == 1
    assert _sha(fresh_workspace.ledger_path) == before


def test_genesis_naming_our_key_but_signed_by_another_is_refused(fresh_workspace, passphrase):
    keyring = fresh_workspace.unlock(passphrase=passphrase)
    _tamper(fresh_workspace.ledger_path, "UPDATE entries SET signature = ? WHERE seq = 1",
            (base64.b64encode(ATTACKER.sign(b"x")).decode(),))
    with fresh_workspace.ledger() as ledger, pytest.raises(KeyMismatch, match="not signed"):
        ledger.append("note", {"x": 1}, key=keyring.signing_key)


@pytest.fixture
def tabular(issued_tabular_copy, monkeypatch) -> Workspace:
    monkeypatch.setenv("TRACER_PASSPHRASE", ISSUED_PASSPHRASE)
    return Workspace(issued_tabular_copy)


def test_identify_with_another_workspaces_master_key_exits_3_and_records_nothing(tabular, run_cli, tmp_path):
    """Issue 13 item 1, the reproduction: before, this printed no_match, exited 1 and signed a no_match."""
    other = _other_workspace(tmp_path, ISSUED_PASSPHRASE, scrypt=FAST_SCRYPT)
    shutil.copyfile(other.keys_dir / "master.key", tabular.keys_dir / "master.key")
    before = _sha(tabular.ledger_path)
    r = run_cli(["-w", tabular.root, "identify", tabular.root / "models" / "issued" / "acme.onnx"])
    assert r.returncode == 3, r
    assert "master.key is not the master secret" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert _sha(tabular.ledger_path) == before
    with tabular.ledger(readonly=True) as ledger:
        assert not list(ledger.entries(kind="identification"))


def test_identify_into_a_ledger_copied_from_another_workspace_appends_nothing(tabular, run_cli, tmp_path):
    """Issue 13 item 1, second half: before, identify appended into the foreign ledger and said `match`."""
    other = _other_workspace(tmp_path, ISSUED_PASSPHRASE, scrypt=FAST_SCRYPT)
    shutil.copyfile(other.ledger_path, tabular.ledger_path)
    before = _sha(tabular.ledger_path)
    r = run_cli(["-w", tabular.root, "identify", tabular.root / "models" / "issued" / "acme.onnx"])
    assert r.returncode == 3, r
    assert "another signing key" in r.stderr and "Traceback" not in r.stderr
    assert _sha(tabular.ledger_path) == before
    with Ledger(tabular.ledger_path, readonly=True) as ledger:
        assert ledger.count() == 1


# -- item 2: duplicate keys and other crafted JSON --------------------------------------------------


@pytest.fixture
def reported(tabular, run_cli, tmp_path) -> dict:
    """A real identify --report (match) and the exported public key."""
    html = tmp_path / "out" / "report.html"
    r = run_cli(["-w", tabular.root, "identify", tabular.root / "models" / "issued" / "acme.onnx", "--report", html],
                env={"TRACER_FILE_MODE": None})
    assert r.returncode == 0, r
    pem = tmp_path / "key.pem"
    pem.write_bytes(tabular.public_key_pem())
    return {"ws": tabular, "html": html, "evidence": html.with_name("report.evidence.json"), "pem": pem}


def test_evidence_with_a_duplicate_key_first_is_refused_and_reports_are_0600(reported, run_cli, tmp_path):
    ev, pem = reported["evidence"], reported["pem"]
    # item 5: reports, evidence and the folder tracer made for them are private
    assert _mode(ev) == 0o600 and _mode(reported["html"]) == 0o600 and _mode(ev.parent) == 0o700
    r = run_cli(["evidence", "verify", ev, "--public-key", pem])
    assert r.returncode == 0, r
    text = ev.read_text()
    doc = json.loads(text)
    assert doc["result"]["verdict"] == "match"
    forged = tmp_path / "forged.evidence.json"
    # a first-wins reader would read no_match; json.loads (last wins) reads the signed values
    forged.write_text(text.replace('"result": {', '"result": {"verdict": "no_match", "customers": [], ', 1))
    assert forged.read_text() != text
    assert json.loads(forged.read_text()) == doc
    r = run_cli(["evidence", "verify", forged, "--public-key", pem])
    assert r.returncode == 1, r
    assert "duplicate key" in r.stderr and "VALID" not in r.stdout and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2  # the error line and its hint


@pytest.mark.parametrize("how", ["deep", "huge-number"])
def test_crafted_evidence_is_a_one_line_failed_check(reported, run_cli, tmp_path, how):
    doc = json.loads(reported["evidence"].read_text())
    body = json.dumps(doc)
    if how == "deep":
        body = body[:-1] + ', "x": ' + "[" * 50_000 + "]" * 50_000 + "}"
    else:
        body = body[:-1] + ', "x": ' + "9" * 5000 + "}"
    bad = tmp_path / "bad.evidence.json"
    bad.write_text(body)
    r = run_cli(["evidence", "verify", bad, "--public-key", reported["pem"]])
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert r.stderr.startswith("error: evidence check failed") and len(r.stderr.strip().splitlines()) <= 2


@pytest.fixture
def issued_ledger(fresh_workspace, passphrase) -> Workspace:
    keyring = fresh_workspace.unlock(passphrase=passphrase)
    _record_issuances(fresh_workspace, keyring, 2)
    return fresh_workspace


def test_ledger_payload_with_a_duplicate_customer_id_first_fails_verify(issued_ledger, run_cli):
    db = issued_ledger.ledger_path
    _tamper(db, "UPDATE entries SET payload = '{\"customer_id\":\"mallory\",' || substr(payload, 2) WHERE seq = 2")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT json_extract(payload, '$.customer_id') FROM entries WHERE seq = 2").fetchone()[0] == "mallory"
    conn.close()
    r = run_cli(["-w", issued_ledger.root, "ledger", "verify", "--json"])
    assert r.returncode == 1, r
    doc = json.loads(r.stdout)
    assert doc["first_bad_entry"] == 2 and "duplicate key 'customer_id'" in doc["error"]


def test_ledger_payload_nested_too_deep_is_tampering_not_a_crash(issued_ledger, run_cli):
    _tamper(issued_ledger.ledger_path, "UPDATE entries SET payload = ? WHERE seq = 2", ('{"a":' + "[" * 100_000 + "]" * 100_000 + "}",))
    r = run_cli(["-w", issued_ledger.root, "ledger", "verify"])
    assert r.returncode == 1, r
    assert r.stderr.startswith("error: entry 2 has a payload that is not JSON") and "Traceback" not in r.stderr


def test_appending_what_the_reader_would_refuse_is_refused(issued_ledger, passphrase):
    keyring = issued_ledger.unlock(passphrase=passphrase)
    deep: list = []
    for _ in range(MAX_DEPTH + 5):
        deep = [deep]
    with issued_ledger.ledger() as ledger:
        n = ledger.count()
        with pytest.raises(LedgerError):
            ledger.append("note", {"deep": deep}, key=keyring.signing_key)
        assert ledger.count() == n


def _export(ws: Workspace, run_cli, tmp_path: Path) -> tuple[Path, Path]:
    out, pem = tmp_path / "ledger.jsonl", tmp_path / "pub.pem"
    r = run_cli(["-w", ws.root, "ledger", "export", "-o", out])
    assert r.returncode == 0, r
    pem.write_bytes(ws.public_key_pem())
    return out, pem


EXPORT_EDITS = {
    "duplicate-key-first": (lambda line: '{"kind": "note", ' + line[1:], "duplicate key"),
    "seq-as-string": (lambda line: line.replace('"seq": 2', '"seq": "2"'), "seq must be an integer"),
    "seq-as-float": (lambda line: line.replace('"seq": 2', '"seq": 2.0'), "seq must be an integer"),
    "unsigned-field": (lambda line: line[:-1] + ', "note": "paid in full"}', "not part of a signed entry"),
    "huge-seq": (lambda line: line.replace('"seq": 2', '"seq": ' + "2" * 5000), "digits"),
}


@pytest.mark.parametrize("how", list(EXPORT_EDITS))
def test_export_lines_are_read_strictly(issued_ledger, run_cli, tmp_path, how):
    export, pem = _export(issued_ledger, run_cli, tmp_path)
    lines = export.read_text().splitlines()
    edit, words = EXPORT_EDITS[how]
    lines[1] = edit(lines[1])
    export.write_text("\n".join(lines) + "\n")
    r = run_cli(["ledger", "verify", "--export", export, "--public-key", pem, "--json"], env={"TRACER_WORKSPACE": None})
    assert r.returncode == 1, r
    doc = json.loads(r.stdout)
    assert doc["first_bad_entry"] == 2 and words in doc["error"], doc


def test_export_seq_true_is_not_entry_1(issued_ledger, run_cli, tmp_path):
    export, _pem = _export(issued_ledger, run_cli, tmp_path)
    lines = export.read_text().splitlines()
    lines[0] = lines[0].replace('"seq": 1', '"seq": true')
    with pytest.raises(LedgerTampered, match="seq must be an integer"):
        read_export(lines)


def test_checkpoint_file_read_strictly(issued_ledger, run_cli, tmp_path):
    cp = tmp_path / "cp.json"
    r = run_cli(["-w", issued_ledger.root, "ledger", "checkpoint", "-o", cp])
    assert r.returncode == 0, r
    doc = json.loads(cp.read_text())
    for name, text in {
        "duplicate": '{"entries": 0, ' + cp.read_text().strip()[1:],
        "unsigned-field": json.dumps({**doc, "note": "x"}),
        "entries-as-bool": json.dumps({**doc, "entries": True}),
    }.items():
        bad = tmp_path / f"{name}.json"
        bad.write_text(text)
        r = run_cli(["-w", issued_ledger.root, "ledger", "verify", "--checkpoint", bad])
        assert r.returncode == 1, (name, r)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("how", ["duplicate-kind-first", "deep"])
def test_key_files_read_strictly(fresh_workspace, passphrase, run_cli, how):
    path = fresh_workspace.keys_dir / "master.key"
    text = path.read_text()
    if how == "duplicate-kind-first":
        path.write_text('{"kind": "signing-key", ' + text.strip()[1:])
        assert json.loads(path.read_text()) == json.loads(text)  # last-wins readers see the genuine file
    else:
        path.write_text(text.strip()[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(KeyFileError, match="tampered"):
        decrypt_secret(path.read_bytes(), passphrase=passphrase, kind="master-secret")
    with pytest.raises(KeyFileError, match="tampered"):
        fresh_workspace.unlock(passphrase=passphrase)
    r = run_cli(["-w", fresh_workspace.root, "ledger", "checkpoint"])  # unlocks the signing key only: still fine
    assert r.returncode == 0, r


# -- item 3: checkpoint verifies first ---------------------------------------------------------------


def test_checkpoint_refuses_a_broken_ledger(issued_ledger, run_cli, tmp_path):
    db = issued_ledger.ledger_path
    _tamper(db, "DELETE FROM entries WHERE seq = 3")
    _tamper(db, "DELETE FROM issuances WHERE entry = 3")
    _tamper(db, "DELETE FROM customers WHERE entry = 3")
    _tamper(db, "UPDATE entries SET payload = replace(payload, 'CUST000', 'EVIL') WHERE seq = 2")
    cp = tmp_path / "cp.json"
    r = run_cli(["-w", issued_ledger.root, "ledger", "checkpoint", "-o", cp])
    assert r.returncode == 1, r
    assert r.stdout == "" and "entry 2 was modified" in r.stderr
    assert not cp.exists() and not list(tmp_path.glob(".cp.json.*"))


# -- item 5 (issue 13): file modes -------------------------------------------------------------------


def _sh(cmd: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **env}
    return run_limited(["sh", "-c", cmd], env=full, cpu_s=600)  # bounded by work, not by a loaded machine's wall time


def test_files_and_folders_are_private_whatever_the_umask(tmp_path, passphrase):
    root = tmp_path / "new" / "ws"
    py = sys.executable
    r = _sh(f"umask 000 && {py} -m tracer init {root} && {py} -m tracer -w {root} ledger export -o {tmp_path / 'e.jsonl'}"
            f" && {py} -m tracer -w {root} ledger checkpoint -o {tmp_path / 'cp.json'}", TRACER_PASSPHRASE=passphrase)
    assert r.returncode == 0, r
    assert _mode(root / "tracer.db") == 0o600 and _mode(root / "tracer.toml") == 0o600
    assert _mode(root) == 0o700 and _mode(root.parent) == 0o700 and _mode(root / "keys") == 0o700
    assert _mode(root / "keys" / "master.key") == 0o600 and _mode(root / "keys" / "signing.pub.pem") == 0o644
    assert _mode(tmp_path / "e.jsonl") == 0o600 and _mode(tmp_path / "cp.json") == 0o600
    old = os.umask(0)
    try:
        with Ledger(root / "tracer.db") as ledger:  # a writer's -wal and -shm take the database's mode
            ledger.count()
            wal, shm = Path(f"{root}/tracer.db-wal"), Path(f"{root}/tracer.db-shm")
            assert _mode(wal) == 0o600 and _mode(shm) == 0o600
    finally:
        os.umask(old)


def test_file_mode_setting(tmp_path, passphrase):
    root = tmp_path / "ws"
    r = _sh(f"umask 000 && {sys.executable} -m tracer init {root}", TRACER_PASSPHRASE=passphrase, TRACER_FILE_MODE="640")
    assert r.returncode == 0, r
    assert _mode(root / "tracer.db") == 0o640 and _mode(root) == 0o750
    assert _mode(root / "keys" / "signing.key") == 0o600  # secrets stay private whatever the setting
    r = _sh(f"{sys.executable} -m tracer -w {root} ledger export -o {tmp_path / 'e.jsonl'}", TRACER_FILE_MODE="rw-r--r--")
    assert r.returncode == 3 and "TRACER_FILE_MODE" in r.stderr and "Traceback" not in r.stderr, r
    assert not (tmp_path / "e.jsonl").exists()


def test_issued_copies_are_0600(issued_tabular):
    issued = Path(issued_tabular) / "models" / "issued"
    copies = sorted(issued.glob("*.onnx"))
    assert copies and all(_mode(p) == 0o600 for p in copies), [(p.name, oct(_mode(p))) for p in copies]
    assert _mode(issued) == 0o700


# -- item 17 (issue 13): a read-only workspace can be verified ---------------------------------------


def _chmod_tree(root: Path, *, writable: bool) -> None:
    for p in [root, *root.rglob("*")]:
        m = _mode(p)
        os.chmod(p, (m | stat.S_IWUSR) if writable else (m & ~0o222))


def test_read_only_workspace_copy_can_be_listed_verified_exported_and_checkpointed(issued_ledger, run_cli, tmp_path):
    ws = issued_ledger
    before = {p.name: p.read_bytes() for p in ws.root.iterdir() if p.is_file()}
    out = tmp_path / "out"
    out.mkdir()
    _chmod_tree(ws.root, writable=False)
    try:
        for args in (["ledger", "verify"], ["ledger", "list"], ["ledger", "show", "2"], ["ledger", "export", "-o", out / "e.jsonl"],
                     ["ledger", "checkpoint", "-o", out / "cp.json"], ["keys", "export-public"]):
            r = run_cli(["-w", ws.root, *args])
            assert r.returncode == 0, (args, r)
        r = run_cli(["-w", ws.root, "ledger", "verify", "--checkpoint", out / "cp.json", "--json"])
        assert r.returncode == 0 and json.loads(r.stdout)["entries"] == 3, r
    finally:
        _chmod_tree(ws.root, writable=True)
    after = {p.name: p.read_bytes() for p in ws.root.iterdir() if p.is_file()}
    assert after == before  # byte-identical, and no -wal, -shm or journal appeared


def test_read_only_open_never_writes_even_where_it_could(issued_ledger, passphrase):
    db = issued_ledger.ledger_path
    before = db.read_bytes()
    os.chmod(db, 0o400)
    try:
        with Ledger(db, readonly=True) as ledger:
            assert ledger.count() == 3
            with pytest.raises(LedgerError):
                ledger.append("note", {"x": 1}, key=issued_ledger.unlock(passphrase=passphrase, master=False).signing_key)
    finally:
        os.chmod(db, 0o600)
    assert db.read_bytes() == before
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    with Ledger(db, readonly=True) as ledger:  # a live (writable) workspace: SQLite's mode=ro
        assert ledger.count() == 3
        with pytest.raises(LedgerError):
            ledger.append("note", {"x": 1}, key=issued_ledger.unlock(passphrase=passphrase, master=False).signing_key)
    assert db.read_bytes() == before


# -- issue 14 item 3: WAL once, at init --------------------------------------------------------------


def test_init_leaves_the_ledger_in_wal_mode_and_opening_never_changes_it(fresh_workspace, tmp_path):
    db = fresh_workspace.ledger_path
    assert db.read_bytes()[18:20] == b"\x02\x02"  # SQLite header: WAL read/write versions
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()
    legacy = tmp_path / "legacy.db"
    shutil.copyfile(db, legacy)
    conn = sqlite3.connect(legacy, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] == "delete"
    conn.close()
    with Ledger(legacy) as ledger:
        assert ledger.db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert ledger.count() == 1


# -- issue 14: the store's queries -------------------------------------------------------------------


def test_store_queries(issued_ledger, passphrase):
    keyring = issued_ledger.unlock(passphrase=passphrase)
    with issued_ledger.ledger() as ledger:
        ledger.append_many([
            ("probe-start", {"session": "s1", "subject": "http://x"}),
            ("probe-query", {"session": "s1", "idx": 0, "input_sha256": "a" * 64, "response": [1, 0]}),
            ("probe-query", {"session": "s2", "idx": 0, "input_sha256": "b" * 64, "response": [0, 1]}),
            ("probe-failed", {"session": "s1", "idx": 1, "error": "timeout"}),
        ], key=keyring.signing_key)
        assert ledger.has_issuance("cust000") and not ledger.has_issuance("nobody")
        assert ledger.issued_customers() == [("cust000", "CUST000", frozenset({"ps1", "ps2"})),
                                             ("cust001", "CUST001", frozenset({"ps1", "ps2"}))]
        assert ledger.count_issuances_with_sha(hashlib.sha256(b"cust001").hexdigest()) == 1
        assert ledger.count_issuances_with_sha("0" * 64) == 0
        assert [p["input_sha256"][0] for p in ledger.session_entries("s1", "probe-query")] == ["a"]
        assert ledger.session_entries("s1", "probe-failed") == [{"session": "s1", "idx": 1, "error": "timeout"}]
        assert ledger.issuance_seqs() == [2, 3]


# -- issue 17 item 11: ledger list -------------------------------------------------------------------


@pytest.fixture
def probed(issued_ledger, passphrase) -> Workspace:
    keyring = issued_ledger.unlock(passphrase=passphrase)
    with issued_ledger.ledger() as ledger:
        items = [("probe-start", {"session": "s1", "subject": "http://x"})]
        items += [("probe-query", {"session": "s1", "idx": i, "input_sha256": "a" * 64, "response": [1]}) for i in range(5)]
        items += [("probe-failed", {"session": "s1", "idx": 5, "error": "timeout"})]
        items += [("probe-result", {"session": "s1", "subject": "http://x", "verdict": "match", "customers": ["cust001"]})]
        ledger.append_many(items, key=keyring.signing_key)
    return issued_ledger


def test_ledger_list_hides_per_query_entries(probed, run_cli):
    r = run_cli(["-w", probed.root, "ledger", "list"])
    assert r.returncode == 0, r
    kinds = [line.split()[2] for line in r.stdout.splitlines()]
    assert kinds == ["genesis", "issuance", "issuance", "probe-start", "probe-result"]
    assert "6 per-query probe entries hidden" in r.stderr
    r = run_cli(["-w", probed.root, "ledger", "list", "--all"])
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 11, r
    r = run_cli(["-w", probed.root, "ledger", "list", "--kind", "probe-query", "--json"])
    assert [d["kind"] for d in json.loads(r.stdout)] == ["probe-query"] * 5


def test_ledger_list_filters_and_json_summary(probed, run_cli):
    r = run_cli(["-w", probed.root, "ledger", "list", "--json"])
    rows = json.loads(r.stdout)
    assert set(rows[0]) == {"seq", "kind", "time", "hash", "summary"}
    text = run_cli(["-w", probed.root, "ledger", "list"]).stdout.splitlines()
    assert [line.split(None, 3)[3] if len(line.split()) > 3 else "" for line in text] == [d["summary"] for d in rows]
    assert rows[-1]["summary"] == "session=s1 verdict=match" or rows[-1]["summary"].startswith("subject=http://x verdict=match")
    r = run_cli(["-w", probed.root, "ledger", "list", "--customer", "CUST001", "--json"])
    assert [d["seq"] for d in json.loads(r.stdout)] == [3, 11], r
    r = run_cli(["-w", probed.root, "ledger", "list", "--limit", "2", "--json"])
    assert [d["seq"] for d in json.loads(r.stdout)] == [4, 11]
    t = rows[2]["time"]
    r = run_cli(["-w", probed.root, "ledger", "list", "--since", t, "--json"])
    assert [d["seq"] for d in json.loads(r.stdout)] == [3, 4, 11]
    r = run_cli(["-w", probed.root, "ledger", "list", "--since", "2999-01-01", "--json"])
    assert json.loads(r.stdout) == []
    for bad in (["--since", "yesterday"], ["--limit", "0"], ["--customer", "bad id!"]):
        r = run_cli(["-w", probed.root, "ledger", "list", *bad])
        assert r.returncode == 2, (bad, r)


def test_parse_time_and_listing_library(probed):
    assert parse_time("2025-01-31") == "2025-01-31T00:00:00.000000Z"
    assert parse_time("2025-01-31T14:00+02:00") == "2025-01-31T12:00:00.000000Z"
    assert parse_time("2025-01-31T14:00:00Z") == "2025-01-31T14:00:00.000000Z"
    with pytest.raises(ValueError):
        parse_time("31/01/2025")
    with probed.ledger(readonly=True) as ledger:
        listing = list_entries(ledger)
        assert listing.hidden == 6 and [e.seq for e in listing.entries] == [1, 2, 3, 4, 11]
        assert len(list_entries(ledger, all_entries=True).entries) == 11
