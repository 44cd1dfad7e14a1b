"""The CLI's error path and conventions, through real `python -m tracer` processes.

Usage errors exit 2; with --json every failure prints one {error, hint, exit_code} document;
user-, file- and server-supplied text is never read as rich markup; library warnings stay off
stderr without --verbose; vendor code (tracer.toml's factory and loader) can neither shadow
installed packages nor fail silently; customers files in common encodings; -w after the
command; help text conventions.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from tracer.embedding.customers import read_customer_list
from tracer.errors import CustomerError, UsageError

WIDE = {"COLUMNS": "400"}  # help text unwrapped, so names are not split across lines

# A tiny model for the workspace's default tracer.toml (10 classes, inputs [1, 28, 28]).
MODEL_PY = """
import torch
from torch import nn

def make_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
"""


def _one_line_error(stderr: str, *needles: str) -> str:
    """stderr is ``error: ...`` plus at most a ``hint: ...`` line, no traceback and no warning; returns the error line."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "Warning" not in stderr, stderr
    assert lines and lines[0].startswith("error: "), stderr
    assert len(lines) <= 2 and all(x.startswith(("error:", "hint:")) for x in lines), stderr
    for needle in needles:
        assert needle in stderr, stderr
    return lines[0]


def _json_error(r, exit_code: int) -> dict:
    assert r.returncode == exit_code, r
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert set(doc) == {"error", "hint", "exit_code"} and doc["exit_code"] == exit_code, doc
    assert isinstance(doc["error"], str) and doc["error"]
    return doc


def _vendor_workspace(ws, files: dict[str, str], *, weights: bool = False) -> Path:
    """Write vendor files into the workspace (paths relative to it); optionally real base weights."""
    for rel, text in files.items():
        path = ws.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if weights:
        import torch
        from torch import nn

        (ws.root / "models").mkdir(exist_ok=True)
        torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), ws.root / "models" / "base.pt")
    return ws.root


# -- usage errors: exit 2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["--customer", "acme", "--customers", "c.txt"]])
def test_issue_needs_exactly_one_of_customer_and_customers(fresh_workspace, run_cli, args):
    r = run_cli(["-w", fresh_workspace.root, "issue", *args])
    assert r.returncode == 2, r
    _one_line_error(r.stderr, "exactly one of --customer")
    doc = _json_error(run_cli(["-w", fresh_workspace.root, "issue", *args, "--json"]), 2)
    assert "exactly one of --customer" in doc["error"]


@pytest.mark.parametrize("command", [["identify", "m.onnx"], ["evaluate"]])
@pytest.mark.parametrize("alpha", ["0", "1", "nan", "-0.5"])
def test_alpha_is_checked_once_for_every_command(fresh_workspace, run_cli, command, alpha):
    r = run_cli(["-w", fresh_workspace.root, *command, "--alpha", alpha])
    assert r.returncode == 2, r
    _one_line_error(r.stderr, "--alpha", "between 0 and 1")


def test_the_shared_alpha_option_is_the_one_every_command_uses(cli, fresh_workspace):
    from tracer.cli import _common, evaluate_cmd, identify_cmd

    assert identify_cmd.AlphaOpt is _common.AlphaOpt  # `tracer probe` takes it from here
    assert evaluate_cmd.UsageError is UsageError  # no command-local usage error class
    r = cli(["-w", fresh_workspace.root, "identify", "m.onnx", "--alpha", "2"])  # in-process too (CliRunner)
    assert r.exit_code == 2 and "--alpha 2 is not between 0 and 1" in r.stderr


# -- --json: one error document on stdout, whatever failed -------------------------------------------------


@pytest.mark.parametrize(("args", "code"), [
    (["ledger", "list", "--json"], 3),  # a library error (no workspace)
    (["ledger", "show", "not-a-number", "--json"], 2),  # a parse error click finds
    (["ledger", "verify", "--no-such-option", "--json"], 2),
    (["identify", "m.onnx", "--alpha", "7", "--json"], 2),  # a shared option's check
])
def test_json_failures_print_one_error_document(run_cli, tmp_path, args, code):
    r = run_cli(args, cwd=tmp_path)
    doc = _json_error(r, code)
    assert doc["hint"] is None or isinstance(doc["hint"], str)


def test_json_internal_error_is_a_document_too(fresh_workspace, run_cli):
    (fresh_workspace.root / "tracer.toml").write_bytes(b"\xff\xfe not utf-8")  # today an internal error or a ConfigError
    r = run_cli(["-w", fresh_workspace.root, "identify", "m.onnx", "--json"])
    assert r.returncode == 3
    _json_error(r, 3)


