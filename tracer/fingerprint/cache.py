"""Encrypted, append-only caches of re-derivable secrets: codeword matrices (and the identify customer table).

Deriving a codeword row costs an HKDF and a SHAKE stream (~20 µs): 2 s for
100,000 customers per key set, against an identification that otherwise takes
tens of milliseconds. The rows are secret (they are the watermarks), so they are
kept encrypted, and so that no call ever re-derives or rewrites everything they
are kept as a *log of segments*: one call that meets k new customers derives k
rows and writes one small segment.

A segment is one file, ``MAGIC | len | header JSON | nonce | AES-256-GCM(fields)``,
under ``HKDF(master, "tracer/v1/cache/codewords")``, with the header (log name,
key id, rows covered, the previous segment's GCM tag, and whatever the log
adds, e.g. the ledger seq and entry hash it is current to) as associated data.
The tags chain the segments from an anchor (the log's name, key and, for the
customer table, the ledger's genesis hash), so a segment cannot be moved,
dropped or taken from another log, workspace or master secret without the chain
breaking. A log that does not authenticate is deleted and rebuilt, never
trusted. Everything in it is re-derivable from the master secret, so deleting
the cache folder is always safe; where the folder cannot be written, reading
still works and nothing is stored.

Few segments: after an append, the last two are merged while the older one is
no more than twice the newer (a binary counter), so a log of N rows has at most
about log2(N) + 1 segments and each row is rewritten O(log N) times in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..keys.derive import hkdf_key
from .probes import codewords

__all__ = ["cached_codewords", "codeword_matrix", "cache_key", "SegmentLog", "Segment", "pack_fields", "unpack_fields",
           "row_dtype"]

_MAGIC = b"TRCS1\n"
_FORMAT = "tracer-cache-segment/1"
_SUFFIX = ".seg"


def cache_key(master: bytes) -> bytes:
    """The cache's AES-256 key (HKDF of the master secret, purpose ``cache/codewords``)."""
    return hkdf_key(master, "cache/codewords")


def row_dtype(bound: int) -> np.dtype:
    """The smallest dtype that holds 0..bound-1 and one value more (stored rows, compared in place)."""
    if bound <= 255:
        return np.dtype(np.uint8)
    return np.dtype("<i2") if bound <= 32767 else np.dtype("<i4")


def pack_fields(fields: Mapping[str, bytes | memoryview]) -> bytes:
    """Named byte strings in one buffer (the plaintext of a segment)."""
    parts = [struct.pack("<I", len(fields))]
    for name, data in fields.items():
        raw = name.encode()
        parts += [struct.pack("<HQ", len(raw), len(data)), raw, bytes(data) if isinstance(data, memoryview) else data]
    return b"".join(parts)


def unpack_fields(buf: bytes) -> dict[str, memoryview]:
    """The named fields of :func:`pack_fields`, as views into ``buf`` (no copies of large rows)."""
    view = memoryview(buf)
    (n,), off, out = struct.unpack_from("<I", buf, 0), 4, {}
    for _ in range(n):
        ln, size = struct.unpack_from("<HQ", buf, off)
        off += 10
        name = bytes(view[off : off + ln]).decode()
        off += ln
        if off + size > len(buf):
            raise ValueError("a truncated cache segment")
        out[name] = view[off : off + size]
        off += size
    if off != len(buf):
        raise ValueError("trailing bytes in a cache segment")
    return out


@dataclass
class Segment:
    """One authenticated segment: its header and decrypted fields."""

    path: Path
    header: dict[str, Any]
    tag: str
    fields: dict[str, memoryview] = field(default_factory=dict)

    def raw(self, name: str) -> bytes:
        """One field as bytes (KeyError if the segment has none)."""
        return bytes(self.fields[name])

    @property
    def start(self) -> int:
        return int(self.header["start"])

    @property
    def end(self) -> int:
        return int(self.header["start"]) + int(self.header["rows"])


@dataclass
class _Candidate:
    """A segment file as found: its header, and either its ciphertext or its already authenticated contents."""

    path: Path
    header: dict[str, Any]
    memo: tuple
    hb: bytes = b""
    body: memoryview = field(default_factory=lambda: memoryview(b""))
    seg: Segment | None = None


