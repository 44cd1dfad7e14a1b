"""Encrypted key files and the keyring: roundtrips, wrong passphrases, tampering, modes, no leaks."""

from __future__ import annotations

import base64
import json
import os
import pickle
import stat
from pathlib import Path

import pytest

from tests._constants import LOW_SCRYPT as LOW
from tracer.errors import KeyFileError, WorkspaceError, WrongPassphrase
from tracer.keys.keyfile import (
    DEFAULT_SCRYPT,
    _digest,
    decrypt_secret,
    encrypt_secret,
    read_key_file,
    write_key_file,
)
from tracer.keys.keyring import Keyring, load_public_key

SECRET = bytes(range(32))
KEY_FILES = [("master.key", "master-secret"), ("signing.key", "signing-key")]


def _enc(passphrase: str = "pw-1", kind: str = "master-secret", secret: bytes = SECRET) -> bytes:
    return encrypt_secret(secret, passphrase=passphrase, kind=kind, scrypt=LOW)


# -- roundtrips ------------------------------------------------------------------------------------


def test_roundtrip_low_cost():
    data = _enc()
    assert decrypt_secret(data, passphrase="pw-1", kind="master-secret") == SECRET
    doc = json.loads(data)
    assert doc["format"] == "tracer-keyfile/1" and doc["kind"] == "master-secret"
    assert {k: doc["kdf"][k] for k in ("n", "r", "p")} == LOW
    assert SECRET not in data and base64.b64encode(SECRET) not in data


def test_roundtrip_default_params_is_memory_hard():
    data = encrypt_secret(SECRET, passphrase="pw-default", kind="signing-key")
    doc = json.loads(data)
    assert {k: doc["kdf"][k] for k in ("n", "r", "p")} == DEFAULT_SCRYPT
    assert DEFAULT_SCRYPT["n"] * DEFAULT_SCRYPT["r"] * 128 >= 128 * 2**20  # >= 128 MiB per guess
    assert decrypt_secret(data, passphrase="pw-default", kind="signing-key") == SECRET


def test_fresh_salt_and_nonce_every_time():
    a, b = json.loads(_enc()), json.loads(_enc())
    assert a["kdf"]["salt"] != b["kdf"]["salt"]
    assert a["aead"]["nonce"] != b["aead"]["nonce"]
    assert a["ciphertext"] != b["ciphertext"]


def test_unicode_passphrase_roundtrip():
    data = _enc(passphrase="pässwört 🔑 ключ")
    assert decrypt_secret(data, passphrase="pässwört 🔑 ключ", kind="master-secret") == SECRET
    with pytest.raises(WrongPassphrase):
        decrypt_secret(data, passphrase="passwort 🔑 ключ", kind="master-secret")


def test_empty_passphrase_refused():
    with pytest.raises(KeyFileError, match="empty"):
        encrypt_secret(SECRET, passphrase="", kind="master-secret", scrypt=LOW)


def test_key_file_roundtrip_and_mode(tmp_path: Path):
    path = tmp_path / "k.key"
    write_key_file(path, SECRET, passphrase="pw-1", kind="master-secret", scrypt=LOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path, passphrase="pw-1", kind="master-secret") == SECRET
    assert not [p for p in tmp_path.iterdir() if p.name != "k.key"], "temporary files left behind"


def test_keyring_create_open(tmp_path: Path):
    created = Keyring.create(tmp_path / "keys", passphrase="pw-1", scrypt=LOW)
    opened = Keyring.open(tmp_path / "keys", passphrase="pw-1")
    assert opened.master == created.master and len(opened.master) == 32
    assert opened.public_key == created.public_key
    pem = Keyring.public_key_pem(tmp_path / "keys")
    assert load_public_key(pem) == opened.public_key
    with pytest.raises(WorkspaceError, match="refusing to overwrite keys"):
        Keyring.create(tmp_path / "keys", passphrase="pw-1", scrypt=LOW)
    assert Keyring.open(tmp_path / "keys", passphrase="pw-1").master == created.master


