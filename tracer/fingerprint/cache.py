"""An encrypted cache of codeword matrices, so identification cost does not grow with customers.

Deriving a codeword costs an HKDF and a SHAKE stream per customer and probe set
(~20 µs): 0.4 s for 10,000 customers and two sets, which would dominate an
identification that otherwise takes 40 ms. The matrices are secret (they are
the watermarks), so the cache is encrypted with AES-256-GCM under a key derived
from the master secret (``HKDF(master, "tracer/v1/cache/codewords")``); its
header (probe set, sizes, customer count) is authenticated as associated data.
It holds nothing the master secret cannot re-derive, so deleting it is always
safe; a cache that fails authentication is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._files import atomic_write_bytes, ensure_dir
from ..keys.derive import hkdf_key
from .probes import codewords

__all__ = ["cached_codewords"]

_MAGIC = b"TRCW1"


def _path(folder: Path, set_id: str, count: int, num_classes: int) -> Path:
    return folder / f"codewords-{set_id}-{count}x{num_classes}.bin"


def _load(path: Path, key: bytes, header: dict) -> tuple[list[str], np.ndarray] | None:
    try:
        blob = path.read_bytes()
        if not blob.startswith(_MAGIC):
            return None
        nonce, ct = blob[len(_MAGIC) : len(_MAGIC) + 12], blob[len(_MAGIC) + 12 :]
        plain = AESGCM(key).decrypt(nonce, ct, json.dumps(header, sort_keys=True).encode())
        (n,) = struct.unpack(">I", plain[:4])
        ids = json.loads(plain[4 : 4 + n])
        matrix = np.frombuffer(plain[4 + n :], dtype=">i2").astype(np.int16).reshape(len(ids), header["count"])
        return ids, matrix
    except Exception:  # missing, truncated, tampered, or from another key: rebuild
        return None


def _store(path: Path, key: bytes, header: dict, ids: list[str], matrix: np.ndarray) -> None:
    raw_ids = json.dumps(ids).encode()
    plain = struct.pack(">I", len(raw_ids)) + raw_ids + matrix.astype(">i2").tobytes()
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plain, json.dumps(header, sort_keys=True).encode())
    ensure_dir(path.parent)
    atomic_write_bytes(path, _MAGIC + nonce + ct, mode=0o600)


def cached_codewords(
    master: bytes, customer_ids: list[str], set_id: str, count: int, num_classes: int, *, folder: Path | None
) -> np.ndarray:
    """Codeword matrix [N, P] for ``customer_ids``; reuses and extends the encrypted cache in ``folder``."""
    if folder is None or not customer_ids:
        return codewords(master, customer_ids, set_id, count, num_classes)
    key = hkdf_key(master, "cache/codewords")
    header = {"format": "tracer-codeword-cache/1", "set": set_id, "count": count, "classes": num_classes,
              "key_id": hashlib.sha256(key).hexdigest()[:16]}
    path = _path(folder, set_id, count, num_classes)
    cached = _load(path, key, header)
    index: dict[str, int] = {}
    matrix = np.zeros((0, count), dtype=np.int16)
    ids: list[str] = []
    if cached is not None:
        ids, matrix = cached
        index = {cid: i for i, cid in enumerate(ids)}
    missing = [cid for cid in dict.fromkeys(customer_ids) if cid not in index]
    if missing:
        extra = codewords(master, missing, set_id, count, num_classes)
        ids = ids + missing
        matrix = np.concatenate([matrix, extra])
        index.update({cid: len(ids) - len(missing) + i for i, cid in enumerate(missing)})
        try:
            _store(path, key, header, ids, matrix)
        except OSError:
            pass  # a read-only workspace still identifies, just slower
    if ids == customer_ids:
        return matrix
    return matrix[np.fromiter((index[c] for c in customer_ids), dtype=np.int64, count=len(customer_ids))]
