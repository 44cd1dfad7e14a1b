"""The identify customer table, cached: ids, names and key sets of every issued customer, current to a ledger head.

Reading it from the ledger is a JOIN/GROUP BY over every issuance (0.95 s at
100,000 customers). Here it is an encrypted segment log
(:class:`tracer.fingerprint.cache.SegmentLog`, log ``customers``) anchored to
the ledger's genesis hash; each segment records the ledger seq and entry hash
it is current to. A call checks that hash against the ledger (one primary-key
lookup: the entry hash commits to every entry before it), reads only the
issuances after it (a range on the issuances' primary key) and, if there are
any, appends one segment. A table whose head is not in this ledger (a replaced
or rolled-back ledger) or that does not authenticate is deleted and rebuilt.

Semantics are those of :meth:`Ledger.issued_customers`: customers in order of
the entry that registered them, each with the union of the probe sets of all
its issuances (and the rank-code style where one carries a rank code); an issuance for a customer not yet registered (never written by
tracer, but a valid ledger may hold one) is kept aside until it is.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fingerprint.cache import Segment, SegmentLog, cache_key
from ..ledger import Ledger
from .scoring import IssuedCustomers, Lines

__all__ = ["load_customer_table"]

_LOG = "customers"
#: in the log's anchor: a table written before the set ids held the rank-code style does not chain from it, so it is rebuilt
_LAYOUT = "set-ids+rank-code"


class _Stale(Exception):
    """The cached table does not fit this ledger: rebuild it."""


def _set_ids(doc: str, parsed: dict[str, frozenset[str]]) -> frozenset[str]:
    """The probe-set ids of one issuance's ``probe_sets`` document (parsed once per distinct document)."""
    got = parsed.get(doc)
    if got is None:
        got = parsed[doc] = frozenset(ps["id"] if isinstance(ps, dict) else str(ps) for ps in json.loads(doc))
    return got


@dataclass
class _Delta:
    """What a run of issuances adds: new customers, key sets gained by known ones, unregistered issuances."""

    ids: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    reg: list[int] = field(default_factory=list)
    sets: list[frozenset[str]] = field(default_factory=list)
    updates: list[tuple[int, frozenset[str]]] = field(default_factory=list)
    orphans: dict[str, frozenset[str]] = field(default_factory=dict)

    @property
    def weight(self) -> int:
        return len(self.ids) + len(self.updates) + 1


class _Column:
    """Strings appended in runs: newline-joined bytes, or a list where one of them holds a newline."""

    def __init__(self) -> None:
        self.runs: list[bytes | list[str]] = []
        self.count = 0

    def add(self, run: bytes | list[str], count: int) -> None:
        if count:
            self.runs.append(run)
            self.count += count

    def blob(self) -> bytes | None:
        if any(isinstance(r, list) for r in self.runs):
            return None
        return b"\n".join(r for r in self.runs if isinstance(r, bytes))

    def view(self) -> Sequence[str]:
        blob = self.blob()
        if blob is not None:
            return Lines(blob, self.count)
        return [x for r in self.runs for x in (r if isinstance(r, list) else r.decode().split("\n"))]


