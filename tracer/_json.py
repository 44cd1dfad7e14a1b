"""One strict JSON reader for everything tracer verifies (ledger payloads, exports, evidence, checkpoints, key files).

``json.loads`` keeps the *last* of two equal keys, while other readers (SQLite's
``json_extract``, many JSON libraries) keep the *first*. A signed document with
a duplicate key can therefore verify under one reading and say something else
under another, so signed JSON must not have any. This reader also refuses what
RFC 8785 canonical JSON cannot carry or what would crash the reader:

* duplicate keys in any object;
* ``NaN``, ``Infinity`` and numbers that overflow a float;
* number literals longer than :data:`MAX_NUMBER_CHARS` (Python's int parser refuses
  more than 4300 digits with a ValueError that names no position);
* nesting deeper than :data:`MAX_DEPTH` (the parser would raise RecursionError).

Every refusal is a :class:`StrictJSONError`, a ``ValueError`` with a one-line
message, so callers that already catch ``ValueError`` keep working. Text that is
not JSON at all (or not UTF-8) raises its subclass :class:`JSONSyntaxError`, so a
caller can tell an unreadable file from a parsable one that was crafted.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["StrictJSONError", "JSONSyntaxError", "loads_strict", "loads_bounded", "MAX_DEPTH", "MAX_NUMBER_CHARS"]

#: Deepest nesting accepted: tracer's own documents nest fewer than 10 levels (a stored probe
#: response adds its own depth), and Python's parser and canonicalizer recurse about 1000 deep.
MAX_DEPTH = 200
#: Longest number literal accepted (a float with 17 significant digits and an exponent needs 25).
MAX_NUMBER_CHARS = 40


class StrictJSONError(ValueError):
    """The text is not JSON, or is JSON that signed tracer documents never contain."""


class JSONSyntaxError(StrictJSONError):
    """The text is not JSON (or not UTF-8) at all."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError(f"duplicate key {key[:40]!r} in a JSON object")
        out[key] = value
    return out


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"a number with {len(text)} digits (at most {MAX_NUMBER_CHARS} are accepted)")
    return int(text)


def _float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise StrictJSONError(f"a number literal of {len(text)} characters (at most {MAX_NUMBER_CHARS} are accepted)")
    value = float(text)
    if not math.isfinite(value):
        raise StrictJSONError(f"the number {text[:20]} overflows a float")
    return value


def _constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def _depth_ok(text: str) -> bool:
    """True if brackets nest at most MAX_DEPTH deep (strings skipped); a linear scan, no recursion."""
    depth, in_string, escaped = 0, False, False
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return True  # cannot be deeper than the number of opening brackets
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def loads_strict(data: str | bytes) -> Any:
    """Parse JSON text, refusing duplicate keys, non-finite or oversized numbers and deep nesting."""
    if isinstance(data, (bytes, bytearray)):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JSONSyntaxError("not UTF-8 text") from exc
    if not _depth_ok(data):
        raise StrictJSONError(f"JSON nested more than {MAX_DEPTH} levels deep")
    try:
        return json.loads(data, object_pairs_hook=_pairs, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except StrictJSONError:
        raise
    except json.JSONDecodeError as exc:
        raise JSONSyntaxError(f"not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from exc
    except (ValueError, RecursionError) as exc:  # defensive: the checks above should have caught these
        raise StrictJSONError(f"not acceptable JSON ({type(exc).__name__})") from exc


def loads_bounded(text: str) -> Any:
    """``json.loads`` for JSON nobody signed (server answers, label maps, templates): duplicate keys and
    NaN are the sender's business, but nesting deeper than :data:`MAX_DEPTH` raises ``ValueError``
    instead of exhausting the stack (RecursionError), like any other undecodable document."""
    if not _depth_ok(text):
        raise ValueError(f"JSON nested more than {MAX_DEPTH} levels deep")
    return json.loads(text)

