"""Deterministic derivation of every per-customer secret from the master secret.

Nothing about a customer's watermark is stored: it is re-derived on demand.
Evidence may have to be re-derived years later on another machine, so every
byte comes from standard primitives with fixed, versioned labels, never from
numpy or torch random generators (their streams change between versions):

* ``HKDF-SHA256(master, salt="tracer/v1", info="tracer/v1/<purpose>")``
  gives a 32-byte key per purpose (one customer, one probe set, ...).
  HKDF outputs for different ``info`` strings are independent pseudo-random
  keys, so one customer's material reveals nothing about another's or about
  the master secret.
* ``SHAKE-256(key || label)`` is an extendable-output stream from that key.
* integers in ``[0, k)`` come from 32-bit big-endian words by rejection
  sampling, so every value is *exactly* uniform (no modulo bias): the
  identification statistics depend on it.

Golden vectors in ``tests/test_derive.py`` pin all of this.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import CustomerError

__all__ = [
    "DERIVATION_VERSION",
    "normalize_customer_id",
    "validate_display_name",
    "hkdf_key",
    "customer_key",
    "probe_set_key",
    "shake_stream",
    "uniform_ints",
    "pending_marker_key",
]

DERIVATION_VERSION = "v1"
_SALT = b"tracer/v1"
_CUSTOMER_ID = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
MAX_CUSTOMER_ID = 64
MAX_DISPLAY_NAME = 200


def normalize_customer_id(raw: str) -> str:
    """Return the canonical form of a customer id, or raise :class:`CustomerError`.

    Ids are NFKC-normalized, stripped and lower-cased, so ``" ACME-01"`` and
    ``"acme-01"`` are the same customer. Allowed: 1 to 64 of ``a-z 0-9 . _ @ + -``,
    starting with a letter or digit. Free text belongs in the display name.
    """
    if not isinstance(raw, str):
        raise CustomerError("customer id must be a string")
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in raw):
        raise CustomerError("customer id contains control characters")
    cid = unicodedata.normalize("NFKC", raw).strip().lower()
    if not cid:
        raise CustomerError("customer id is empty")
    if len(cid) > MAX_CUSTOMER_ID:
        raise CustomerError(f"customer id is longer than {MAX_CUSTOMER_ID} characters")
    if not _CUSTOMER_ID.match(cid):
        raise CustomerError(
            f"customer id {cid!r} has characters outside a-z 0-9 . _ @ + -",
            hint="put free text in --name; the id is a short stable handle",
        )
    return cid


def validate_display_name(name: str | None, default: str) -> str:
    """Display names are free text, but one line and of sane length."""
    if name is None or not name.strip():
        return default
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        raise CustomerError("display name contains control characters")
    name = unicodedata.normalize("NFC", name).strip()
    if len(name) > MAX_DISPLAY_NAME:
        raise CustomerError(f"display name is longer than {MAX_DISPLAY_NAME} characters")
    return name


def hkdf_key(master: bytes, purpose: str) -> bytes:
    """32-byte key for ``purpose``: HKDF-SHA256 with a versioned info string."""
    if len(master) != 32:
        raise ValueError("master secret must be 32 bytes")
    info = f"tracer/{DERIVATION_VERSION}/{purpose}".encode()
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=info).derive(master)


def customer_key(master: bytes, customer_id: str) -> bytes:
    return hkdf_key(master, f"customer/{normalize_customer_id(customer_id)}")


def probe_set_key(master: bytes, probe_set_id: str) -> bytes:
    return hkdf_key(master, f"probe-set/{probe_set_id}")


def shake_stream(key: bytes, label: str, nbytes: int) -> bytes:
    """First ``nbytes`` of SHAKE-256(key || 0x00 || label); prefixes are stable as nbytes grows."""
    return hashlib.shake_256(key + b"\0" + label.encode("utf-8")).digest(nbytes)


def uniform_ints(key: bytes, label: str, count: int, bound: int) -> np.ndarray:
    """``count`` integers exactly uniform in ``[0, bound)`` (int64), by rejection sampling."""
    if not 1 <= bound <= 2**32:
        raise ValueError("bound must be in [1, 2**32]")
    limit = (2**32 // bound) * bound
    nbytes = 4 * count + 64
    while True:  # the stream is prefix-stable, so growing it never changes accepted values
        words = np.frombuffer(shake_stream(key, label, nbytes), dtype=">u4").astype(np.int64)
        accepted = words[words < limit] % bound
        if accepted.size >= count:
            return accepted[:count].copy()
        nbytes *= 2


def pending_marker_key(master: bytes) -> bytes:
    """MAC key of the pending-issuance markers (``.tracer/pending/*.json``).

    Recovery after a crash renames or deletes the files a marker names, so it acts only on
    markers carrying a MAC under this key: ones this workspace's own ``tracer issue`` wrote.
    """
    return hkdf_key(master, "pending-issuance-marker")