class _Table:
    """The decoded table: columns, registration seqs, key-set groups, and where it is current to."""

    def __init__(self) -> None:
        self.ids, self.names = _Column(), _Column()
        self.reg = np.zeros(0, dtype=np.int64)
        self.groups: list[frozenset[str]] = []
        self.group_index: dict[frozenset[str], int] = {}
        self.group_of = np.zeros(0, dtype=np.int64)
        self.orphans: dict[str, frozenset[str]] = {}
        self.last_seq = 0
        self._ids_view: Sequence[str] | None = None

    def group(self, sets: frozenset[str]) -> int:
        g = self.group_index.get(sets)
        if g is None:
            g = self.group_index[sets] = len(self.groups)
            self.groups.append(sets)
        return g

    def position(self, reg_seq: int, cid: str) -> int | None:
        """Where the customer registered by entry ``reg_seq`` is, if it is ``cid``."""
        pos = int(np.searchsorted(self.reg, reg_seq))
        if pos >= len(self.reg) or self.reg[pos] != reg_seq:
            return None
        if self._ids_view is None:
            self._ids_view = self.ids.view()
        return pos if self._ids_view[pos] == cid else None

    def apply(self, reg: np.ndarray, group_of: np.ndarray, updates: list[tuple[int, frozenset[str]]],
              orphans: dict[str, frozenset[str]]) -> None:
        """Append registrations (after their ids and names were added to the columns) and apply updates."""
        if len(reg) and len(self.reg) and reg[0] <= self.reg[-1]:
            raise _Stale("registrations out of order")
        self.reg = np.concatenate([self.reg, reg])
        self.group_of = np.concatenate([self.group_of, group_of])
        self._ids_view = None
        if not (len(self.reg) == len(self.group_of) == self.ids.count == self.names.count):
            raise _Stale("columns of different lengths")
        for pos, sets in updates:
            if not 0 <= pos < len(self.reg):
                raise _Stale("an update names no customer")
            self.group_of[pos] = self.group(self.groups[int(self.group_of[pos])] | sets)
        self.orphans = dict(orphans)

    def clone(self) -> _Table:
        """A copy that can be extended without changing this one (the memo keeps this one)."""
        t = copy.copy(self)
        t.ids, t.names = _Column(), _Column()
        t.ids.runs, t.ids.count = list(self.ids.runs), self.ids.count
        t.names.runs, t.names.count = list(self.names.runs), self.names.count
        t.groups, t.group_index, t.orphans = list(self.groups), dict(self.group_index), dict(self.orphans)
        t.group_of = self.group_of.copy()
        return t

    def view(self) -> IssuedCustomers:
        return IssuedCustomers(self.ids.view(), self.names.view(), list(self.groups), self.group_of, ids_blob=self.ids.blob())


def _delta(table: _Table, rows: list[tuple[int, str, str, int | None, str | None, str | None]]) -> _Delta:
    """Fold issuance rows (oldest first) into what they add to ``table``; a rank-code style counts as one more set id."""
    d = _Delta(orphans=dict(table.orphans))
    parsed: dict[str, frozenset[str]] = {}
    fresh: dict[str, int] = {}
    for entry, cid, doc, reg_entry, name, rank_style in rows:
        sets = _set_ids(doc, parsed)
        if rank_style is not None:
            sets = sets | {str(rank_style)}
        if reg_entry == entry:  # this issuance registered the customer
            fresh[cid] = len(d.ids)
            d.ids.append(cid)
            d.names.append(name if name is not None else cid)
            d.reg.append(entry)
            d.sets.append(sets | d.orphans.pop(cid, frozenset()))
        elif reg_entry is not None and reg_entry < entry:  # a later issuance of a registered customer
            if cid in fresh:
                d.sets[fresh[cid]] |= sets
                continue
            pos = table.position(reg_entry, cid)
            if pos is None:
                raise _Stale(f"customer {cid} is not where the table has it")
            d.updates.append((pos, sets))
        else:  # registered by a later entry, or not at all (yet)
            d.orphans[cid] = d.orphans.get(cid, frozenset()) | sets
    return d


def _sets_json(sets: frozenset[str]) -> list[str]:
    return sorted(sets)


def _groups_of(sets_of: list[frozenset[str]]) -> tuple[list[frozenset[str]], np.ndarray]:
    """(distinct key-set groups, each customer's index into them)."""
    local: dict[frozenset[str], int] = {}
    idx = np.array([local.setdefault(s, len(local)) for s in sets_of], dtype=np.int64)
    return list(local), idx


def _text_field(name: str, run: bytes | list[str]) -> dict[str, bytes]:
    return {f"{name}_json": json.dumps(run).encode()} if isinstance(run, list) else {name: run}