def test_keyring_partial_unlock_and_secrecy(tmp_path: Path):
    Keyring.create(tmp_path / "keys", passphrase="pw-1", scrypt=LOW)
    only_signing = Keyring.open(tmp_path / "keys", passphrase="pw-1", master=False)
    with pytest.raises(KeyFileError, match="not unlocked"):
        only_signing.master
    only_master = Keyring.open(tmp_path / "keys", passphrase="pw-1", signing=False)
    with pytest.raises(KeyFileError, match="not unlocked"):
        only_master.signing_key
    assert "hidden" in repr(only_master) and only_master.master.hex() not in repr(only_master)
    with pytest.raises(TypeError):
        pickle.dumps(only_master)


def test_key_files_are_0600_even_with_permissive_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        Keyring.create(tmp_path / "keys", passphrase="pw-1", scrypt=LOW)
    finally:
        os.umask(old)
    for name, _ in KEY_FILES:
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((tmp_path / "keys" / "signing.pub.pem").stat().st_mode) == 0o644


def test_workspace_key_files_are_0600(fresh_workspace):
    for name, _ in KEY_FILES:
        assert stat.S_IMODE((fresh_workspace.keys_dir / name).stat().st_mode) == 0o600, name


# -- wrong passphrase ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,kind", KEY_FILES)
def test_wrong_passphrase_library(fresh_workspace, name, kind, snapshot_files):
    before = snapshot_files(fresh_workspace.root)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        read_key_file(fresh_workspace.keys_dir / name, passphrase="not the passphrase", kind=kind)
    with pytest.raises(WrongPassphrase):
        fresh_workspace.unlock(passphrase="not the passphrase")
    assert snapshot_files(fresh_workspace.root) == before


def _assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[0].startswith("error: "), stderr
    assert len([x for x in lines if x.startswith("error:")]) == 1, stderr
    assert all(x.startswith(("error:", "hint:")) for x in lines), stderr
    assert len(lines) <= 2, stderr
    for needle in needles:
        assert needle in lines[0], stderr


def test_wrong_passphrase_cli_exit_3_no_traceback_nothing_changed(fresh_workspace, run_cli, snapshot_files, passphrase):
    before = snapshot_files(fresh_workspace.root)
    wrong = "definitely-WRONG-passphrase"
    r = run_cli(["-w", fresh_workspace.root, "ledger", "checkpoint"], env={"TRACER_PASSPHRASE": wrong})
    assert r.returncode == 3, r
    assert r.stdout == ""
    _assert_one_line_error(r.stderr, "wrong passphrase")
    assert wrong not in r.stderr and passphrase not in r.stderr
    assert snapshot_files(fresh_workspace.root) == before


def test_no_passphrase_and_no_terminal_cli(fresh_workspace, run_cli, snapshot_files):
    before = snapshot_files(fresh_workspace.root)
    r = run_cli(["-w", fresh_workspace.root, "ledger", "checkpoint"], env={"TRACER_PASSPHRASE": None})
    assert r.returncode == 3, r
    _assert_one_line_error(r.stderr, "no passphrase")
    assert "TRACER_PASSPHRASE" in r.stderr  # the hint says how to provide one
    assert snapshot_files(fresh_workspace.root) == before


# -- tampering: always KeyFileError, never WrongPassphrase -----------------------------------------