#: Segments this process authenticated already, by (path, inode, size, mtime, key id). A segment file is
#: never rewritten in place (appends and merges publish new names), so a warm call reads and decrypts
#: only what is new; what is held is the authentic content, whatever happens to the file afterwards.
_OPENED: OrderedDict[tuple, Segment] = OrderedDict()
_OPENED_MAX = 128


def _remember(memo: tuple, seg: Segment) -> None:
    _OPENED[memo] = seg
    while len(_OPENED) > _OPENED_MAX:
        _OPENED.popitem(last=False)


def _candidate(path: Path, key_id: str) -> _Candidate | None:
    """The segment file at ``path`` (None if it is not one): from the memo if unchanged, else read."""
    try:
        st = path.stat()
    except OSError:
        return None
    memo = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, key_id)
    seg = _OPENED.get(memo)
    if seg is not None:
        return _Candidate(path, seg.header, memo, seg=seg)
    parsed = _parse(path)
    return None if parsed is None else _Candidate(path, parsed[0], memo, parsed[1], parsed[2])


def _parse(path: Path) -> tuple[dict, bytes, memoryview] | None:
    """(header, header bytes, nonce+ciphertext) of a segment file, or None if it is not one."""
    try:
        blob = path.read_bytes()
        if not blob.startswith(_MAGIC):
            return None
        (hlen,) = struct.unpack_from(">I", blob, len(_MAGIC))
        off = len(_MAGIC) + 4
        hb = blob[off : off + hlen]
        header = json.loads(hb)
        body = memoryview(blob)[off + hlen :]
        return (header, hb, body) if isinstance(header, dict) and len(body) >= 28 else None
    except (OSError, ValueError, struct.error):
        return None


class SegmentLog:
    """An append-only chain of encrypted segments in ``folder/name`` (see the module docstring)."""

    def __init__(self, folder: Path, name: str, key: bytes, *, anchor: str = "") -> None:
        self.dir = Path(folder) / name
        self.name = name
        self.aead = AESGCM(key)
        self.key_id = hashlib.sha256(key).hexdigest()[:16]
        self.anchor = hashlib.sha256(f"{_FORMAT}|{name}|{self.key_id}|{anchor}".encode()).hexdigest()[:32]

    def _candidates(self) -> tuple[dict[str, list[_Candidate]], list[Path]]:
        """Segment files by the tag they chain to, and the files that are not this log's segments."""
        by_prev: dict[str, list[_Candidate]] = {}
        bad = []
        try:
            paths = sorted(p for p in self.dir.iterdir() if p.name.endswith(_SUFFIX))
        except OSError:
            return {}, []
        for p in paths:
            c = _candidate(p, self.key_id)
            if c is None or c.header.get("key_id") != self.key_id or c.header.get("log") != self.name:
                bad.append(p)
                continue
            by_prev.setdefault(str(c.header.get("prev")), []).append(c)
        return by_prev, bad

    def _open(self, c: _Candidate) -> Segment | None:
        if c.seg is not None:
            return c.seg
        try:
            plain = self.aead.decrypt(bytes(c.body[:12]), c.body[12:], c.hb)
            seg = Segment(c.path, c.header, c.body[-16:].hex(), unpack_fields(plain))
        except (InvalidTag, ValueError, struct.error, UnicodeDecodeError):
            return None
        _remember(c.memo, seg)
        return seg

    def load(self) -> list[Segment]:
        """The authentic chain from the anchor (the longest segment first at each step); every other file is deleted."""
        by_prev, bad = self._candidates()
        chain: list[Segment] = []
        tag, pos = self.anchor, 0
        while True:
            options = sorted((c for c in by_prev.get(tag, []) if c.header.get("start") == pos),
                             key=lambda c: (-int(c.header.get("rows", 0)), -int(c.header.get("last_seq", 0))))
            seg = None
            for c in options:
                seg = self._open(c)
                if seg is not None:
                    break
                bad.append(c.path)
            if seg is None:
                break
            chain.append(seg)
            tag, pos = seg.tag, seg.end
        kept = {s.path for s in chain}
        for p in bad + [c.path for cs in by_prev.values() for c in cs if c.path not in kept]:
            _unlink(p)  # failed authentication, or off the chain: merged already, or a lost race
        return chain

    def clear(self) -> None:
        """Delete every segment (a log that no longer matches what it caches)."""
        try:
            for p in self.dir.iterdir():
                if p.name.endswith(_SUFFIX):
                    _unlink(p)
        except OSError:
            pass

    def append(self, chain: list[Segment], *, rows: int, fields: dict[str, bytes], extra: dict[str, Any]) -> Segment | None:
        """Write one segment after ``chain`` (best effort: None where the folder cannot be written)."""
        prev = chain[-1] if chain else None
        header = {"format": _FORMAT, "log": self.name, "key_id": self.key_id, "prev": prev.tag if prev else self.anchor,
                  "start": prev.end if prev else 0, "rows": int(rows), **extra}
        hb = json.dumps(header, sort_keys=True).encode()
        nonce = os.urandom(12)
        body = nonce + self.aead.encrypt(nonce, pack_fields(fields), hb)
        seg = Segment(Path(), header, body[-16:].hex(), {k: memoryview(v) for k, v in fields.items()})
        seg.path = self.dir / f"{seg.start:010d}-{seg.end:010d}-{seg.tag[:16]}{_SUFFIX}"
        try:
            _publish(seg.path, _MAGIC + struct.pack(">I", len(hb)) + hb + body)
        except OSError:
            return None
        return seg

    def compact(self, chain: list[Segment], merge: Callable[[list[Segment]], tuple[int, dict[str, bytes], dict[str, Any]]],
                weight: Callable[[Segment], int]) -> list[Segment]:
        """Merge the last segments while the older is at most twice the newer; returns the new chain."""
        k = len(chain)
        while k >= 2 and weight(chain[k - 2]) <= 2 * sum(weight(s) for s in chain[k - 1 :]):
            k -= 1
        if k == len(chain):
            return chain
        tail = chain[k - 1 :]
        rows, fields, extra = merge(tail)
        seg = self.append(chain[: k - 1], rows=rows, fields=fields, extra=extra)
        if seg is None:
            return chain
        for s in tail:
            _unlink(s.path)
        return [*chain[: k - 1], seg]


