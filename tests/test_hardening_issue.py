"""Hardening of `tracer issue` and `tracer identify` (issue 13): forged markers, reservations, time limits, bad outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_issued import PASSPHRASE
from tests.test_issue import _set_config, _snapshot_state, _wait_for_cpu_seconds
from tracer.workspace import Workspace


def _env(root: Path) -> dict[str, str]:
    return {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root)}


# -- item 9: pending-issuance markers are authenticated and confined --------------------------------

def _forge(root: Path, outside: Path) -> dict[str, bytes]:
    """Three markers an attacker could write: rename a file over another, delete one, and a MAC'd one naming outside paths."""
    from tracer.embedding.landing import write_marker

    with Workspace(root).ledger() as ledger:
        recorded_sha = ledger.issuances("acme")[0].payload["model_sha256"]
    outside.mkdir()
    victims = {"moved.txt": b"moved", "target.txt": b"target", "deleted.txt": b"deleted", "hooli.onnx": b"x", ".hooli.onnx.0123456789abcdef.pending": b"y"}
    for name, data in victims.items():
        (outside / name).write_bytes(data)
    pending = root / ".tracer/pending"
    pending.mkdir(parents=True, exist_ok=True)
    # the old format: recovery renamed tmp over final for a recorded sha, and deleted tmp otherwise
    (pending / "evil.json").write_text(json.dumps({"tmp": str(outside / "moved.txt"), "final": str(outside / "target.txt"), "sha256": recorded_sha}))
    (pending / f"{'0' * 64}.json").write_text(json.dumps({"customer": "x", "tmp": str(outside / "deleted.txt"), "final": str(outside / "x.onnx"),
                                                          "sha256": "0" * 64, "mac": "00" * 32}))
    # an authentic marker (it takes the master key to write one) whose final path is not the ledger's
    master = Workspace(root).unlock(passphrase=PASSPHRASE, signing=False).master
    write_marker(Workspace(root), master, customer_id="acme", final=outside / "acme.onnx", sha256=recorded_sha)
    (outside / f".acme.onnx.{recorded_sha[:16]}.pending").write_bytes(b"not the model")
    victims[f".acme.onnx.{recorded_sha[:16]}.pending"] = b"not the model"
    return {n: (outside / n).read_bytes() for n in victims}