def _fields(ids: bytes | list[str], names: bytes | list[str], reg: np.ndarray, groups: list[frozenset[str]],
            group_of: np.ndarray, updates: list[tuple[int, frozenset[str]]], orphans: dict[str, frozenset[str]]) -> dict[str, bytes]:
    """A segment's plaintext fields (columns as newline-joined text and little-endian arrays, the rest as JSON)."""
    return {
        **_text_field("ids", ids), **_text_field("names", names), "reg": np.asarray(reg, dtype="<i8").tobytes(),
        "groups": json.dumps([_sets_json(g) for g in groups]).encode(),
        "group_of": np.asarray(group_of, dtype="<i4").tobytes(),
        "updates": json.dumps([[p, _sets_json(s)] for p, s in updates]).encode(),
        "orphans": json.dumps({c: _sets_json(s) for c, s in orphans.items()}).encode(),
    }


def _run(items: list[str]) -> bytes | list[str]:
    """A column run as stored: newline-joined, or the list itself where an item holds a newline."""
    return list(items) if any("\n" in x for x in items) else "\n".join(items).encode()


@dataclass
class _Decoded:
    count: int
    ids: bytes | list[str]
    names: bytes | list[str]
    reg: np.ndarray
    groups: list[frozenset[str]]
    group_of: np.ndarray  # into groups
    updates: list[tuple[int, frozenset[str]]]
    orphans: dict[str, frozenset[str]]


def _text(seg: Segment, name: str, count: int) -> bytes | list[str]:
    if f"{name}_json" in seg.fields:
        items = json.loads(seg.raw(f"{name}_json"))
        if not isinstance(items, list) or len(items) != count or not all(isinstance(x, str) for x in items):
            raise _Stale(f"a malformed {name} column")
        return items
    blob = seg.raw(name)
    if (blob.count(b"\n") + 1 if count else len(blob)) != max(count, 0):
        raise _Stale(f"a {name} column of the wrong length")
    return blob


def _decode(seg: Segment) -> _Decoded:
    count = int(seg.header["rows"])
    d = _Decoded(count, _text(seg, "ids", count), _text(seg, "names", count),
                 np.frombuffer(seg.fields["reg"], dtype="<i8").astype(np.int64),
                 [frozenset(g) for g in json.loads(seg.raw("groups"))],
                 np.frombuffer(seg.fields["group_of"], dtype="<i4").astype(np.int64),
                 [(int(p), frozenset(s)) for p, s in json.loads(seg.raw("updates"))],
                 {c: frozenset(s) for c, s in json.loads(seg.raw("orphans")).items()})
    if not (len(d.reg) == len(d.group_of) == count):
        raise _Stale("columns of different lengths")
    if count and not 0 <= int(d.group_of.min()) <= int(d.group_of.max()) < len(d.groups):
        raise _Stale("a group index out of range")
    return d


def _load(chain: list[Segment]) -> _Table:
    """The table a chain of segments describes."""
    t = _Table()
    for seg in chain:
        if seg.header.get("first_seq") != t.last_seq + 1:
            raise _Stale("segments do not cover consecutive ledger entries")
        d = _decode(seg)
        lut = np.array([t.group(g) for g in d.groups], dtype=np.int64)
        t.ids.add(d.ids, d.count)
        t.names.add(d.names, d.count)
        t.apply(d.reg, lut[d.group_of] if d.count else d.group_of, d.updates, d.orphans)
        t.last_seq = int(seg.header["last_seq"])
    return t


def _joined(runs: list[bytes | list[str]]) -> bytes | list[str]:
    if any(isinstance(r, list) for r in runs):
        return [x for r in runs for x in (r if isinstance(r, list) else r.decode().split("\n"))]
    return b"\n".join(r for r in runs if isinstance(r, bytes))


