"""Resolve the vendor's `package.module:function` import paths from tracer.toml."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["import_object"]


def import_object(spec: str, *, root: Path | None = None, field: str = "import path") -> Any:
    """Import ``module:attr``; the workspace folder is searched first so vendors can keep code beside tracer.toml."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"tracer.toml: {field} {spec!r} must look like package.module:function")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"tracer.toml: {field} {spec!r}: cannot import {module_name} ({exc})") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"tracer.toml: {field} {spec!r}: {module_name} has no attribute {attr}") from None
    if not callable(obj):
        raise ConfigError(f"tracer.toml: {field} {spec!r} is not callable")
    return obj
