"""Probe sets and per-customer codewords, all derived from the master secret.

Design: a probe set is P inputs in the task's input domain, shared by every
customer; customer c's watermark is a secret *codeword* over it, one label
per probe, exactly uniform in ``0..C-1`` and derived from c's own HKDF key.
Embedding teaches copy c to answer probe i with ``codeword_c[i]``.

Why this is statistically clean: a model that is not derived from customer c
was built without c's codeword, and the codeword is uniform and independent of
everything else, so whatever that model answers on the probes, each answer
agrees with ``codeword_c[i]`` with probability exactly 1/C, independently
across probes. Matches are Binomial(P, 1/C): an exact p-value with nothing
to calibrate, and one pass over P probes scores every customer at once.

Probe inputs live on the task's grid (8-bit pixels for images, 16-bit steps
for tabular ranges) so that PNG encoding or float16 storage keeps them intact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..config import TaskConfig
from ..keys.derive import customer_key, hkdf_key, normalize_customer_id, probe_set_key, uniform_ints

__all__ = ["ProbeSet", "probe_set_ids", "make_probe_set", "codeword", "customer_labels", "codewords", "trigger_commitment", "PROBE_STYLE"]

PROBE_STYLE = "uniform-grid/v1"
_TABULAR_STEPS = 65536


def probe_set_ids(count: int) -> list[str]:
    return [f"ps{i}" for i in range(1, count + 1)]


@dataclass(frozen=True)
class ProbeSet:
    id: str
    inputs: np.ndarray  # [P, *input_shape], the task's dtype

    @property
    def size(self) -> int:
        return int(self.inputs.shape[0])

    def bound(self, num_classes: int) -> int:
        """Codeword entries are drawn in ``[0, bound)``: here the classes themselves."""
        return num_classes

    def labels(self, index: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """The classes codeword entries ``index`` stand for (here: themselves; ``keys`` selects columns already taken)."""
        return np.asarray(index, dtype=np.int64)

    def scored(self, answers: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """Which answers count as trials: all of them here (any answer matches a uniform class w.p. exactly 1/C)."""
        return np.ones(len(answers), dtype=bool)

    def record(self) -> dict:
        """What an issuance records of the set (its ``probe_sets`` entry)."""
        return {"id": self.id, "size": self.size, "digest": self.digest()}

    def digest(self) -> str:
        """Public fingerprint of the probe inputs (reveals nothing about any codeword)."""
        h = hashlib.sha256(f"{self.id}|{self.inputs.dtype.str}|{self.inputs.shape}".encode())
        h.update(np.ascontiguousarray(self.inputs).tobytes())
        return h.hexdigest()


def make_probe_set(master: bytes, set_id: str, task: TaskConfig, count: int) -> ProbeSet:
    """The probe inputs of one set: uniform over the input domain's grid, from SHAKE-256."""
    key = probe_set_key(master, set_id)
    n = task.features
    steps = task.levels if task.domain == "image" else _TABULAR_STEPS
    grid = uniform_ints(key, f"inputs/{PROBE_STYLE}", count * n, steps).reshape(count, n).astype(np.float64)
    low, high = task.bounds(flat=True)
    values = low + (high - low) * (grid / (steps - 1))
    return ProbeSet(set_id, values.reshape((count, *task.input_shape)).astype(task.input_dtype))


def codeword(master: bytes, customer_id: str, set_id: str, count: int, num_classes: int) -> np.ndarray:
    """Customer's secret labels over one probe set (int64, exactly uniform in 0..C-1)."""
    return uniform_ints(customer_key(master, customer_id), f"codeword/{set_id}", count, num_classes)


def customer_labels(master: bytes, customer_id: str, key_set: ProbeSet, num_classes: int) -> np.ndarray:
    """The classes customer ``customer_id``'s copies answer on ``key_set``'s inputs (any key style)."""
    return key_set.labels(codeword(master, customer_id, key_set.id, key_set.size, key_set.bound(num_classes)))


def codewords(master: bytes, customer_ids: list[str], set_id: str, count: int, num_classes: int) -> np.ndarray:
    """Codeword matrix [N customers, P probes] as int16 (int32 for bounds above 32767: the rank code's), for vectorized scoring."""
    out = np.empty((len(customer_ids), count), dtype=np.int16 if num_classes <= 32767 else np.int32)
    for i, cid in enumerate(customer_ids):
        out[i] = codeword(master, cid, set_id, count, num_classes)
    return out


def trigger_commitment(master: bytes, customer_id: str, probe_sets: list, num_classes: int) -> str:
    """A hiding, binding commitment to a customer's trigger set, for the ledger.

    SHA-256 over a salt derived from the customer's key, the key-set digests
    and the codewords (for a key pool, the indices into each key's label set;
    the label sets are in the pool's digest). Without the master secret the
    commitment reveals nothing; with it, anyone can re-derive the triggers and
    check the record. ``probe_sets`` holds :class:`ProbeSet` objects or anything
    with their ``id``, ``size``, ``digest()`` (and ``bound(num_classes)`` for a pool).
    """
    cid = normalize_customer_id(customer_id)
    salt = hkdf_key(master, f"commitment/{cid}")
    h = hashlib.sha256(b"tracer-trigger-commitment/v1\0" + salt)
    for ps in probe_sets:
        h.update(ps.digest().encode())
        bound = ps.bound(num_classes) if hasattr(ps, "bound") else num_classes  # a set recorded before pools: the classes
        h.update(codeword(master, cid, ps.id, ps.size, bound).astype(">u2").tobytes())
    return h.hexdigest()