def _diagnosis(stderr: str) -> list[str]:
    """The error line and its hint; the lines before them (validation size, progress log) are information."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[first:]


def test_forged_pending_markers_touch_nothing_outside_and_warn_in_one_line(issued_tabular_copy, tmp_path, run_cli):
    outside = tmp_path / "outside"
    before_outside = _forge(issued_tabular_copy, outside)
    before_models = {p.name: p.read_bytes() for p in (issued_tabular_copy / "models/issued").iterdir()}
    batch = tmp_path / "customers.txt"
    batch.write_text("acme\n")
    # a batch of one already-issued customer: the issuer starts (and recovers), then skips it; nothing trains
    res = run_cli(["issue", "--customers", batch, "--workers", "1"], env=_env(issued_tabular_copy))
    assert res.returncode == 0 and "skipped acme: already issued" in res.stderr, res.stderr
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before_outside
    assert {p.name: p.read_bytes() for p in (issued_tabular_copy / "models/issued").iterdir()} == before_models
    warnings = [line for line in res.stderr.splitlines() if "pending marker" in line]
    assert len(warnings) == 3, res.stderr
    assert all(line.startswith("warning: ignored pending marker") and "nothing it names was touched" in line for line in warnings)
    reasons = " | ".join(warnings)
    assert "not a name tracer writes" in reasons and "MAC does not verify" in reasons and "not the one the ledger records" in reasons
    assert "Traceback" not in res.stderr
    pending = issued_tabular_copy / ".tracer/pending"
    assert not list(pending.glob("*.json")) and len(list(pending.glob("*.json.rejected"))) == 3  # not read again


def test_an_authentic_marker_with_a_foreign_temporary_path_is_refused(issued_tabular_copy, tmp_path):
    """Even with a valid MAC, recovery only acts on the temporary name it derives itself, beside a generated final name."""
    from tracer.embedding import recover_pending
    from tracer.embedding.landing import _mac
    from tracer.keys.derive import pending_marker_key

    ws = Workspace(issued_tabular_copy)
    master = ws.unlock(passphrase=PASSPHRASE, signing=False).master
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    sha = "2" * 64
    fields = {"customer": "hooli", "tmp": str(victim), "final": str(issued_tabular_copy / "models/issued/hooli.onnx"), "sha256": sha}
    pending = issued_tabular_copy / ".tracer/pending"
    pending.mkdir(parents=True, exist_ok=True)
    (pending / f"{sha}.json").write_text(json.dumps({**fields, "mac": _mac(pending_marker_key(master), fields)}))
    done = recover_pending(ws, master)
    assert victim.read_bytes() == b"keep me"
    assert len(done) == 1 and "temporary path is not the one tracer generates" in done[0]


# -- item 16: reservation before training, unambiguous names ----------------------------------------

def test_a_taken_file_name_fails_before_any_training(issued_tabular_copy, run_cli):
    """An old-scheme reissue file ``acme.2.onnx`` is on disk: customer ``acme.2`` is refused at once, not after its fine-tune."""
    _set_config(issued_tabular_copy, "embedding", steps=100000, attempts=1)  # a fine-tune would outlast the timeout
    (issued_tabular_copy / "models/issued/acme.2.onnx").write_bytes(b"an older copy")
    before = _snapshot_state(issued_tabular_copy)
    res = run_cli(["issue", "--customer", "acme.2"], env=_env(issued_tabular_copy), timeout=90)
    assert res.returncode == 3
    assert "acme.2.onnx already exists" in res.stderr and "Traceback" not in res.stderr
    assert _snapshot_state(issued_tabular_copy) == before
    assert not list((issued_tabular_copy / ".tracer/pending").glob("*.lock"))  # the reservation is released


def test_a_second_concurrent_issue_of_the_same_customer_fails_fast(issued_tabular_copy, run_cli):
    _set_config(issued_tabular_copy, "embedding", steps=100000)  # the first run is still fine-tuning when the second starts
    env = {**os.environ, **_env(issued_tabular_copy)}
    first = subprocess.Popen([sys.executable, "-m", "tracer", "issue", "--customer", "hooli"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_cpu_seconds(first, 8.0)
        assert first.poll() is None
        second = run_cli(["issue", "--customer", "hooli"], env=_env(issued_tabular_copy), timeout=90)
        assert second.returncode == 3
        lines = _diagnosis(second.stderr)
        assert "hooli is being issued by another tracer process" in lines[0] and len(lines) <= 2, second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 130
    with Workspace(issued_tabular_copy).ledger() as ledger:
        assert not ledger.issuances("hooli")


# -- items 11 and 12: a suspect that never ends, or answers strings ----------------------------------

def _onnx_model(path: Path, nodes, output_type: int, num_classes: int = 10, initializers=()) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "suspect", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
                              [helper.make_tensor_value_info("y", output_type, ["N", num_classes])], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _endless_loop_model(path: Path) -> Path:
    """Logits after a Loop of 10^12 iterations (it would run for days)."""
    from onnx import TensorProto as T
    from onnx import helper as h

    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), h.make_node("Add", ["acc_in", "one"], ["acc_out"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond_in", T.BOOL, []), h.make_tensor_value_info("acc_in", T.FLOAT, [1, 10])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []), h.make_tensor_value_info("acc_out", T.FLOAT, [1, 10])],
        [h.make_tensor("one", T.FLOAT, [], [1.0])])
    nodes = [
        h.make_node("Constant", [], ["trips"], value=h.make_tensor("trips", T.INT64, [], [10**12])),
        h.make_node("Constant", [], ["go"], value=h.make_tensor("go", T.BOOL, [], [True])),
        h.make_node("Constant", [], ["zero"], value=h.make_tensor("zero", T.FLOAT, [1, 10], [0.0] * 10)),
        h.make_node("Loop", ["trips", "go", "zero"], ["acc"], body=body),
        h.make_node("Flatten", ["x"], ["flat"]),
        h.make_node("ReduceSum", ["flat"], ["s"], keepdims=1),
        h.make_node("Add", ["acc", "s"], ["y"]),
    ]
    return _onnx_model(path, nodes, T.FLOAT)


def test_identify_stops_a_suspect_at_its_time_limit(fresh_workspace, tmp_path, run_cli):
    model = _endless_loop_model(tmp_path / "endless.onnx")
    res = run_cli(["identify", model, "--time-limit", "2"], env={"TRACER_WORKSPACE": str(fresh_workspace.root)}, timeout=90)
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "time limit of 2 s" in lines[0] and "endless.onnx" in lines[0] and len(lines) <= 2, res.stderr
    assert "--time-limit" in res.stderr  # the hint names the option


def test_the_time_limit_is_a_total_over_all_runs(tmp_path):
    """Many short runs add up: the budget is for the whole suspect, not per run."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper as h

    from tracer.config import TaskConfig
    from tracer.errors import ModelError
    from tracer.identify.suspect import SuspectModel

    nodes = [h.make_node("Flatten", ["x"], ["flat"]), h.make_node("MatMul", ["flat", "w"], ["y"])]
    w = h.make_tensor("w", T.FLOAT, [784, 10], np.zeros(7840, np.float32).tolist())
    path = _onnx_model(tmp_path / "ok.onnx", nodes, T.FLOAT, initializers=[w])
    task = TaskConfig(num_classes=10, input_shape=(1, 28, 28))
    suspect = SuspectModel(path, task, time_limit=3600)
    assert suspect.predict(np.zeros((4, 1, 28, 28), np.float32)).tolist() == [0, 0, 0, 0]
    suspect._time_left = 0.0  # as if the budget had been spent by earlier runs
    with pytest.raises(ModelError, match="time limit of 3600 s"):
        suspect.predict(np.zeros((1, 1, 28, 28), np.float32))


