"""Revelation per key: which keys of a pool probing has shown to endpoints, and drawing fresh ones.

The ledger is the record: every ``probe-sent`` entry of a pool session names
the key it carries, written before the request leaves (so a killed run still
counts it), and every ``probe-start`` lists the keys its session scheduled.
A new session takes only keys that were never sent and that no unfinished
session holds (it may be resumed); keys a finished session never sent go back
to the pool.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

from ..config import AUTO_KEYS_PER_PROBE, POOL_KEYS_PER_ROW
from ..errors import TracerError
from ..ledger import Ledger
from .pool import KeyPool

__all__ = ["PoolUsage", "pool_usage", "pool_warning", "draw_keys", "recorded_pool_usage", "keys_per_session", "LOW_POOL_PROBES"]


@dataclass(frozen=True)
class PoolUsage:
    """How much of a key pool probing has used: keys shown to an endpoint, keys held by unfinished sessions, keys left."""

    pool: str
    size: int
    revealed: int
    reserved: int
    keys_per_probe: int

    @property
    def left(self) -> int:
        return self.size - self.revealed - self.reserved

    @property
    def probes_left(self) -> int:
        return self.left // max(1, self.keys_per_probe)

    @property
    def low(self) -> bool:
        """Fewer than :data:`LOW_POOL_PROBES` more probes can be served with fresh keys."""
        return self.probes_left < LOW_POOL_PROBES

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "size": self.size, "revealed": self.revealed, "reserved": self.reserved, "left": self.left,
                "probes_left": self.probes_left, "low": self.low}

    def warning(self) -> str | None:
        return pool_warning(self.to_json())


def pool_warning(usage: dict[str, Any] | None) -> str | None:
    """One line when a pool's unrevealed keys run low (``usage``: :meth:`PoolUsage.to_json`), else None."""
    if not usage or not usage.get("low"):
        return None
    head = (f"key pool {usage['pool']}: {usage['left']} of {usage['size']} keys are unrevealed, enough for at least {usage['probes_left']} more "
            f"probed endpoint(s)")
    if not usage.get("revealed") and not usage.get("reserved"):  # small from the start: a fresh workspace on the same data is no larger
        return head + (f"; the pool is small for this training data ([fingerprint] pool_size: 0 gives {POOL_KEYS_PER_ROW} keys per "
                       "training row), and tracer identify on a recovered file reads every key however many were revealed")
    return head + "; copies issued from now on carry the same pool, so plan a fresh workspace before it runs out"


#: Say so when fewer fresh probes than this are left in a pool.
LOW_POOL_PROBES = 10


def keys_per_session(keys_per_probe: int, size: int) -> int:
    """The most keys one probe session draws from a pool of ``size``: ``[fingerprint] keys_per_probe``, or with 0
    :data:`~tracer.config.AUTO_KEYS_PER_PROBE` or the whole pool where it is smaller."""
    return keys_per_probe or min(AUTO_KEYS_PER_PROBE, size)


def pool_usage(ledger: Ledger, pool_id: str, size: int, keys_per_probe: int) -> tuple[PoolUsage, set[int]]:
    """Usage of pool ``pool_id`` (of ``size`` keys) and the keys no new session may take: every key sent to an endpoint, and every key
    scheduled by a session without a verdict (it may be resumed). Keys a finished session never sent return to the pool.
    ``keys_per_probe`` is the configured value (0: automatic, see :func:`keys_per_session`).

    Which keys a session takes depends on earlier sessions' stopping times, hence on other keys' codeword labels; each
    key's label is drawn independently of every other key's, so the labels of the keys drawn stay exactly uniform on
    their label sets given everything that chose them (see :mod:`tracer.fingerprint.stats`).
    """
    sent = ledger.sent_keys(pool_id)
    reserved: set[int] = set()
    for session, keys in ledger.pool_sessions(pool_id):
        if not ledger.session_finished(session):
            reserved.update(keys)
    reserved -= sent
    return PoolUsage(pool_id, size, len(sent), len(reserved), keys_per_session(keys_per_probe, size)), sent | reserved


def draw_keys(ledger: Ledger, pool: KeyPool, seed: bytes, count: int) -> tuple[list[int], PoolUsage]:
    """At most ``count`` keys (0: automatic, :func:`keys_per_session`) no endpoint has seen, drawn by the session's fresh
    seed (never by codeword values)."""
    usage, taken = pool_usage(ledger, pool.id, pool.size, count)
    count = usage.keys_per_probe
    free = [i for i in range(pool.size) if i not in taken]
    if not free and usage.reserved:
        raise TracerError(f"every key of pool {pool.id} not yet shown to an endpoint ({usage.reserved} of {pool.size}) is held by "
                          "unfinished probe sessions", hint="finish them with `tracer probe --resume SESSION` "
                          "(`tracer ledger list --kind probe-start` lists them); the keys they never sent go back to the pool")
    if not free:
        raise TracerError(f"every key of pool {pool.id} was already shown to an endpoint ({pool.size} keys)",
                          hint="issue new copies under a fresh pool; identify on a recovered file still uses every key")
    order = sorted(free, key=lambda i: hashlib.sha256(seed + b"\0key/" + str(i).encode()).digest())
    keys = order[:count]
    return keys, replace(usage, reserved=usage.reserved + len(keys))


def recorded_pool_usage(ledger: Ledger, keys_per_probe: int) -> list[PoolUsage]:
    """Usage of every pool the issuance records name (no key needed: sizes and revelations are in the ledger)."""
    return [pool_usage(ledger, pid, size, keys_per_probe)[0] for pid, size in sorted(ledger.recorded_pools().items())]
