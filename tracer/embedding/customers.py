"""The customers file of `tracer issue --customers FILE`: one id per line, or CSV ``id,name``.

Spreadsheets write these files in several encodings, so the reader accepts UTF-8 with or
without a byte-order mark, and UTF-16 or UTF-32 with one. Anything else that is not UTF-8
is refused in one line naming the first undecodable line. A file that names no customer
is an error (exit 3, like any other bad content of the file), found before the model loads.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from ..errors import CustomerError
from ..keys import normalize_customer_id

__all__ = ["read_customer_list", "decode_customer_file"]

#: Byte-order marks, longest first (the UTF-32 LE mark starts with the UTF-16 LE one).
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_HEADERS = ("id", "customer", "customer_id")


def decode_customer_file(data: bytes, *, name: str) -> str:
    """The file's text: by its byte-order mark if it has one, else strict UTF-8."""
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1 if encoding == "utf-8" else None
        where = f" line {line}" if line else ""
        raise CustomerError(
            f"{name}{where}: not valid {encoding.upper().replace('-SIG', '')} text (byte {exc.start})",
            hint="save the customers file as UTF-8 (or UTF-16 with a byte-order mark)",
        ) from exc


def _records(reader, *, name: str):
    """(line number, record) pairs; a CSV syntax error is a one-line CustomerError naming the line."""
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise CustomerError(f"{name} line {reader.line_num}: {exc}") from exc
        yield reader.line_num, rec


def read_customer_list(path: Path) -> list[tuple[str, str | None]]:
    """(customer id, display name or None) per customer; blank lines, ``#`` comments and an ``id`` header are skipped."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CustomerError(f"cannot read customer list {path}: {exc.strerror}") from exc
    text = decode_customer_file(data, name=Path(path).name)
    rows: list[tuple[str, str | None]] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    for n, rec in _records(reader, name=Path(path).name):
        if not rec or not rec[0].strip() or rec[0].lstrip().startswith("#"):
            continue
        if not rows and rec[0].strip().lower() in _HEADERS:
            continue  # header
        name = ",".join(rec[1:]).strip() or None
        try:
            rows.append((normalize_customer_id(rec[0]), name))
        except CustomerError as exc:
            raise CustomerError(f"{Path(path).name} line {n}: {exc.message}") from exc
    if not rows:
        raise CustomerError(f"customer list {path} names no customer",
                            hint="one id per line, or CSV id,name (blank lines and # comments are skipped)")
    return rows