def _publish(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data`` all at once (temporary file, then a hard link that never replaces a file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".tmp-{os.urandom(8).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # the same segment, written by another process
    finally:
        _unlink(tmp)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


# -- codeword matrices -------------------------------------------------------------------------------


def _log_name(set_id: str, count: int, bound: int) -> str:
    return f"codewords-{set_id}-{count}x{bound}"


def _join(ids: Sequence[str]) -> bytes:
    return "\n".join(ids).encode()


def _split(blob: bytes) -> list[str]:
    return blob.decode().split("\n") if blob else []


def _concat(views: list[memoryview]) -> bytes | memoryview:
    return views[0] if len(views) == 1 else b"".join(views)


def _merge_rows(segs: list[Segment]) -> tuple[int, dict[str, bytes], dict[str, Any]]:
    blobs = [s.fields["ids"] for s in segs if len(s.fields["ids"])]
    return (sum(int(s.header["rows"]) for s in segs),
            {"ids": b"\n".join(blobs), "rows": b"".join(s.fields["rows"] for s in segs)}, {})


def _rows_weight(seg: Segment) -> int:
    return int(seg.header["rows"])


#: Assembled matrices by (log folder, key id, segment tags): a warm call does not even concatenate.
_MATRICES: OrderedDict[tuple, tuple[bytes, np.ndarray]] = OrderedDict()


class _Matrix:
    """A key set's cached rows: ids (joined), the matrix, and the log they came from."""

    def __init__(self, log: SegmentLog, chain: list[Segment], count: int, dtype: np.dtype) -> None:
        self.log, self.chain, self.count, self.dtype = log, chain, count, dtype
        memo = _MATRICES.get(self._memo_key())
        if memo is None:
            blob = b"\n".join(s.fields["ids"] for s in chain if len(s.fields["ids"]))
            rows = _concat([s.fields["rows"] for s in chain]) if chain else b""
            memo = (blob, np.frombuffer(rows, dtype=dtype).reshape(-1, count))
            if len(memo[1]) != blob.count(b"\n") + bool(blob):
                raise ValueError("rows and ids of different lengths")
            self._remember(memo)
        self.blob, self.matrix = memo
        self._ids: list[str] | None = None

    def _memo_key(self) -> tuple:
        return (str(self.log.dir), self.log.key_id, tuple(s.tag for s in self.chain))

    def _remember(self, memo: tuple[bytes, np.ndarray]) -> None:
        if self.chain:
            _MATRICES[self._memo_key()] = memo
            while len(_MATRICES) > 16:
                _MATRICES.popitem(last=False)

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            self._ids = _split(self.blob)
        return self._ids

    def extend(self, new_ids: list[str], rows: np.ndarray) -> None:
        """Append rows (in memory, and one segment on disk where it can be written)."""
        if not new_ids:
            return
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        seg = self.log.append(self.chain, rows=len(new_ids), fields={"ids": _join(new_ids), "rows": rows.tobytes()}, extra={})
        if seg is not None:
            self.chain = self.log.compact([*self.chain, seg], _merge_rows, _rows_weight)
        self.blob = self.blob + (b"\n" if self.blob else b"") + _join(new_ids)
        self.matrix = np.concatenate([self.matrix, rows])
        self.matrix.flags.writeable = False  # shared through the memo
        if seg is not None:
            self._remember((self.blob, self.matrix))
        if self._ids is not None:
            self._ids = self._ids + list(new_ids)


def _load_matrix(folder: Path, key: bytes, set_id: str, count: int, bound: int) -> _Matrix:
    dtype = row_dtype(bound)
    log = SegmentLog(folder, _log_name(set_id, count, bound), key, anchor=f"{set_id}|{count}|{bound}|{dtype.str}")
    chain = log.load()
    try:
        return _Matrix(log, chain, count, dtype)
    except (KeyError, ValueError):  # authentic but not this layout: written by another version
        log.clear()
        return _Matrix(log, [], count, dtype)


def codeword_matrix(master: bytes, customer_ids: Sequence[str], set_id: str, count: int, bound: int, *,
                    folder: Path | None, ids_blob: bytes | None = None) -> np.ndarray:
    """Rows ``uniform_ints(customer_key(id), f"codeword/{set_id}", count, bound)`` for ``customer_ids``, in order.

    Stored dtype (:func:`row_dtype`), read from and appended to the cache in ``folder``: only
    customers missing from it are derived. ``ids_blob`` (the ids joined by newlines, if the
    caller has it, with no newline in any id) makes the common case (the cache holds exactly these customers, in this
    order, or a prefix of them) a byte comparison.
    """
    dtype = row_dtype(bound)
    if folder is None or not customer_ids:
        return codewords(master, list(customer_ids), set_id, count, bound).astype(dtype)
    m = _load_matrix(folder, cache_key(master), set_id, count, bound)
    want = _join(customer_ids) if ids_blob is None else ids_blob
    if ids_blob is None and want.count(b"\n") != len(customer_ids) - 1:  # an id with a newline: no byte comparison
        return _general(m, master, customer_ids, set_id, count, bound)
    n, have = len(m.matrix), m.blob
    if want == have:
        return m.matrix
    if not n or want.startswith(have + b"\n"):  # the cache holds a prefix: derive the rest, append
        new = [customer_ids[i] for i in range(n, len(customer_ids))]
        m.extend(new, codewords(master, new, set_id, count, bound))
        return m.matrix
    if have.startswith(want + b"\n"):  # the cache holds more (appended since): the prefix
        return m.matrix[: len(customer_ids)]
    return _general(m, master, customer_ids, set_id, count, bound)


def _general(m: _Matrix, master: bytes, customer_ids: Sequence[str], set_id: str, count: int, bound: int) -> np.ndarray:
    """Any order, any subset: map ids to rows, derive and append the missing ones."""
    index = {cid: i for i, cid in enumerate(m.ids)}
    missing = [cid for cid in dict.fromkeys(customer_ids) if cid not in index]
    if missing:
        base = len(m.matrix)
        m.extend(missing, codewords(master, missing, set_id, count, bound))
        index.update({cid: base + i for i, cid in enumerate(missing)})
    return m.matrix[np.fromiter((index[c] for c in customer_ids), dtype=np.int64, count=len(customer_ids))]


def cached_codewords(
    master: bytes, customer_ids: list[str], set_id: str, count: int, num_classes: int, *, folder: Path | None
) -> np.ndarray:
    """Codeword matrix [N, P] (int16) for ``customer_ids``; reuses and extends the encrypted cache in ``folder``.

    ``num_classes`` is the bound of the labels (``uniform_ints(..., bound)``): any key set whose
    rows are uniform integers below a bound is cached the same way.
    """
    return codeword_matrix(master, customer_ids, set_id, count, num_classes, folder=folder).astype(np.int16)