def _merge(segs: list[Segment]) -> tuple[int, dict[str, bytes], dict[str, Any]]:
    """One segment equivalent to ``segs`` (compaction)."""
    ids: list[bytes | list[str]] = []
    names: list[bytes | list[str]] = []
    regs, gofs, updates = [], [], []
    groups: dict[frozenset[str], int] = {}
    orphans: dict[str, frozenset[str]] = {}
    for seg in segs:
        d = _decode(seg)
        lut = np.array([groups.setdefault(g, len(groups)) for g in d.groups], dtype=np.int64)
        if d.count:
            ids.append(d.ids)
            names.append(d.names)
        regs.append(d.reg)
        gofs.append(lut[d.group_of] if d.count else d.group_of)
        updates += d.updates
        orphans = d.orphans
    first, last = segs[0].header, segs[-1].header
    count = sum(len(r) for r in regs)
    extra = {"first_seq": first["first_seq"], "last_seq": last["last_seq"], "last_hash": last["last_hash"],
             "weight": count + len(updates) + 1}
    return count, _fields(_joined(ids), _joined(names), np.concatenate(regs), list(groups), np.concatenate(gofs),
                          updates, orphans), extra


def _weight(seg: Segment) -> int:
    return int(seg.header.get("weight", 1))


#: Decoded tables by (log folder, key id, segment tags): a warm call in the same process decodes nothing.
_TABLES: OrderedDict[tuple, _Table] = OrderedDict()


def _memo_key(log: SegmentLog, chain: list[Segment]) -> tuple:
    return (str(log.dir), log.key_id, tuple(s.tag for s in chain))


def _remember(log: SegmentLog, chain: list[Segment], table: _Table) -> None:
    _TABLES[_memo_key(log, chain)] = table.clone()
    while len(_TABLES) > 8:
        _TABLES.popitem(last=False)


def _current(log: SegmentLog, ledger: Ledger) -> tuple[list[Segment], _Table]:
    """The cached chain and its table, if it is current to an entry of this ledger; else empty (and deleted)."""
    chain = log.load()
    if chain:
        last = chain[-1].header
        try:
            if ledger.entry_hash(int(last["last_seq"])) == last["last_hash"]:
                memo = _TABLES.get(_memo_key(log, chain))
                if memo is None:
                    memo = _load(chain)
                    _remember(log, chain, memo)
                return chain, memo.clone()
        except (_Stale, KeyError, ValueError, TypeError):
            pass
        log.clear()
    return [], _Table()


def load_customer_table(ledger: Ledger, master: bytes, folder: Path) -> IssuedCustomers | None:
    """The issued customers, from the cache in ``folder`` extended by the ledger's new issuances (stored back, best effort).

    None where the ledger's own indexes do not fit together (the caller then asks the ledger directly).
    """
    log = SegmentLog(folder, _LOG, cache_key(master), anchor=f"{_LAYOUT}|{ledger.entry_hash(1) or ''}")
    chain, table = _current(log, ledger)
    try:
        return _extend(log, ledger, chain, table)
    except _Stale:  # the cache does not fit the ledger after all: rebuild it from the ledger
        log.clear()
    try:
        return _extend(log, ledger, [], _Table())
    except _Stale:
        return None


def _extend(log: SegmentLog, ledger: Ledger, chain: list[Segment], table: _Table) -> IssuedCustomers:
    """``table`` plus the issuances after its head; one segment appended if there were any."""
    head, rows = ledger.issuances_after(table.last_seq)
    if not rows:
        return table.view()
    d = _delta(table, rows)
    first_seq = table.last_seq + 1
    reg = np.array(d.reg, dtype=np.int64)
    groups, local = _groups_of(d.sets)
    lut = np.array([table.group(g) for g in groups], dtype=np.int64)
    ids, names = _run(d.ids), _run(d.names)
    fields = _fields(ids, names, reg, groups, local, d.updates, d.orphans)
    table.ids.add(ids, len(d.ids))
    table.names.add(names, len(d.names))
    table.apply(reg, lut[local] if len(local) else local, d.updates, d.orphans)
    seg = log.append(chain, rows=len(d.ids), fields=fields,
                     extra={"first_seq": first_seq, "last_seq": head[0], "last_hash": head[1], "weight": d.weight})
    table.last_seq = head[0]
    if seg is not None:
        _remember(log, log.compact([*chain, seg], _merge, _weight), table)
    return table.view()