# -- markup injection: text is printed literally ----------------------------------------------------------


def test_customer_id_with_markup_prints_literally(fresh_workspace, run_cli):
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "[/x]"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "'[/x]'")
    assert "MarkupError" not in r.stderr


def test_onnx_path_with_markup_prints_literally(fresh_workspace, run_cli, tmp_path):
    bad = tmp_path / "[" / "x][bold]y.onnx"
    bad.parent.mkdir()
    bad.write_bytes(b"not an onnx model")
    r = run_cli(["-w", fresh_workspace.root, "identify", bad])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "x][bold]y.onnx")


@pytest.mark.parametrize(("key", "needle"), [
    ('"[/x]" = 1', "embedding.[/x]"),  # a closing tag with nothing open: rich raised MarkupError here
    ('"[task]" = 1', "embedding.[task]"),  # a tag rich would have swallowed silently
])
def test_config_messages_keep_their_brackets(fresh_workspace, run_cli, key, needle):
    path = fresh_workspace.root / "tracer.toml"
    text = path.read_text()
    assert "\n[embedding]\n" in text
    path.write_text(text.replace("\n[embedding]\n", f"\n[embedding]\n{key}\n", 1))
    r = run_cli(["-w", fresh_workspace.root, "identify", "m.onnx"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, needle)


# -- library warnings stay off stderr unless --verbose ------------------------------------------------------


def test_refused_pickle_weights_print_no_torch_warning(fresh_workspace, run_cli):
    import pickle

    _vendor_workspace(fresh_workspace, {"mymodel.py": MODEL_PY})
    (fresh_workspace.root / "models").mkdir(exist_ok=True)
    (fresh_workspace.root / "models" / "base.pt").write_bytes(pickle.dumps({"weight": Path("x")}, protocol=4))
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "cannot be loaded safely")


def test_nan_labels_are_a_config_error_without_runtime_warning(fresh_workspace, run_cli):
    _vendor_workspace(fresh_workspace, {"mymodel.py": MODEL_PY + """
import numpy as np

def load_data():
    x = np.zeros((20, 1, 28, 28), dtype="float32")
    y = np.arange(20, dtype="float64") % 10
    y[3] = np.nan
    return {"x_train": x, "y_train": y, "x_val": x, "y_val": y}
"""}, weights=True)
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "y_train", "not whole numbers")


def test_vendor_warnings_show_with_verbose_only(fresh_workspace, run_cli):
    _vendor_workspace(fresh_workspace, {"mymodel.py": MODEL_PY.replace(
        "def make_model():", "import warnings\n\ndef make_model():\n    warnings.warn('a vendor warning', UserWarning)")})
    args = ["-w", fresh_workspace.root, "issue", "--customer", "acme"]  # no base.pt: fails after the warning
    plain, verbose = run_cli(args), run_cli(["--verbose", *args])
    assert plain.returncode == verbose.returncode == 3
    _one_line_error(plain.stderr, "base model weights")
    assert "a vendor warning" in verbose.stderr and "UserWarning" in verbose.stderr


# -- vendor code: loaded from the workspace, never shadowing installed packages ------------------------------


def _shadow_files(marker: Path) -> dict[str, str]:
    """A workspace module `wave.py` (a standard-library name) that leaves a marker if it ever runs."""
    return {
        "wave.py": f"open({str(marker)!r}, 'w').write('workspace wave ran')\n",
        "helpers.py": "WIDTH = 784\n",
        "mymodel.py": MODEL_PY + "\nimport wave  # the standard library's, not the workspace's\nfrom helpers import WIDTH\n",
    }


@pytest.mark.parametrize("cwd", ["elsewhere", "workspace"])
def test_workspace_folder_does_not_shadow_installed_modules(fresh_workspace, run_cli, tmp_path, cwd):
    marker = tmp_path / "shadowed"
    _vendor_workspace(fresh_workspace, _shadow_files(marker))
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"],
                cwd=fresh_workspace.root if cwd == "workspace" else tmp_path)
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "base model weights")  # got past importing mymodel and its sibling helpers.py
    assert not marker.exists(), "the workspace's wave.py ran"


