"""One conversion of Python and numpy values to plain JSON (used for ledger payloads, evidence and stored answers).

Canonical JSON (RFC 8785) has no NaN or infinity and loses integers beyond 2**53, so such values
need a policy. There are two, because the inputs differ:

* ``raw=False`` (default: results tracer computed): numpy scalars become Python numbers,
  non-finite floats become ``None`` (a p-value that underflowed is reported elsewhere as its log),
  and anything else is a bug: :class:`TypeError`.
* ``raw=True`` (what a server answered: keep its information): non-finite floats become their
  ``repr`` (``"nan"``, ``"inf"``), integers of 2**53 and beyond become decimal strings, and any
  other object becomes ``str(value)``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any, *, raw: bool = False) -> Any:
    """A plain-JSON copy of ``value`` under the policy above."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return str(value) if raw and abs(value) >= 2**53 else int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else (repr(value) if raw else None)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalar
        return jsonable(value.item(), raw=raw)
    if isinstance(value, dict):
        return {str(k): jsonable(v, raw=raw) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, raw=raw) for v in value]
    if raw:
        return str(value)
    raise TypeError(type(value).__name__)
