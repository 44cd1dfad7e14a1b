"""Where an issued copy lands, and how: file names, the per-customer reservation, crash recovery.

Landing protocol (no orphan file, no orphan record, even on SIGKILL):

1. a marker ``.tracer/pending/<sha256>.json`` names the customer, the temporary and the final
   path, with a MAC under a key derived from the master secret (:func:`pending_marker_key`);
2. the ONNX bytes go to a hidden temporary file beside the final path, named
   ``.<final name>.<sha256[:16]>.pending``;
3. the issuance entry is committed to the ledger (the commit point);
4. the temporary file is renamed onto the final path, and the marker removed.

A crash before 3 leaves a marker whose model has no record: :func:`recover_pending` deletes
the temporary file. A crash after 3 leaves a record whose file is still temporary: recovery
finishes the rename. Recovery trusts a marker only when its MAC verifies, its customer is not
being issued right now, its file names are ones tracer generates (checked against the ledger's
record where there is one) and the temporary file is a regular file beside the final one.
Anything else is left untouched and reported; the marker is moved aside as ``*.rejected``.

While a customer is being issued, ``.tracer/pending/<id>.lock`` is held with ``flock``: a
second issuance of the same customer fails at once instead of after its fine-tune, and the
kernel drops the lock when the process dies, so a crash never leaves it stale.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_write_bytes, ensure_dir, sha256_file
from ..errors import CustomerError
from ..keys.derive import normalize_customer_id, pending_marker_key
from ..ledger import Entry, Ledger
from ..workspace import Workspace

__all__ = ["PENDING_DIR", "issued_file_name", "previous_issuances", "recover_pending", "reserve_customer", "staging_path", "write_marker"]

PENDING_DIR = ".tracer/pending"
_MARKER_NAME = re.compile(r"^[0-9a-f]{64}\.json$")
_MARKER_KEYS = {"customer", "tmp", "final", "sha256", "mac"}


def previous_issuances(ledger: Ledger, cid: str, *, reissue: bool) -> list[Entry]:
    """The customer's issuance entries; :class:`CustomerError` when there are some and ``reissue`` is not set.

    The one refusal of an issued customer: the CLI asks it before the model loads, the issuer again
    under the customer's reservation.
    """
    previous = ledger.issuances(cid)
    if previous and not reissue:
        raise CustomerError(f"customer {cid} was already issued a copy (ledger entry {previous[-1].seq})",
                            hint="pass --reissue to issue another traceable copy")
    return previous


def issued_file_name(customer_id: str, number: int) -> str:
    """``acme.onnx`` for a customer's first copy, ``acme~2.onnx`` for its second, ...

    ``~`` is outside the customer-id alphabet, so a reissue's name can never be another
    customer's first name (``acme.2`` gets ``acme.2.onnx``). Workspaces issued before this
    scheme keep their ``acme.2.onnx`` files: the ledger records every copy's path.
    """
    return f"{customer_id}.onnx" if number == 1 else f"{customer_id}~{number}.onnx"


def _is_generated_name(name: str, customer_id: str) -> bool:
    return re.fullmatch(re.escape(customer_id) + r"(~[0-9]{1,9})?\.onnx", name) is not None


def staging_path(final: Path, sha256: str) -> Path:
    """The hidden temporary file beside ``final`` that the copy is written to before it lands."""
    return final.with_name(f".{final.name}.{sha256[:16]}.pending")


# -- the per-customer reservation -------------------------------------------------------------

def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path`` (created if needed), or None if another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        try:  # the holder before us may have unlinked the file between our open and our lock
            if os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _unlock(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)  # while still holding it: see _try_lock's inode check
    os.close(fd)


@contextmanager
def reserve_customer(ws: Workspace, customer_id: str) -> Iterator[None]:
    """Hold the customer for one issuance; raise :class:`CustomerError` at once if another holds it."""
    folder = ws.root / PENDING_DIR
    ensure_dir(folder)
    path = folder / f"{customer_id}.lock"
    fd = _try_lock(path)
    if fd is None:
        raise CustomerError(f"customer {customer_id} is being issued by another tracer process in this workspace",
                            hint="wait for it to finish, then pass --reissue if another copy is wanted")
    try:
        yield
    finally:
        _unlock(path, fd)


# -- markers -------------------------------------------------------------------------------------

def _mac(key: bytes, fields: dict[str, str]) -> str:
    body = json.dumps({k: fields[k] for k in sorted(_MARKER_KEYS - {"mac"})}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest()


def write_marker(ws: Workspace, master: bytes, *, customer_id: str, final: Path, sha256: str) -> Path:
    """Write the MAC'd marker of an issuance about to land; return its path."""
    folder = ws.root / PENDING_DIR
    ensure_dir(folder)
    fields = {"customer": customer_id, "tmp": str(staging_path(final, sha256)), "final": str(final), "sha256": sha256}
    marker = folder / f"{sha256}.json"
    atomic_write_bytes(marker, json.dumps({**fields, "mac": _mac(pending_marker_key(master), fields)}).encode())
    return marker