def test_workspace_package_named_like_an_installed_one_never_runs(fresh_workspace, run_cli, tmp_path):
    pytest.importorskip("sklearn")
    marker = tmp_path / "shadowed"
    _vendor_workspace(fresh_workspace, {
        "sklearn/__init__.py": f"open({str(marker)!r}, 'w').write('workspace sklearn ran')\n",
        "mymodel.py": MODEL_PY + "\nimport sklearn\n",
    })
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"], cwd=fresh_workspace.root)
    assert r.returncode == 3, r
    assert not marker.exists(), "the workspace's sklearn/ ran"


def test_factory_naming_a_shadowing_module_is_refused(fresh_workspace, run_cli, tmp_path):
    marker = tmp_path / "shadowed"
    _vendor_workspace(fresh_workspace, {"wave.py": f"open({str(marker)!r}, 'w').write('ran')\ndef make_model(): pass\n"})
    toml = fresh_workspace.root / "tracer.toml"
    toml.write_text(toml.read_text().replace('"mymodel:make_model"', '"wave:make_model"'))
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"], cwd=tmp_path)
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "wave", "installed module")
    assert not marker.exists()


@pytest.mark.parametrize(("code", "needles"), [
    ("import sys\nsys.exit(0)\n", ["mymodel", "sys.exit(0)"]),
    ("raise RuntimeError('cannot find the GPU\\nsecond line')\n", ["mymodel", "RuntimeError: cannot find the GPU"]),
    ("import a_dependency_that_is_not_installed\n", ["mymodel", "ModuleNotFoundError", "a_dependency_that_is_not_installed"]),
])
def test_vendor_module_failing_at_import_is_a_vendor_code_error(fresh_workspace, run_cli, code, needles):
    _vendor_workspace(fresh_workspace, {"mymodel.py": code + MODEL_PY})
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"])
    assert r.returncode == 3, r
    first = _one_line_error(r.stderr, *needles, "--verbose")
    assert first.startswith("error: vendor code failed") and "second line" not in r.stderr


def test_vendor_factory_and_loader_failures_name_them(fresh_workspace, run_cli):
    _vendor_workspace(fresh_workspace, {"mymodel.py": "def make_model():\n    raise ValueError('bad layer size')\n"})
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "model.factory mymodel:make_model", "ValueError: bad layer size")
    verbose = run_cli(["-w", fresh_workspace.root, "--verbose", "issue", "--customer", "acme"])
    assert "raise ValueError('bad layer size')" in verbose.stderr  # the vendor's own traceback is behind it

    _vendor_workspace(fresh_workspace, {"mymodel.py": MODEL_PY + "\ndef load_data():\n    raise SystemExit(0)\n"}, weights=True)
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customer", "acme"])
    assert r.returncode == 3, r
    _one_line_error(r.stderr, "data.loader mymodel:load_data", "sys.exit(0)")


# -- customers files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_customers_file_encodings_with_bom(tmp_path, encoding):
    path = tmp_path / "customers.csv"
    text = "id,name\nacme,Acme Café\nglobex,Globex\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    path.write_bytes(data)
    assert read_customer_list(path) == [("acme", "Acme Café"), ("globex", "Globex")]


@pytest.mark.parametrize(("data", "needle"), [
    ("acme\nglobex,Glöbex\n".encode("latin-1"), "customers.csv line 2: not valid UTF-8"),
    (b"", "names no customer"),
    (b"# comments only\n\nid\n", "names no customer"),
])
def test_bad_customers_files_are_one_line_errors(tmp_path, data, needle):
    path = tmp_path / "customers.csv"
    path.write_bytes(data)
    with pytest.raises(CustomerError) as info:
        read_customer_list(path)
    assert needle in info.value.message and "\n" not in info.value.message


