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

    ``run_limited(args, cpu_s=...)`` / ``communicate_limited(proc, cpu_s=...)``
    (import them from tests.conftest): any subprocess, killed only past a CPU-time
    limit or an hour of wall time (``HANG_S``), never for being slow.

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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


def _share_the_cores() -> None:
    """Under xdist, each worker's torch (and every CLI subprocess it starts) gets its share of the cores.

    torch otherwise takes every core in each worker: 2 workers x 2 threads on 2 cores
    contend. Set before torch is imported (the product reads OMP_NUM_THREADS through
    ``EmbeddingConfig.effective_threads``); a caller's own OMP_NUM_THREADS wins.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cores // workers))


_share_the_cores()

import pytest  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tests._constants import HANG_S, LOW_SCRYPT, PASSPHRASE  # noqa: E402
from tracer.workspace import Workspace, init_workspace  # noqa: E402

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


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, its reaped children included) of a running process; None without procfs."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime


def communicate_limited(
    proc: subprocess.Popen, *, cpu_s: float, hang_s: float = HANG_S, input: str | None = None
) -> tuple[str, str]:
    """``proc.communicate()``, but kill ``proc`` and fail the test once it used ``cpu_s`` of CPU time
    (runaway work) or ran ``hang_s`` of wall time (a hang). A slow, loaded machine trips neither."""
    deadline = time.monotonic() + hang_s
    while True:
        try:
            return proc.communicate(input=input, timeout=0.5)
        except subprocess.TimeoutExpired:
            input = None  # sent on the first call; communicate() refuses it again
        used = cpu_seconds(proc.pid)
        if (used is not None and used > cpu_s) or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            why = f"used {used:.0f} s of CPU time (limit {cpu_s:.0f})" if used is not None and used > cpu_s else f"ran {hang_s:.0f} s of wall time"
            pytest.fail(f"{' '.join(map(str, proc.args))}: killed, it {why}\n--- stderr (tail) ---\n{(err or '')[-3000:]}", pytrace=False)


def run_limited(
    args: Sequence[str | os.PathLike], *, cpu_s: float, hang_s: float = HANG_S, input: str | None = None,
    env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(args, capture_output=True, text=True)`` bounded by CPU time, not wall time (see communicate_limited)."""
    args = [str(a) for a in args]
    proc = subprocess.Popen(
        args, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,  # never a terminal: no prompt can hang
    )
    out, err = communicate_limited(proc, cpu_s=cpu_s, hang_s=hang_s, input=input)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _run_cli(
    args: Sequence[str | os.PathLike],
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike | None = None,
    input: str | None = None,
    cpu_limit: float = 600,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            full_env.pop(name, None)
        else:
            full_env[name] = value
    cpu_s = cpu_limit if timeout is None else timeout  # ``timeout`` (its old name) is a CPU-time limit too
    return run_limited([sys.executable, "-m", "tracer", *args], cpu_s=cpu_s, env=full_env, cwd=cwd, input=input)


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli(args, env=None, cwd=None, input=None, cpu_limit=600)``: run ``python -m tracer`` in a subprocess.

    The child inherits the test's environment (after monkeypatching); ``env``
    overrides it, and a value of ``None`` removes that variable. It is killed
    (and the test fails) only past ``cpu_limit`` seconds of CPU time or an hour
    of wall time: a loaded machine makes it slow, never a failure.
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
