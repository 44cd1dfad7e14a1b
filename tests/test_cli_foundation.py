"""The foundation commands end to end: `tracer init`, workspace discovery, --json, errors, keys export-public."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from tracer.keys.keyfile import DEFAULT_SCRYPT
from tracer.keys.keyring import load_public_key


def _flat(text: str) -> str:
    """Text with line wrapping undone."""
    return re.sub(r"\s+", " ", text)


def _one_line_error(stderr: str, *needles: str) -> str:
    """Assert stderr is ``error: ...`` plus at most a ``hint: ...`` line, with no traceback; return the error line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert lines and lines[0].startswith("error: "), stderr
    assert all(x.startswith(("error:", "hint:")) for x in lines) and len(lines) <= 2, stderr
    for needle in needles:
        assert needle in stderr, stderr
    return lines[0]


# -- tracer init -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_initialized(tmp_path_factory, run_cli, passphrase) -> tuple[Path, object]:
    """One `tracer init --json` through the real CLI, with the default (memory-hard) scrypt cost."""
    root = tmp_path_factory.mktemp("cli-init") / "new-ws"
    r = run_cli(["init", root, "--json"], env={"TRACER_PASSPHRASE": passphrase, "TRACER_WORKSPACE": None})
    return root, r


def test_init_creates_workspace(cli_initialized, passphrase):
    root, r = cli_initialized
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["workspace"] == str(root) and doc["ledger"] == str(root / "tracer.db")
    assert (root / "tracer.toml").is_file() and (root / "tracer.db").is_file()
    keys = root / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [".gitignore", "master.key", "signing.key", "signing.pub.pem"]
    for name in ("master.key", "signing.key"):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
        kdf = json.loads((keys / name).read_text())["kdf"]
        assert {k: kdf[k] for k in ("n", "r", "p")} == DEFAULT_SCRYPT
    assert not list(root.glob("tracer.db.init*")), "temporary ledger left behind"
    # the loss warning goes to stderr, never into the JSON on stdout
    assert "warning:" in r.stderr and "master secret is lost" in _flat(r.stderr)
    assert "warning" not in r.stdout
    for p in root.rglob("*"):
        if p.is_file():
            assert passphrase.encode() not in p.read_bytes(), p


def test_init_then_ledger_verifies(cli_initialized, cli):
    root, _ = cli_initialized
    r = cli(["-w", root, "ledger", "verify", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["entries"] == 1


def test_init_refuses_to_overwrite(cli_initialized, run_cli, snapshot_files, passphrase):
    root, _ = cli_initialized
    before = snapshot_files(root)
    r = run_cli(["init", root], env={"TRACER_PASSPHRASE": passphrase})
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "already exists")
    assert snapshot_files(root) == before


def test_init_refuses_existing_keys(tmp_path, cli, passphrase):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "master.key").write_text("precious")
    r = cli(["init", tmp_path], env={"TRACER_PASSPHRASE": passphrase})
    assert r.exit_code == 3
    assert "already exists" in r.stderr
    assert (tmp_path / "keys" / "master.key").read_text() == "precious"
    assert not (tmp_path / "tracer.db").exists()