class _Untrusted(Exception):
    """A marker recovery will not act on (the reason is the message)."""


@dataclass(frozen=True)
class _Plan:
    customer: str
    final: Path
    tmp: Path
    sha256: str


def _read_marker(marker: Path, key: bytes) -> _Plan:
    """The marker's plan, if it is authentic and names only paths tracer generates; else :class:`_Untrusted`."""
    if not _MARKER_NAME.match(marker.name):
        raise _Untrusted("not a name tracer writes")
    try:
        info = json.loads(marker.read_bytes()[:65536])
    except (OSError, ValueError, RecursionError) as exc:
        raise _Untrusted(f"unreadable ({type(exc).__name__})") from None
    if not isinstance(info, dict) or set(info) != _MARKER_KEYS or not all(isinstance(v, str) for v in info.values()):
        raise _Untrusted("not a tracer marker")
    if not hmac.compare_digest(info["mac"], _mac(key, info)):
        raise _Untrusted("its MAC does not verify under this workspace's master key")
    try:
        cid = normalize_customer_id(info["customer"])
    except CustomerError:
        raise _Untrusted("bad customer id") from None
    final, sha = Path(info["final"]), info["sha256"]
    if sha != marker.name[:-5] or cid != info["customer"]:
        raise _Untrusted("fields disagree with its name")
    if not final.is_absolute() or not _is_generated_name(final.name, cid) or final.parent.resolve() != final.parent:
        raise _Untrusted("its final path is not one tracer generates")
    tmp = staging_path(final, sha)
    if Path(info["tmp"]) != tmp:
        raise _Untrusted("its temporary path is not the one tracer generates")
    return _Plan(customer=cid, final=final, tmp=tmp, sha256=sha)


def _recorded_path(ws: Workspace, ledger, plan: _Plan) -> Path | None:
    """The final path the ledger records for the marker's model, or None if it was never recorded."""
    for e in ledger.issuances(plan.customer):
        if e.payload.get("model_sha256") == plan.sha256:
            p = Path(e.payload["model_path"])
            return (p if p.is_absolute() else ws.root / p).resolve()
    return None


def _apply(ws: Workspace, ledger, plan: _Plan) -> str | None:
    """Finish or undo one issuance; return what was done (None: nothing to do)."""
    recorded = _recorded_path(ws, ledger, plan)
    if recorded is not None and recorded != plan.final.resolve():
        raise _Untrusted("its final path is not the one the ledger records")
    if not plan.tmp.exists() and not plan.tmp.is_symlink():
        return None
    if plan.tmp.is_symlink() or not plan.tmp.is_file():
        raise _Untrusted("its temporary path is not a regular file")
    if recorded is None:
        plan.tmp.unlink()
        return f"removed unrecorded {plan.tmp.name}"
    if sha256_file(plan.tmp) != plan.sha256:
        raise _Untrusted("its temporary file is not the recorded model")
    os.replace(plan.tmp, plan.final)
    return f"completed {plan.final.name}"


def _reject(marker: Path, reason: str) -> str:
    aside = marker.with_name(marker.name + ".rejected")
    try:
        os.replace(marker, aside)
    except OSError:
        return f"warning: ignored pending marker {marker.name} ({reason}); nothing it names was touched"
    return f"warning: ignored pending marker {marker.name} ({reason}); nothing it names was touched, marker moved to {aside.name}"


def _sweep_locks(folder: Path) -> None:
    """Remove lock files left by killed processes (a held lock is skipped)."""
    for path in folder.glob("*.lock"):
        if path.is_symlink() or not path.is_file():
            continue
        fd = _try_lock(path)
        if fd is not None:
            _unlock(path, fd)


def recover_pending(ws: Workspace, master: bytes, *, on_notice: Callable[[str], None] | None = None) -> list[str]:
    """Finish or undo issuances interrupted by a crash; return what was done, and what was refused.

    ``master`` authenticates the markers. Markers of issuances still running in another process
    (their customer's lock is held) are left alone.
    """
    folder = ws.root / PENDING_DIR
    if not folder.is_dir():
        return []
    key, done = pending_marker_key(master), []
    markers = sorted(folder.glob("*.json"))
    with ws.ledger() as ledger:
        for marker in markers:
            try:
                plan = _read_marker(marker, key)
                lock = folder / f"{plan.customer}.lock"
                fd = _try_lock(lock)
                if fd is None:
                    continue  # being landed right now by its own process
                try:
                    what = _apply(ws, ledger, plan)
                    marker.unlink(missing_ok=True)
                finally:
                    _unlock(lock, fd)
                if what:
                    done.append(what)
            except _Untrusted as exc:
                done.append(_reject(marker, str(exc)))
    _sweep_locks(folder)
    if on_notice:
        for line in done:
            on_notice(line)
    return done