def test_a_model_with_string_outputs_is_a_model_error(fresh_workspace, tmp_path, run_cli):
    from onnx import TensorProto as T
    from onnx import helper as h

    nodes = [h.make_node("Flatten", ["x"], ["flat"]), h.make_node("Slice", ["flat", "starts", "ends", "axes"], ["ten"]),
             h.make_node("Cast", ["ten"], ["y"], to=T.STRING)]
    consts = [h.make_tensor("starts", T.INT64, [1], [0]), h.make_tensor("ends", T.INT64, [1], [10]), h.make_tensor("axes", T.INT64, [1], [1])]
    model = _onnx_model(tmp_path / "strings.onnx", nodes, T.STRING, initializers=consts)
    res = run_cli(["identify", model], env={"TRACER_WORKSPACE": str(fresh_workspace.root)})
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert "strings.onnx outputs tensor(string)" in lines[0] and len(lines) <= 2, res.stderr
    assert "internal error" not in res.stderr


# -- item 12: a write that fails (file-size limit, full disk) --------------------------------------

def _limit_file_size(limit: int):
    def set_limit() -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_file_too_large_while_landing_is_one_line_and_leaves_nothing(issued_tabular_copy):
    limit = 16384
    assert (issued_tabular_copy / "models/issued/acme.onnx").stat().st_size > limit  # a new copy cannot be written
    before = _snapshot_state(issued_tabular_copy)
    env = {**os.environ, **_env(issued_tabular_copy)}
    # keep the ledger open here, so its 32 KiB WAL index exists and the child need not grow it past the limit
    with Workspace(issued_tabular_copy).ledger():
        res = subprocess.run([sys.executable, "-m", "tracer", "issue", "--customer", "hooli"], env=env, capture_output=True,
                             text=True, timeout=600, preexec_fn=_limit_file_size(limit))
    assert res.returncode == 3, res.stderr
    lines = _diagnosis(res.stderr)
    assert "File too large" in lines[0] and "nothing was written or recorded" in lines[0] and len(lines) <= 2, res.stderr
    assert "internal error" not in res.stderr
    assert _snapshot_state(issued_tabular_copy) == before
    assert not [p for p in (issued_tabular_copy / "models/issued").iterdir() if p.name.startswith(".")]
    assert not list((issued_tabular_copy / ".tracer/pending").glob("*.json"))


def test_one_jsonable_with_two_documented_policies():
    import numpy as np

    from tracer._jsonable import jsonable

    value = {"a": [float("nan"), float("inf"), 2**60, np.float32(1.5), (1, 2)], 3: None}
    assert jsonable(value) == {"a": [None, None, 2**60, 1.5, [1, 2]], "3": None}
    assert jsonable(value, raw=True) == {"a": ["nan", "inf", str(2**60), 1.5, [1, 2]], "3": None}
    assert jsonable(object(), raw=True).startswith("<object")
    with pytest.raises(TypeError):
        jsonable(object())


def test_a_write_the_file_system_refuses_is_one_line_not_an_internal_error(issued_tabular_copy, tmp_path):
    """Any command, not only issue: an OSError nobody diagnosed (here EFBIG writing an export) is one line, exit 3."""
    limit = 4096
    out = tmp_path / "ledger.jsonl"
    env = {**os.environ, **_env(issued_tabular_copy)}
    with Workspace(issued_tabular_copy).ledger():  # the WAL index exists: the child need not create it past the limit
        res = subprocess.run([sys.executable, "-m", "tracer", "ledger", "export", "-o", str(out)], env=env, capture_output=True,
                             text=True, timeout=600, preexec_fn=_limit_file_size(limit))
    assert res.returncode == 3, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and "File too large" in lines[0] and len(lines) <= 2, res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing half-written
