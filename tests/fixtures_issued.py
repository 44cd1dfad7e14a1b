"""Session-cached workspaces with trained base models and issued copies (shared by many test files).

Use the fixtures ``issued_digits`` / ``issued_tabular`` (read-only: a workspace
with customers acme, globex, initech already issued) and ``issued_digits_copy``
/ ``issued_tabular_copy`` (a private copy a test may change). The passphrase is
``PASSPHRASE``; keys use a low scrypt cost to keep tests fast.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PASSPHRASE = "correct horse battery staple"
CUSTOMERS = (("acme", "ACME Corp."), ("globex", "Globex Corporation"), ("initech", "Initech"))
FAST_SCRYPT = {"n": 2**12, "r": 8, "p": 1}

_cache: dict[str, Path] = {}


def build_issued_workspace(root: Path, example: str, customers=CUSTOMERS) -> Path:
    """init --example, train the base model, issue each customer; return the workspace folder."""
    from tracer.embedding import Issuer
    from tracer.examples import example_config, prepare_example
    from tracer.workspace import init_workspace

    ws = init_workspace(root, passphrase=PASSPHRASE, config_text=example_config(example), scrypt=FAST_SCRYPT)
    prepare_example(ws, example, progress=False)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    Issuer(ws, keyring).issue_many(list(customers))
    return ws.root


def _issued(tmp_path_factory, example: str) -> Path:
    if example not in _cache:
        _cache[example] = build_issued_workspace(tmp_path_factory.mktemp(f"issued-{example}") / "ws", example)
    return _cache[example]


def copy_workspace(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def issued_digits(tmp_path_factory) -> Path:
    return _issued(tmp_path_factory, "digits")


@pytest.fixture(scope="session")
def issued_tabular(tmp_path_factory) -> Path:
    return _issued(tmp_path_factory, "tabular")


@pytest.fixture
def issued_digits_copy(issued_digits, tmp_path) -> Path:
    return copy_workspace(issued_digits, tmp_path / "ws")


@pytest.fixture
def issued_tabular_copy(issued_tabular, tmp_path) -> Path:
    return copy_workspace(issued_tabular, tmp_path / "ws")


@pytest.fixture
def passphrase_env(monkeypatch):
    monkeypatch.setenv("TRACER_PASSPHRASE", PASSPHRASE)
    return PASSPHRASE
