"""The workspace's keys: master secret and Ed25519 signing key, encrypted at rest.

Layout of the key folder::

    master.key        32-byte master secret (encrypted key file)
    signing.key       Ed25519 private key, raw 32 bytes (encrypted key file)
    signing.pub.pem   public verification key (not secret; give it to auditors)
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .._files import atomic_write_bytes, ensure_dir
from ..errors import KeyFileError, WorkspaceError
from .keyfile import read_key_file, write_key_file

__all__ = ["Keyring", "get_passphrase", "load_public_key", "PASSPHRASE_ENV"]

PASSPHRASE_ENV = "TRACER_PASSPHRASE"
MASTER_FILE = "master.key"
SIGNING_FILE = "signing.key"
PUBLIC_FILE = "signing.pub.pem"


def get_passphrase(*, confirm: bool = False) -> str:
    """The passphrase from ``TRACER_PASSPHRASE``, else a hidden prompt on the terminal."""
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise KeyFileError(
            "no passphrase available",
            hint=f"set {PASSPHRASE_ENV} or run in a terminal to be prompted",
        )
    first = getpass.getpass("tracer passphrase: ")
    if confirm and getpass.getpass("repeat passphrase: ") != first:
        raise KeyFileError("the two passphrases differ")
    if not first:
        raise KeyFileError("the passphrase is empty")
    return first


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise KeyFileError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("the public key is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


class Keyring:
    """Decrypted keys of one workspace. Never printed, pickled or logged."""

    __slots__ = ("_master", "_signing", "folder")

    def __init__(self, folder: Path, *, master: bytes | None, signing: Ed25519PrivateKey | None) -> None:
        self.folder = folder
        self._master = master
        self._signing = signing

    def __repr__(self) -> str:
        return f"Keyring({str(self.folder)!r}, <secrets hidden>)"

    def __reduce__(self):  # pragma: no cover - defensive
        raise TypeError("Keyring holds secrets and cannot be pickled")

    @property
    def master(self) -> bytes:
        if self._master is None:
            raise KeyFileError("the master secret was not unlocked for this operation")
        return self._master

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        if self._signing is None:
            raise KeyFileError("the signing key was not unlocked for this operation")
        return self._signing

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.signing_key.public_key()

    @classmethod
    def create(cls, folder: Path, *, passphrase: str, scrypt: dict[str, int] | None = None) -> Keyring:
        """Generate fresh keys from the OS CSPRNG and write them encrypted (mode 0600)."""
        folder = ensure_dir(Path(folder))
        for name in (MASTER_FILE, SIGNING_FILE):
            if (folder / name).exists():
                raise WorkspaceError(f"{folder / name} already exists; refusing to overwrite keys")
        master = os.urandom(32)
        signing = Ed25519PrivateKey.generate()
        raw = signing.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        write_key_file(folder / MASTER_FILE, master, passphrase=passphrase, kind="master-secret", scrypt=scrypt)
        write_key_file(folder / SIGNING_FILE, raw, passphrase=passphrase, kind="signing-key", scrypt=scrypt)
        atomic_write_bytes(folder / PUBLIC_FILE, public_pem(signing.public_key()), mode=0o644)
        return cls(folder, master=master, signing=signing)

    @classmethod
    def open(cls, folder: Path, *, passphrase: str, master: bool = True, signing: bool = True) -> Keyring:
        """Decrypt the requested keys; raises WrongPassphrase / KeyFileError and changes nothing."""
        folder = Path(folder)
        secret = read_key_file(folder / MASTER_FILE, passphrase=passphrase, kind="master-secret") if master else None
        if secret is not None and len(secret) != 32:
            raise KeyFileError("key file master.key does not hold a 32-byte secret (tampered?)")
        sk = None
        if signing:
            raw = read_key_file(folder / SIGNING_FILE, passphrase=passphrase, kind="signing-key")
            try:
                sk = Ed25519PrivateKey.from_private_bytes(raw)
            except ValueError:
                raise KeyFileError("key file signing.key does not hold an Ed25519 key (tampered?)") from None
            pub_path = folder / PUBLIC_FILE
            if pub_path.exists() and load_public_key(pub_path.read_bytes()) != sk.public_key():
                raise KeyFileError(f"{pub_path} does not match signing.key (tampered?)")
        return cls(folder, master=secret, signing=sk)

    @staticmethod
    def public_key_pem(folder: Path) -> bytes:
        """The public verification key; needs no passphrase."""
        path = Path(folder) / PUBLIC_FILE
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(f"public key {path} is missing") from None
        load_public_key(pem)
        return pem