def test_init_without_passphrase_fails_cleanly(tmp_path, run_cli):
    r = run_cli(["init", tmp_path / "ws"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "no passphrase")
    assert not (tmp_path / "ws" / "tracer.toml").exists()


def test_init_plain_output(tmp_path, cli, passphrase):
    r = cli(["init", tmp_path / "plain"], env={"TRACER_PASSPHRASE": passphrase})
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == f"created workspace {(tmp_path / 'plain').resolve()}"
    assert "master secret is lost" in _flat(r.stderr)


# -- discovery -------------------------------------------------------------------------------------


def _pubkey_via(run_cli, args, **kw):
    return run_cli([*args, "keys", "export-public"], **kw)


def test_discovery_by_option(fresh_workspace, run_cli, tmp_path):
    r = _pubkey_via(run_cli, ["--workspace", fresh_workspace.root], cwd=tmp_path)
    assert r.returncode == 0, r
    assert r.stdout == fresh_workspace.public_key_pem().decode()


def test_discovery_by_env(fresh_workspace, run_cli, tmp_path):
    r = _pubkey_via(run_cli, [], cwd=tmp_path, env={"TRACER_WORKSPACE": str(fresh_workspace.root)})
    assert r.returncode == 0, r
    assert r.stdout == fresh_workspace.public_key_pem().decode()


def test_discovery_from_cwd_and_parents(fresh_workspace, run_cli, cli, monkeypatch):
    deep = fresh_workspace.root / "models" / "a" / "b"
    deep.mkdir(parents=True)
    r = _pubkey_via(run_cli, [], cwd=deep)
    assert r.returncode == 0, r
    assert r.stdout == fresh_workspace.public_key_pem().decode()
    monkeypatch.chdir(fresh_workspace.root)
    r = cli(["keys", "export-public"])
    assert r.exit_code == 0 and r.stdout == fresh_workspace.public_key_pem().decode()


def test_option_beats_env_and_env_beats_cwd(fresh_workspace, workspace_template, cli, monkeypatch, tmp_path):
    pem = fresh_workspace.public_key_pem().decode()
    r = cli(["-w", fresh_workspace.root, "ledger", "verify", "--json"], env={"TRACER_WORKSPACE": str(tmp_path / "nope")})
    assert r.exit_code == 0, r.output
    other = tmp_path / "other-ws"
    shutil.copytree(workspace_template, other)
    (other / "keys" / "signing.pub.pem").write_text("marker")  # distinguishable
    monkeypatch.chdir(other)
    r = cli(["keys", "export-public"], env={"TRACER_WORKSPACE": str(fresh_workspace.root)})
    assert r.exit_code == 0 and r.stdout == pem


def test_outside_workspace(run_cli, tmp_path):
    r = run_cli(["ledger", "list"], cwd=tmp_path, env={"TRACER_WORKSPACE": None})
    assert r.returncode == 3, r
    assert r.stdout == ""
    first = _one_line_error(r.stderr, "tracer init")
    assert "not inside a tracer workspace" in first


def test_env_pointing_nowhere(run_cli, tmp_path):
    r = run_cli(["ledger", "list"], cwd=tmp_path, env={"TRACER_WORKSPACE": str(tmp_path / "x")})
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "not a tracer workspace", "tracer init")


def test_error_stays_one_line_with_long_paths(run_cli, tmp_path):
    """Errors are not wrapped to the terminal width, so a long path keeps the message on one line."""
    long = tmp_path / ("a-rather-long-folder-name-" * 4) / "workspace"
    r = run_cli(["-w", long, "ledger", "list"], cwd=tmp_path)
    assert r.returncode == 3
    first = _one_line_error(r.stderr, "not a tracer workspace")
    assert str(long) in first


# -- --json, --help, --version, --verbose ----------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["ledger", "list", "--json"],
    ["ledger", "list", "--json", "--kind", "genesis"],
    ["ledger", "show", "1", "--json"],
    ["ledger", "verify", "--json"],
])
def test_json_outputs_are_pure_json(fresh_workspace, cli, args):
    # in-process for speed; `init --json` and `verify --export --json` are checked in real subprocesses elsewhere
    r = cli(["-w", fresh_workspace.root, *args])
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    doc = json.loads(r.stdout)  # raises if anything but one JSON document is on stdout
    assert doc
    assert r.stdout.strip().startswith(("{", "["))


