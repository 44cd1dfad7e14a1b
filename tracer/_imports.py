"""Resolve the vendor's `package.module:function` import paths from tracer.toml, and run what they name.

The workspace may hold the vendor's code beside tracer.toml. It must never shadow an
installed package: a folder `sklearn/` in the workspace must not run when anything imports
sklearn. So a module named in tracer.toml that sits in the workspace is loaded by file path,
and the workspace folder is *appended* to ``sys.path`` (so that module's own sibling
imports work, while installed packages and the standard library always win).

Whatever the vendor's code raises, at import or when called, even ``SystemExit``, is
reported as a :class:`VendorCodeError` naming the module and the exception's first line.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, TracerError, VendorCodeError

__all__ = ["import_object", "call_vendor"]

#: Top-level module names this process loaded from a workspace folder (a later workspace may bring its own).
_LOADED: set[str] = set()
#: Workspace folders this process appended to sys.path.
_ROOTS: set[Path] = set()
_VERBOSE_HINT = "rerun with --verbose to see the traceback of the vendor code"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def vendor_failure(exc: BaseException, *, module: str, what: str) -> VendorCodeError:
    """The error for an exception (or exit) out of the vendor's code."""
    if isinstance(exc, SystemExit):
        why = f"called sys.exit({exc.code!r})"
    else:
        why = f"raised {_first_line(exc)}"
    return VendorCodeError(f"vendor code failed: {what} {why}", module=module, hint=_VERBOSE_HINT)


def call_vendor(fn: Callable[[], Any], *, spec: str, field: str) -> Any:
    """Call a vendor factory or loader; anything it raises (or an exit) becomes a VendorCodeError."""
    module = spec.partition(":")[0]
    try:
        return fn()
    except TracerError:
        raise
    except (Exception, SystemExit) as exc:
        raise vendor_failure(exc, module=module, what=f"{field} {spec}") from exc


def _workspace_origin(root: Path, top: str) -> tuple[Path, Path | None] | None:
    """(file, package folder or None) of a top-level module ``top`` in the workspace folder, if there is one."""
    package = root / top
    if (package / "__init__.py").is_file():
        return package / "__init__.py", package
    if (root / f"{top}.py").is_file():
        return root / f"{top}.py", None
    return None


def _same_file(module: ModuleType, origin: Path) -> bool:
    file = getattr(module, "__file__", None)
    return isinstance(file, str) and Path(file).resolve() == origin.resolve()


def _installed_elsewhere(top: str, root: Path) -> bool:
    """Whether ``top`` is a builtin or importable from anywhere on sys.path but the workspace."""
    if top in sys.builtin_module_names:
        return True
    workspaces = {root.resolve(), *_ROOTS}
    paths = [p for p in sys.path if p and Path(p).resolve() not in workspaces]
    return importlib.machinery.PathFinder.find_spec(top, paths) is not None


def _load_workspace_module(top: str, root: Path, *, field: str) -> None:
    """Import the workspace's module ``top`` from its file, registered under its own name; no-op if it has none."""
    found = _workspace_origin(root, top)
    if found is None:
        return
    origin, package = found
    existing = sys.modules.get(top)
    if existing is not None and _same_file(existing, origin):
        return
    if existing is not None and top in _LOADED:  # another workspace's module of that name, in this process
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
        existing = None
    if existing is not None or _installed_elsewhere(top, root):
        raise ConfigError(f"tracer.toml: {field}: the workspace's module {top} has the name of an installed module",
                          hint=f"rename {origin.relative_to(root)} (installed packages always win over the workspace)")
    spec = importlib.util.spec_from_file_location(
        top, origin, submodule_search_locations=[str(package)] if package is not None else None)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(top, None)
        raise
    _LOADED.add(top)


def _append_path(root: Path) -> None:
    entry = str(root)
    if entry not in sys.path:
        sys.path.append(entry)  # appended: the vendor's sibling modules resolve, installed packages win
        _ROOTS.add(root.resolve())


def _import(module_name: str, *, root: Path | None, field: str) -> ModuleType:
    top = module_name.partition(".")[0]
    if root is not None:
        _append_path(root)
        _load_workspace_module(top, root, field=field)
    return importlib.import_module(module_name)


def _is_missing(exc: ImportError, module_name: str) -> bool:
    """True when the named module itself (or a parent package) does not exist, not a failed import inside it."""
    parts = module_name.split(".")
    return isinstance(exc, ModuleNotFoundError) and exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def import_object(spec: str, *, root: Path | None = None, field: str = "import path") -> Any:
    """Import ``module:attr``; a module that sits in the workspace folder ``root`` is loaded from there."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"tracer.toml: {field} {spec!r} must look like package.module:function")
    try:
        module = _import(module_name, root=Path(root) if root is not None else None, field=field)
    except TracerError:
        raise
    except ImportError as exc:
        if not _is_missing(exc, module_name):
            raise vendor_failure(exc, module=module_name, what=f"importing {module_name}") from exc
        raise ConfigError(f"tracer.toml: {field} {spec!r}: cannot import {module_name} ({exc})") from exc
    except (Exception, SystemExit) as exc:
        raise vendor_failure(exc, module=module_name, what=f"importing {module_name}") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise ConfigError(f"tracer.toml: {field} {spec!r}: {module_name} has no attribute {attr}") from exc
    if not callable(obj):
        raise ConfigError(f"tracer.toml: {field} {spec!r} is not callable")
    return obj
