"""Shared fixtures for the whole test suite.

Workspaces
    ``workspace_template`` (session): one workspace made once with a cheap scrypt
    cost, never modified. ``fresh_workspace`` (function): a private copy of it for
    one test, which may tamper with it freely; it also sets ``TRACER_PASSPHRASE``.

Command line
    ``run_cli(args, env=..., cwd=...)``: ``python -m tracer ARGS`` in a real
    subprocess, returns the ``CompletedProcess`` (text, stdout and stderr captured).
    ``cli(args, env=...)``: the same in-process with typer's ``CliRunner``
    (faster; stdout and stderr separate).

Files
    ``snapshot_files(root)``: {relative path: bytes} of a folder, to prove a
    failed command changed nothing.

Every test starts with ``TRACER_PASSPHRASE`` and ``TRACER_WORKSPACE`` removed
from the environment, so the developer's shell cannot leak into the tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest
from typer.testing import CliRunner

from tests._constants import LOW_SCRYPT, PASSPHRASE
from tracer.workspace import Workspace, init_workspace

# Session-cached workspaces with trained example models and issued copies.
pytest_plugins = ["tests.fixtures_issued"]

_TRACER_ENV = ("TRACER_PASSPHRASE", "TRACER_WORKSPACE")


def pytest_terminal_summary(terminalreporter, config) -> None:
    """Say how many issued-workspace builds ran (one per example, whatever the number of xdist workers)."""
    from tests.fixtures_issued import builds_summary

    factory = getattr(config, "_tmp_path_factory", None)
    line = builds_summary(factory.getbasetemp()) if factory is not None else None
    if line:
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _clean_tracer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _TRACER_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def passphrase() -> str:
    return PASSPHRASE


@pytest.fixture(scope="session")
def workspace_template(tmp_path_factory: pytest.TempPathFactory, passphrase: str) -> Path:
    """Root of a workspace created once per session (cheap scrypt). Read-only by convention: copy it."""
    root = tmp_path_factory.mktemp("template") / "ws"
    init_workspace(root, passphrase=passphrase, scrypt=LOW_SCRYPT)
    return root


@pytest.fixture
def fresh_workspace(workspace_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, passphrase: str) -> Workspace:
    """A private copy of the template workspace; ``TRACER_PASSPHRASE`` is set to open it."""
    root = tmp_path / "ws"
    shutil.copytree(workspace_template, root)  # copy2: keeps the 0600 mode of the key files
    monkeypatch.setenv("TRACER_PASSPHRASE", passphrase)
    return Workspace(root)


def _run_cli(
    args: Sequence[str | os.PathLike],
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    input: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    return subprocess.run(
        [sys.executable, "-m", "tracer", *map(str, args)],
        env=full_env,
        cwd=cwd,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,  # never a terminal: no prompt can hang
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(args, env=None, cwd=None, input=None)``: run ``python -m tracer`` in a subprocess.

    The child inherits the test's environment (after monkeypatching); ``env``
    overrides it, and a value of ``None`` removes that variable.
    """
    return _run_cli


@pytest.fixture
def cli():
    """``cli(args, env=None)``: invoke ``tracer.cli.app`` in-process; returns click's ``Result``.

    ``env`` applies for this call only (``None`` removes a variable).
    """
    from tracer.cli import app

    runner = CliRunner()

    def invoke(args: Sequence[str | os.PathLike], env: Mapping[str, str | None] | None = None):
        return runner.invoke(app, [str(a) for a in args], env=dict(env or {}), catch_exceptions=False)

    return invoke


@pytest.fixture
def snapshot_files() -> Callable[[Path], dict[str, bytes]]:
    """``snapshot_files(root)``: {relative path: bytes} of every file under ``root``, to prove nothing changed."""

    def snap(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}

    return snap