def test_customers_file_errors_come_before_the_model_loads(fresh_workspace, run_cli, tmp_path):
    marker = tmp_path / "model-loaded"
    _vendor_workspace(fresh_workspace, {"mymodel.py": f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(0)\n"})
    for data, needle in ((b"", "names no customer"), ("acme\nglöbex\n".encode("latin-1"), "line 2")):
        (tmp_path / "c.csv").write_bytes(data)
        r = run_cli(["-w", fresh_workspace.root, "issue", "--customers", tmp_path / "c.csv"])
        assert r.returncode == 3, r
        _one_line_error(r.stderr, needle)
        assert not marker.exists()
    # a BOM file passes the reader (today: "line 1: customer id contains control characters"), so the model loads
    (tmp_path / "c.csv").write_bytes("acme,Acme\n".encode("utf-8-sig"))
    r = run_cli(["-w", fresh_workspace.root, "issue", "--customers", tmp_path / "c.csv"])
    assert r.returncode == 3 and marker.exists(), r
    _one_line_error(r.stderr, "vendor code failed", "sys.exit(0)")


# -- -w after the command; completion ---------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["ledger", "verify"], ["ledger", "list"], ["ledger", "show", "1"], ["ledger", "export"], ["keys", "export-public"],
])
def test_workspace_option_after_the_command(fresh_workspace, run_cli, tmp_path, args):
    after = run_cli([*args, "-w", fresh_workspace.root], cwd=tmp_path)
    before = run_cli(["-w", fresh_workspace.root, *args], cwd=tmp_path)
    assert after.returncode == before.returncode == 0, (after, before)
    assert after.stdout == before.stdout
    # given in both places, the one after the command wins
    both = run_cli(["-w", tmp_path / "nowhere", *args, "--workspace", fresh_workspace.root], cwd=tmp_path)
    assert both.returncode == 0 and both.stdout == before.stdout, both


@pytest.mark.parametrize("args", [["issue", "--customer", "[/x]"], ["identify", "m.onnx"], ["evaluate", "--attacks", "nope"]])
def test_every_workspace_command_takes_the_workspace_option(fresh_workspace, run_cli, tmp_path, args):
    r = run_cli([*args, "-w", fresh_workspace.root], cwd=tmp_path)
    assert r.returncode in (2, 3), r
    assert "workspace" not in _one_line_error(r.stderr)  # it found the workspace and failed later


def test_shell_completion_is_offered(run_cli):
    r = run_cli(["--help"], env=WIDE)
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
    # typer finds the shell by walking up the process tree (shellingham), which fails where no shell is an
    # ancestor (a test run started in the background and reparented to init); with detection off it takes the name
    r = run_cli(["--show-completion", "bash"], env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert r.returncode == 0 and "complete" in r.stdout, r


# -- help text -------------------------------------------------------------------------------------------


def _all_help(cli) -> dict[str, str]:
    import typer

    from tracer.cli import app
    from tracer.cli._docs import walk

    helps = {}
    for path, _ in walk(typer.main.get_command(app)):
        r = cli([*path, "--help"], env=WIDE)
        assert r.exit_code == 0, (path, r.output)
        helps[" ".join(("tracer", *path))] = r.stdout
    return helps


def test_help_conventions(cli):
    from tracer.evaluate.attacks import attack_names

    helps = _all_help(cli)
    for name, text in helps.items():
        assert "<bool>" not in text, name
        usage = re.search(r"Usage: .*", text).group(0)  # type: ignore[union-attr]
        for arg in re.findall(r"[{\[]([A-Za-z_]+)[}\]]", usage):
            assert arg == "OPTIONS" or arg.isupper(), (name, usage)
        if name != "tracer":
            assert "Exit codes: 0" not in text, f"{name} repeats the exit-code list"
    assert "Exit codes: 0" in helps["tracer"]
    flat = re.sub(r"[\s│]+", " ", helps["tracer evaluate"])
    for attack in attack_names():
        assert attack in flat, attack
    assert "make_model_alt" in flat


def test_readme_documents_make_model_alt_and_the_json_error_document():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    assert "make_model_alt" in readme.split("## CLI reference")[0]
    assert '"exit_code"' in readme


# -- --verbose shows the cause behind a diagnosis --------------------------------------------------------


def test_verbose_shows_the_chained_cause(fresh_workspace, run_cli, tmp_path):
    bad = tmp_path / "cp.json"
    bad.write_text("{not json")
    args = ["-w", fresh_workspace.root, "ledger", "verify", "--checkpoint", bad]
    plain, verbose = run_cli(args), run_cli(["--verbose", *args])
    assert plain.returncode == verbose.returncode == 3
    _one_line_error(plain.stderr, "cannot read checkpoint")
    assert "JSONDecodeError" in verbose.stderr and "direct cause" in verbose.stderr, verbose.stderr


def test_two_workspaces_in_one_process_each_get_their_own_module(tmp_path):
    from tracer._imports import import_object

    for name, value in (("a", 1), ("b", 2)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor_mod_xyz.py").write_text(f"def make():\n    return {value}\n")
    assert import_object("vendor_mod_xyz:make", root=tmp_path / "a")() == 1
    assert import_object("vendor_mod_xyz:make", root=tmp_path / "a")() == 1
    assert import_object("vendor_mod_xyz:make", root=tmp_path / "b")() == 2
