"""Small file-system helpers: atomic writes so nothing is ever half-written, and private modes.

Everything tracer writes (the ledger, issued copies, reports, evidence, exports,
checkpoints) says who received which model, so it is created mode 0600 and the
folders tracer creates 0700, whatever the umask. A vendor who needs group access
sets ``TRACER_FILE_MODE`` (octal, e.g. ``640``); folders then get the matching
execute bits (``750``). Key files are always 0600, whatever the setting.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .errors import ConfigError

__all__ = ["atomic_write_bytes", "sha256_file", "file_mode", "dir_mode", "ensure_dir", "create_private_file", "FILE_MODE_ENV"]

FILE_MODE_ENV = "TRACER_FILE_MODE"
DEFAULT_FILE_MODE = 0o600


def file_mode() -> int:
    """Mode of the files tracer creates: 0600, or ``TRACER_FILE_MODE`` (octal; owner read+write required)."""
    raw = os.environ.get(FILE_MODE_ENV, "").strip()
    if not raw:
        return DEFAULT_FILE_MODE
    try:
        mode = int(raw, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777 or mode & 0o600 != 0o600 or mode & 0o111:
        raise ConfigError(f"{FILE_MODE_ENV}={raw[:20]!r} is not a file mode like 600 or 640",
                          hint="octal, owner read and write, no execute bits; unset it for 600")
    return mode


def dir_mode() -> int:
    """Mode of the folders tracer creates: the file mode plus execute wherever it allows reading (0700, 0750...)."""
    mode = file_mode()
    return mode | ((mode & 0o444) >> 2)


def ensure_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with :func:`dir_mode` (set explicitly, so umask has no say).

    Folders that already exist are left as they are: they are the user's.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    mode = dir_mode()
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue  # created concurrently: not ours to chmod
        os.chmod(folder, mode)
    return path


def create_private_file(path: Path, *, mode: int | None = None) -> None:
    """Create an empty file with ``mode`` (default :func:`file_mode`) before anything else may open it."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, file_mode() if mode is None else mode)
    try:
        os.fchmod(fd, file_mode() if mode is None else mode)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename.

    ``mode`` defaults to :func:`file_mode` (0600); it is set on the file before any byte is written.
    """
    path = Path(path)
    mode = file_mode() if mode is None else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