def test_json_verify_failure_is_pure_json(fresh_workspace, cli):
    conn = sqlite3.connect(fresh_workspace.ledger_path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET time = 'x' WHERE seq = 1")
    conn.close()
    r = cli(["-w", fresh_workspace.root, "ledger", "verify", "--json"])
    assert r.exit_code == 1
    assert json.loads(r.stdout) == {"ok": False, "first_bad_entry": 1, "error": "entry 1 was modified (its content no longer matches its hash)"}


def test_json_list_content(fresh_workspace, cli):
    r = cli(["-w", fresh_workspace.root, "ledger", "list", "--json"])
    assert r.exit_code == 0
    [entry] = json.loads(r.stdout)
    assert entry["seq"] == 1 and entry["kind"] == "genesis" and len(entry["hash"]) == 64
    r = cli(["-w", fresh_workspace.root, "ledger", "show", "1", "--json"])
    assert json.loads(r.stdout)["hash"] == entry["hash"]
    r = cli(["-w", fresh_workspace.root, "ledger", "show", "99"])
    assert r.exit_code == 3 and "no ledger entry 99" in r.stderr


def test_python_m_tracer_help(run_cli, cli):
    r = run_cli(["--help"])
    assert r.returncode == 0, r
    for word in ("init", "keys", "ledger", "Exit codes"):
        assert word in r.stdout
    r = cli(["ledger", "--help"])
    assert r.exit_code == 0 and "verify" in r.stdout and "checkpoint" in r.stdout
    r = cli(["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("tracer ")


def test_usage_error_is_exit_2(cli):
    assert cli(["ledger", "no-such-command"]).exit_code == 2
    assert cli(["ledger", "show", "not-a-number"]).exit_code == 2


def test_export_public_verifies_the_ledger(fresh_workspace, run_cli, tmp_path, passphrase):
    r = run_cli(["-w", fresh_workspace.root, "keys", "export-public"], env={"TRACER_PASSPHRASE": None})
    assert r.returncode == 0, r  # needs no passphrase
    assert r.stdout.startswith("-----BEGIN PUBLIC KEY-----") and r.stdout.rstrip().endswith("-----END PUBLIC KEY-----")
    key = load_public_key(r.stdout.encode())
    assert key == fresh_workspace.unlock(passphrase=passphrase, master=False).public_key
    pem = tmp_path / "pub.pem"
    pem.write_text(r.stdout)
    r = run_cli(["-w", fresh_workspace.root, "ledger", "verify", "--public-key", pem])
    assert r.returncode == 0 and r.stdout.startswith("ledger OK: 1 entries"), r


def test_verbose_shows_traceback_plain_does_not(fresh_workspace, run_cli, passphrase):
    args = ["-w", fresh_workspace.root, "ledger", "checkpoint"]
    env = {"TRACER_PASSPHRASE": "wrong-one"}
    plain = run_cli(args, env=env)
    verbose = run_cli(["--verbose", *args], env=env)
    assert plain.returncode == verbose.returncode == 3
    assert "Traceback" not in plain.stderr
    _one_line_error(plain.stderr, "wrong passphrase")
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "WrongPassphrase" in verbose.stderr and "error: wrong passphrase" in verbose.stderr
    for out in (plain, verbose):
        assert "wrong-one" not in out.stdout + out.stderr and passphrase not in out.stdout + out.stderr


def test_init_key_style_chooses_the_keys_and_the_embedding_follows(tmp_path, cli, passphrase):
    from tracer.workspace import Workspace

    r = cli(["init", tmp_path / "default"], env={"TRACER_PASSPHRASE": passphrase})
    assert r.exit_code == 0, r.output
    cfg = Workspace(tmp_path / "default").config  # a new workspace: natural-mix keys, an automatic pool
    assert cfg.fingerprint.style == "natural-mix/v3" and cfg.fingerprint.pool_size == 0
    assert cfg.embedding.steps == 2000 and cfg.embedding.rank_code == 0.0
    r = cli(["init", tmp_path / "grid", "--key-style", "uniform-grid/v1"], env={"TRACER_PASSPHRASE": passphrase})
    assert r.exit_code == 0, r.output
    cfg = Workspace(tmp_path / "grid").config
    assert cfg.fingerprint.style == "uniform-grid/v1" and cfg.embedding.steps == 250 and cfg.embedding.rank_code == 0.2
    assert (tmp_path / "grid" / "mymodel.py").is_file()  # the generic template's starter, as without the option
    bad = cli(["init", tmp_path / "bad", "--key-style", "sparkly/v1"], env={"TRACER_PASSPHRASE": passphrase})
    assert bad.exit_code == 3 and "unknown key style 'sparkly/v1'" in bad.stderr
    assert not (tmp_path / "bad").exists()