def _flip_b64(text: str, index: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _edit(data: bytes, fn, *, fix_digest: bool) -> bytes:
    """Apply ``fn`` to the parsed key file; ``fix_digest`` plays an attacker who also recomputes the plain digest."""
    doc = json.loads(data)
    fn(doc)
    if fix_digest:
        doc["digest"] = _digest(doc)
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


TAMPERINGS = {
    # raw damage
    "truncated-half": lambda d: d[: len(d) // 2],
    "truncated-tail": lambda d: d[:-3],
    "truncated-to-one-byte": lambda d: d[:1],
    "garbage-byte": lambda d: d[:40] + b"\xff" + d[41:],
    "not-an-object": lambda d: b"[1, 2, 3]\n",
    # edits that leave the plain digest stale
    "ciphertext-bit-flip": lambda d: _edit(d, lambda x: x.update(ciphertext=_flip_b64(x["ciphertext"], 5)), fix_digest=False),
    "kdf-n-changed": lambda d: _edit(d, lambda x: x["kdf"].update(n=x["kdf"]["n"] * 2), fix_digest=False),
    "kdf-r-changed": lambda d: _edit(d, lambda x: x["kdf"].update(r=1), fix_digest=False),
    "kdf-salt-changed": lambda d: _edit(d, lambda x: x["kdf"].update(salt=_flip_b64(x["kdf"]["salt"])), fix_digest=False),
    "kind-changed": lambda d: _edit(d, lambda x: x.update(kind="signing-key" if x["kind"] == "master-secret" else "master-secret"), fix_digest=False),
    "nonce-changed": lambda d: _edit(d, lambda x: x["aead"].update(nonce=_flip_b64(x["aead"]["nonce"])), fix_digest=False),
    "field-removed": lambda d: _edit(d, lambda x: x.pop("check"), fix_digest=False),
    # an attacker who also recomputes the digest
    "ciphertext-bit-flip+digest": lambda d: _edit(d, lambda x: x.update(ciphertext=_flip_b64(x["ciphertext"], 5)), fix_digest=True),
    "ciphertext-cut+digest": lambda d: _edit(d, lambda x: x.update(ciphertext=base64.b64encode(base64.b64decode(x["ciphertext"])[:-1]).decode()),
                                              fix_digest=True),
    "nonce-changed+digest": lambda d: _edit(d, lambda x: x["aead"].update(nonce=_flip_b64(x["aead"]["nonce"])), fix_digest=True),
    "kdf-n-below-floor+digest": lambda d: _edit(d, lambda x: x["kdf"].update(n=2**4), fix_digest=True),
    "kdf-n-not-power-of-two+digest": lambda d: _edit(d, lambda x: x["kdf"].update(n=5000), fix_digest=True),
    "kdf-cost-huge+digest": lambda d: _edit(d, lambda x: x["kdf"].update(n=2**20, r=64, p=16), fix_digest=True),
    "kdf-n-absurd+digest": lambda d: _edit(d, lambda x: x["kdf"].update(n=2**40), fix_digest=True),
    "kdf-name-changed+digest": lambda d: _edit(d, lambda x: x["kdf"].update(name="pbkdf2"), fix_digest=True),
    "salt-not-a-string+digest": lambda d: _edit(d, lambda x: x["kdf"].update(salt=12345), fix_digest=True),
    "salt-not-base64+digest": lambda d: _edit(d, lambda x: x["kdf"].update(salt="!!not base64!!"), fix_digest=True),
    "format-changed+digest": lambda d: _edit(d, lambda x: x.update(format="tracer-keyfile/0"), fix_digest=True),
}


@pytest.mark.parametrize("name,kind", KEY_FILES)
@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampered_key_file_is_keyfileerror_not_wrong_passphrase(fresh_workspace, passphrase, name, kind, how):
    path = fresh_workspace.keys_dir / name
    path.write_bytes(TAMPERINGS[how](path.read_bytes()))
    with pytest.raises(KeyFileError) as info:
        read_key_file(path, passphrase=passphrase, kind=kind)
    assert not isinstance(info.value, WrongPassphrase), info.value.message
    assert any(word in info.value.message for word in ("tampered", "truncated", "unsupported")), info.value.message
    with pytest.raises(KeyFileError) as info2:  # and through the keyring, with the right passphrase
        fresh_workspace.unlock(passphrase=passphrase)
    assert not isinstance(info2.value, WrongPassphrase)


def test_kind_relabelled_with_fixed_digest_fails_authentication(fresh_workspace, passphrase):
    """Relabel signing.key as a master secret (digest fixed): the AEAD header binds the kind."""
    path = fresh_workspace.keys_dir / "signing.key"
    data = _edit(path.read_bytes(), lambda x: x.update(kind="master-secret"), fix_digest=True)
    with pytest.raises(KeyFileError) as info:
        decrypt_secret(data, passphrase=passphrase, kind="master-secret")
    assert not isinstance(info.value, WrongPassphrase)
    assert "tampered" in info.value.message


def test_swapped_key_files_are_detected(fresh_workspace, passphrase):
    keys = fresh_workspace.keys_dir
    master, signing = (keys / "master.key").read_bytes(), (keys / "signing.key").read_bytes()
    (keys / "master.key").write_bytes(signing)
    (keys / "signing.key").write_bytes(master)
    with pytest.raises(KeyFileError) as info:
        fresh_workspace.unlock(passphrase=passphrase)
    assert not isinstance(info.value, WrongPassphrase)
    assert "expected" in info.value.message


def test_empty_and_missing_key_files(fresh_workspace, passphrase):
    path = fresh_workspace.keys_dir / "master.key"
    path.write_bytes(b"")
    with pytest.raises(KeyFileError, match="empty .*truncated") as info:
        fresh_workspace.unlock(passphrase=passphrase)
    assert not isinstance(info.value, WrongPassphrase)
    with pytest.raises(KeyFileError, match="truncated"):
        decrypt_secret(b"", passphrase=passphrase, kind="master-secret")
    path.unlink()
    with pytest.raises(KeyFileError, match="missing"):
        fresh_workspace.unlock(passphrase=passphrase)


def test_replaced_public_key_is_detected(fresh_workspace, passphrase, tmp_path):
    other = Keyring.create(tmp_path / "other", passphrase="x", scrypt=LOW)
    (fresh_workspace.keys_dir / "signing.pub.pem").write_bytes((tmp_path / "other" / "signing.pub.pem").read_bytes())
    assert other.public_key is not None
    with pytest.raises(KeyFileError, match="does not match"):
        fresh_workspace.unlock(passphrase=passphrase)


def test_tampered_key_file_cli_says_tampered(fresh_workspace, run_cli, snapshot_files):
    path = fresh_workspace.keys_dir / "signing.key"
    path.write_bytes(TAMPERINGS["ciphertext-bit-flip+digest"](path.read_bytes()))
    before = snapshot_files(fresh_workspace.root)
    r = run_cli(["-w", fresh_workspace.root, "ledger", "checkpoint"])
    assert r.returncode == 3, r
    _assert_one_line_error(r.stderr, "tampered")
    assert "wrong passphrase" not in r.stderr
    assert snapshot_files(fresh_workspace.root) == before


# -- the passphrase never leaks --------------------------------------------------------------------


def _encodings(secret: str) -> list[bytes]:
    raw = secret.encode()
    return [raw, secret.encode("utf-16-le"), base64.b64encode(raw), raw.hex().encode()]


def test_passphrase_never_in_outputs_or_files(fresh_workspace, cli, run_cli, passphrase, tmp_path):
    ws = fresh_workspace.root
    wrong = "Wrong-Passphrase-Zz9"
    outputs = []
    for args, env in [
        (["ledger", "checkpoint", "-o", tmp_path / "cp.json"], {}),
        (["ledger", "verify", "--checkpoint", tmp_path / "cp.json"], {}),
        (["ledger", "export", "-o", tmp_path / "export.jsonl"], {}),
        (["ledger", "list", "--json"], {}),
        (["ledger", "show", "1"], {}),
        (["keys", "export-public"], {}),
        (["ledger", "checkpoint"], {"TRACER_PASSPHRASE": wrong}),
    ]:
        r = cli(["-w", ws, *args], env=env)
        outputs.append(r.stdout + r.stderr)
    r = run_cli(["-w", ws, "--verbose", "ledger", "checkpoint"], env={"TRACER_PASSPHRASE": wrong})
    outputs.append(r.stdout + r.stderr)
    assert outputs[-1].count("Traceback") == 1  # the verbose run did print a traceback...
    blob = "\n".join(outputs)
    for secret in (passphrase, wrong):
        assert secret not in blob  # ...yet neither passphrase appears anywhere
    files = [p for p in (*ws.rglob("*"), *tmp_path.glob("*.json*")) if p.is_file()]
    assert len(files) >= 6
    for p in files:
        data = p.read_bytes()
        for needle in _encodings(passphrase) + _encodings(wrong):
            assert needle not in data, p


def test_errors_never_contain_the_passphrase(fresh_workspace):
    secret = "Sup3r-Secret-Passphrase"
    with pytest.raises(WrongPassphrase) as info:
        fresh_workspace.unlock(passphrase=secret)
    assert secret not in str(info.value) and secret not in (info.value.hint or "")
    assert secret not in repr(info.value)
