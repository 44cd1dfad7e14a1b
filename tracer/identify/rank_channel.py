"""The rank-code channel of an identification: read the suspect's scores on the vendor's validation inputs.

See :mod:`tracer.fingerprint.rankcode` for the code and :func:`tracer.fingerprint.stats.rank_code_tails`
for its exact null. Which customers are read is fixed by the ledger (copies whose record carries a
``rank-code/v1`` entry, as the customer table holds it: :meth:`IssuedCustomers.members`), and whether the channel is read at all by the suspect's output type and the
vendor's data: neither looks at any customer's code, so leaving the channel out (no Bonferroni factor)
keeps the key test's p-value exact.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._files import atomic_write_bytes, ensure_dir
from ..fingerprint import rankcode
from ..keys.derive import hkdf_key

if TYPE_CHECKING:
    from .scoring import IssuedCustomers

__all__ = ["RankScores", "read_rank_code", "read_outputs", "read_set"]


@dataclass
class RankScores:
    """Per customer (in the scored table's order): whether its copies carry a rank code, concordant pairs, exact p."""

    carried: np.ndarray  # bool
    concordant: np.ndarray  # int64; 0 where not carried
    p: np.ndarray  # 1.0 where not carried
    log10_p: np.ndarray  # 0.0 where not carried
    pairs: int  # pairs read: classes read x (C-1)(C-2)/2
    classes: int  # classes with validation inputs
    inputs: int  # validation inputs sent to the suspect

    def summary(self) -> dict:
        """The ``rank_code`` block of the result document."""
        return {"read": True, "style": rankcode.RANK_CODE_STYLE, "queries": self.inputs, "classes": self.classes,
                "pairs": self.pairs, "carriers": int(self.carried.sum()), "chance": self.pairs / 2}


#: why the channel was not read, in the ``rank_code`` block
NO_SCORES = "the suspect returns class indices, not scores"


def _not_read(reason: str) -> dict:
    """The ``rank_code`` block when the channel is not read, and why."""
    return {"read": False, "style": rankcode.RANK_CODE_STYLE, "reason": reason}


_READ_SET = "rank-read-set.bin"  # in the cache folder: the validation inputs and labels the code is read on, encrypted
_READ_MAGIC = b"tracer-rank-read-set/v1\0"


def read_set(master: bytes, cache_dir: Path | None,
             load: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The vendor's validation inputs and labels, from the encrypted cache where it holds them, else ``load()`` (then cached).

    Loading the vendor's data can be slow (digits: 2.6 s, mostly importing scikit-learn), and an
    identification needs only its validation split. The file is AES-256-GCM under a key derived from
    the master secret (the data are the vendor's), mode 0600, written atomically; anything that does
    not decrypt or parse is ignored and rewritten. Any fixed inputs give a valid test (the null needs
    them independent of the codes, not current): delete ``.tracer/cache`` to read today's data.
    """
    path = None if cache_dir is None else cache_dir / _READ_SET
    key = hkdf_key(master, "cache/rank-read-set")
    if path is not None:
        try:
            blob = path.read_bytes()
            if blob.startswith(_READ_MAGIC):
                nonce, ct = blob[len(_READ_MAGIC):len(_READ_MAGIC) + 12], blob[len(_READ_MAGIC) + 12:]
                body = AESGCM(key).decrypt(nonce, ct, _READ_MAGIC)
                n = int.from_bytes(body[:4], "big")
                meta = json.loads(body[4:4 + n])
                x = np.frombuffer(body, dtype=np.dtype(meta["dtype"]), count=int(np.prod(meta["shape"])), offset=4 + n)
                y = np.frombuffer(body, dtype="<i8", count=meta["shape"][0], offset=4 + n + x.nbytes)
                return x.reshape(meta["shape"]).copy(), y.astype(np.int64)
        except (OSError, InvalidTag, ValueError, KeyError, TypeError):
            pass
    x, y = load()
    if path is not None:
        try:
            x = np.ascontiguousarray(x)
            meta = json.dumps({"shape": list(x.shape), "dtype": x.dtype.str}).encode()
            body = len(meta).to_bytes(4, "big") + meta + x.tobytes() + np.asarray(y, dtype="<i8").tobytes()
            nonce = os.urandom(12)
            ensure_dir(path.parent)
            atomic_write_bytes(path, _READ_MAGIC + nonce + AESGCM(key).encrypt(nonce, body, _READ_MAGIC), mode=0o600)
        except OSError:  # a cache is never a reason to fail
            pass
    return x, y


def read_rank_code(master: bytes, customers: IssuedCustomers, *, num_classes: int,
                   scores: Callable[[np.ndarray], np.ndarray | None] | None,
                   validation: Callable[[], tuple[np.ndarray, np.ndarray]],
                   cache_dir: Path | None = None) -> tuple[RankScores | None, dict | None]:
    """(scores of the channel or None, its ``rank_code`` block or None when no copy carries one).

    ``scores(x)`` returns the suspect's raw outputs (None: class indices only); ``validation()`` the
    vendor's validation inputs and labels; ``cache_dir``: the encrypted cache of codes and of the read set.
    """
    if not rankcode.applicable(num_classes) or not customers.members(rankcode.RANK_CODE_STYLE).any():
        return None, None
    if scores is None:
        return None, _not_read(NO_SCORES)
    x_val, y_val = read_set(master, cache_dir, validation)
    return read_outputs(master, customers, num_classes=num_classes, outputs=scores(x_val), labels=y_val, cache_dir=cache_dir)


def read_outputs(master: bytes, customers: IssuedCustomers, *, num_classes: int, outputs: np.ndarray | None,
                 labels: np.ndarray, cache_dir: Path | None = None) -> tuple[RankScores | None, dict | None]:
    """The read itself, on a suspect's raw ``outputs`` for inputs of known ``labels`` (any fixed inputs: the null needs
    them chosen independently of the codes). ``tracer probe --rank-code`` calls it on the answers it got."""
    if not rankcode.applicable(num_classes):
        return None, None
    carried = customers.members(rankcode.RANK_CODE_STYLE)  # from the customer table: no scan of the ledger
    if not carried.any():
        return None, None
    logs = None if outputs is None else rankcode.log_scores(outputs)
    if logs is None or logs.shape != (len(labels), num_classes):
        return None, _not_read(NO_SCORES)
    profiles, read = rankcode.class_profiles(logs, labels, num_classes)
    rows = np.flatnonzero(carried)
    ids = customers.ids if len(rows) == len(carried) else [customers.ids[int(i)] for i in rows]
    concordant = np.zeros(len(carried), dtype=np.int64)
    classes = int(read.sum())
    concordant[rows] = rankcode.concordant_pairs(profiles, read, rankcode.rank_matrix(master, ids, num_classes, cache_dir=cache_dir))
    p, logp = np.ones(len(carried)), np.zeros(len(carried))
    p[rows], logp[rows] = rankcode.rank_p_values(concordant[rows], num_classes=num_classes, classes_read=classes)
    out = RankScores(carried=carried, concordant=concordant, p=p, log10_p=logp,
                     pairs=classes * (num_classes - 1) * (num_classes - 2) // 2, classes=classes, inputs=len(labels))
    return out, out.summary()
