"""What `tracer ledger list` shows: filters and a one-line summary per entry.

A probe journals one entry per request, so after a few probes they outnumber
everything else; they are hidden unless asked for (``all_entries=True``). An
entry counts as per-request if its kind is one of :data:`PER_REQUEST_KINDS`, or
if its payload names both a probe ``session`` and a query ``idx`` (so a
per-request kind added later is hidden too).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .entries import Entry
from .store import Ledger

__all__ = ["PER_REQUEST_KINDS", "Listing", "is_per_request", "list_entries", "parse_time", "summary"]

PER_REQUEST_KINDS = frozenset({"probe-query", "probe-failed", "probe-request", "probe-sent"})
_SUMMARY_KEYS = ("customer_id", "subject", "suspect_sha256", "session")


def is_per_request(e: Entry) -> bool:
    return e.kind in PER_REQUEST_KINDS or ("session" in e.payload and "idx" in e.payload)


def summary(e: Entry) -> str:
    """``key=value`` of the entry's subject (customer, suspect, session) and its verdict, if any."""
    p = e.payload
    for key in _SUMMARY_KEYS:
        if key in p:
            return f"{key}={p[key]}" + (f" verdict={p['verdict']}" if "verdict" in p else "")
    return ""


def parse_time(text: str) -> str:
    """An ISO-8601 date or date-time as the ledger writes times (UTC, ``...Z``); naive times are UTC.

    Raises ValueError on anything else.
    """
    raw = text.strip()
    try:
        t = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO-8601 date or time (e.g. 2025-01-31 or 2025-01-31T14:00Z)") from exc
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _mentions(e: Entry, customer_id: str) -> bool:
    p = e.payload
    named = p.get("customers")
    return p.get("customer_id") == customer_id or (isinstance(named, list) and customer_id in named)


@dataclass(frozen=True)
class Listing:
    """The entries to show (oldest first) and how many per-request entries were hidden."""

    entries: list[Entry]
    hidden: int

    def rows(self) -> list[dict[str, Any]]:
        return [{"seq": e.seq, "kind": e.kind, "time": e.time, "hash": e.hash, "summary": summary(e)} for e in self.entries]


def _filtered(entries: Iterable[Entry], *, all_entries: bool, since: str | None, customer: str | None, counter: list[int]) -> Iterable[Entry]:
    for e in entries:
        if since is not None and e.time < since:
            continue
        if customer is not None and not _mentions(e, customer):
            continue
        if not all_entries and is_per_request(e):
            counter[0] += 1
            continue
        yield e


def list_entries(
    ledger: Ledger, *, kind: str | None = None, all_entries: bool = False, since: str | None = None,
    limit: int | None = None, customer: str | None = None,
) -> Listing:
    """Entries matching every filter, oldest first; ``limit`` keeps the most recent ``limit`` of them.

    ``since`` is a time from :func:`parse_time` (entries at or after it); ``customer`` a
    normalized customer id (entries about it, or naming it in a verdict). Naming a per-request
    ``kind`` explicitly shows those entries without ``all_entries``.
    """
    if limit is not None and limit < 1:
        raise ValueError("limit must be at least 1")
    show_all = all_entries or (kind is not None and kind in PER_REQUEST_KINDS)
    hidden = [0]
    picked = _filtered(ledger.entries(kind=kind), all_entries=show_all, since=since, customer=customer, counter=hidden)
    kept = list(deque(picked, maxlen=limit)) if limit is not None else list(picked)
    return Listing(kept, hidden[0])
