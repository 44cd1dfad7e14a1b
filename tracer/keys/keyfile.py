"""Passphrase-encrypted key files: scrypt (memory-hard) + AES-256-GCM.

File format (JSON, UTF-8)::

    {"format": "tracer-keyfile/1", "kind": "master-secret" | "signing-key",
     "kdf": {"name": "scrypt", "n": 131072, "r": 8, "p": 1, "salt": b64},
     "aead": {"name": "AES-256-GCM", "nonce": b64},
     "check": b64, "ciphertext": b64, "digest": hex}

scrypt stretches the passphrase to 64 bytes: the first 32 are the AES key, the
last 32 are hashed into ``check`` so a wrong passphrase can be told apart from
a tampered file. The header (format, kind, kdf, aead, check) is the AEAD's
associated data, so no parameter can be changed without detection. ``digest``
is a plain SHA-256 over everything else: it catches truncation and accidental
corruption before any expensive KDF runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .._files import atomic_write_bytes
from .._json import StrictJSONError, loads_strict
from ..errors import KeyFileError, WrongPassphrase

FORMAT = "tracer-keyfile/1"

#: Default scrypt cost: 2**17 x 8 x 128 bytes = 128 MiB of memory per attempt (OWASP's recommendation).
DEFAULT_SCRYPT = {"n": 2**17, "r": 8, "p": 1}
#: Floor accepted when reading, so a tampered file cannot downgrade the KDF below something sane.
_MIN_SCRYPT_N = 2**10
#: Ceilings accepted when reading (16x the default work, 1 GiB of memory), so a tampered file
#: cannot make unlocking run for minutes or exhaust memory.
_MAX_SCRYPT_WORK = 2**24  # n * r * p
_MAX_SCRYPT_MEM = 2**23  # n * r (x 128 bytes)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def _stretch(passphrase: str, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes]:
    raw = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
    return raw[:32], hashlib.sha256(b"tracer-keyfile-check" + raw[32:]).digest()


def _digest(doc: dict) -> str:
    body = {k: v for k, v in doc.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _header(doc: dict) -> bytes:
    head = {k: doc[k] for k in ("format", "kind", "kdf", "aead", "check")}
    return json.dumps(head, sort_keys=True, separators=(",", ":")).encode()


def encrypt_secret(
    secret: bytes, *, passphrase: str, kind: str, scrypt: dict[str, int] | None = None
) -> bytes:
    """Return the bytes of a key file holding ``secret`` encrypted under ``passphrase``."""
    if not passphrase:
        raise KeyFileError("the passphrase is empty", hint="choose a non-empty passphrase")
    params = dict(DEFAULT_SCRYPT if scrypt is None else scrypt)
    salt = os.urandom(16)
    key, check = _stretch(passphrase, salt, params["n"], params["r"], params["p"])
    nonce = os.urandom(12)
    doc: dict = {
        "format": FORMAT,
        "kind": kind,
        "kdf": {"name": "scrypt", **params, "salt": _b64(salt)},
        "aead": {"name": "AES-256-GCM", "nonce": _b64(nonce)},
        "check": _b64(check),
    }
    doc["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, secret, _header(doc)))
    doc["digest"] = _digest(doc)
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def decrypt_secret(data: bytes, *, passphrase: str, kind: str, source: str = "key file") -> bytes:
    """Open a key file's bytes. Raises :class:`WrongPassphrase` or :class:`KeyFileError`."""
    try:
        doc = loads_strict(data)
    except StrictJSONError as exc:
        raise KeyFileError(f"{source} is truncated, corrupt or tampered with ({exc})", hint="restore it from your backup") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source} is truncated or corrupt (not a tracer key file)", hint="restore it from your backup")
    if doc.get("digest") != _digest(doc):
        raise KeyFileError(f"{source} has been tampered with or corrupted (digest mismatch)", hint="restore it from your backup")
    try:
        if doc["format"] != FORMAT:
            raise KeyFileError(f"{source} has unsupported format {doc['format']!r}")
        if doc["kind"] != kind:
            raise KeyFileError(f"{source} holds a {doc['kind']!r}, expected a {kind!r}")
        kdf, aead = doc["kdf"], doc["aead"]
        if kdf["name"] != "scrypt" or aead["name"] != "AES-256-GCM":
            raise KeyFileError(f"{source} uses an unsupported KDF or cipher")
        n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
        if n < _MIN_SCRYPT_N or n & (n - 1) or not (1 <= r <= 64 and 1 <= p <= 16) \
                or n * r > _MAX_SCRYPT_MEM or n * r * p > _MAX_SCRYPT_WORK:
            raise KeyFileError(f"{source} has implausible KDF parameters (tampered?)")
        salt, nonce = _unb64(kdf["salt"]), _unb64(aead["nonce"])
        check, ciphertext = _unb64(doc["check"]), _unb64(doc["ciphertext"])
    except (KeyError, TypeError, ValueError, AttributeError):  # AttributeError: a non-string where base64 belongs
        raise KeyFileError(f"{source} is missing fields or has malformed ones (tampered?)", hint="restore it from your backup") from None
    key, expected = _stretch(passphrase, salt, n, r, p)
    if not hmac.compare_digest(check, expected):
        raise WrongPassphrase(
            f"wrong passphrase for {source}",
            hint="check TRACER_PASSPHRASE or retype the passphrase",
        )
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _header(doc))
    except Exception:
        raise KeyFileError(f"{source} has been tampered with (authentication failed)", hint="restore it from your backup") from None


@dataclass(frozen=True)
class KdfTiming:
    seconds: float
    params: dict[str, int]


def time_kdf(scrypt: dict[str, int] | None = None) -> KdfTiming:
    """Measure one scrypt stretch with the given (default) parameters; used by bench/."""
    params = dict(DEFAULT_SCRYPT if scrypt is None else scrypt)
    t0 = time.perf_counter()
    _stretch("benchmark", b"\0" * 16, params["n"], params["r"], params["p"])
    return KdfTiming(time.perf_counter() - t0, params)


def write_key_file(path: Path, secret: bytes, *, passphrase: str, kind: str, scrypt: dict[str, int] | None = None) -> None:
    atomic_write_bytes(path, encrypt_secret(secret, passphrase=passphrase, kind=kind, scrypt=scrypt), mode=0o600)


def read_key_file(path: Path, *, passphrase: str, kind: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} is missing", hint="restore it from your backup, or run `tracer init` for a new workspace") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from None
    if not data:
        raise KeyFileError(f"key file {path} is empty (truncated)", hint="restore it from your backup")
    return decrypt_secret(data, passphrase=passphrase, kind=kind, source=f"key file {path.name}")
