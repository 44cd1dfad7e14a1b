"""`tracer identify`: names the right customer, never an innocent one, survives the usual attacks, rejects bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from tests.fixtures_issued import CUSTOMERS, PASSPHRASE
from tracer.data import load_dataset
from tracer.embedding.export import export_onnx
from tracer.examples import digits
from tracer.fingerprint.stats import binomial_tail
from tracer.identify import identify_model, identify_predictor, score_answers
from tracer.identify.scoring import IssuedCustomer
from tracer.training import train_classifier
from tracer.workspace import Workspace

JSON_KEYS = {"verdict", "customers", "alpha", "queries", "model_sha256", "candidates"}


def _env(root: Path) -> dict[str, str]:
    return {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root)}


@pytest.mark.parametrize("example", ["digits", "tabular"])
def test_each_issued_copy_is_named_as_its_customer(example, request, run_cli, tmp_path):
    root = request.getfixturevalue(f"issued_{example}")
    from tests.fixtures_issued import copy_workspace

    ws_root = copy_workspace(root, tmp_path / "ws")
    for cid, _ in CUSTOMERS:
        res = run_cli(["identify", ws_root / "models/issued" / f"{cid}.onnx", "--json"], env=_env(ws_root))
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert JSON_KEYS <= set(doc)
        assert doc["verdict"] == "match" and doc["customers"] == [cid]
        assert doc["alpha"] == 1e-6 and doc["queries"] > 0
        assert len(doc["candidates"]) >= 3 and doc["candidates"][0]["customer"] == cid
        assert doc["candidates"][0]["p_value"] < 1e-20
        assert [c["p_value"] for c in doc["candidates"]] == sorted(c["p_value"] for c in doc["candidates"])
        for c in doc["candidates"][1:]:
            assert c["p_value"] > 1e-6  # the innocent are not even close
    with Workspace(ws_root).ledger() as ledger:
        events = list(ledger.entries(kind="identification"))
    assert len(events) == 3 and {e.payload["customers"][0] for e in events} == {c for c, _ in CUSTOMERS}
    assert all(e.payload["suspect_sha256"] and e.payload["probe_sets"] for e in events)


def test_human_output_and_alpha_option(issued_digits_copy, run_cli):
    res = run_cli(["identify", issued_digits_copy / "models/issued/globex.onnx", "--alpha", "1e-9"], env=_env(issued_digits_copy))
    assert res.returncode == 0
    assert "MATCH" in res.stdout and "globex" in res.stdout and "1e-09" in res.stdout
    bad = run_cli(["identify", issued_digits_copy / "models/issued/globex.onnx", "--alpha", "2"], env=_env(issued_digits_copy))
    assert bad.returncode == 2


@pytest.fixture(scope="module")
def independent_digits_models():
    """Independently trained digits models: other seeds, two architectures, none derived from any copy."""
    data = digits.load_data()
    models = []
    for seed, make in ((1, digits.make_model), (2, digits.make_model), (3, digits.make_model_alt), (4, digits.make_model_alt)):
        torch.manual_seed(seed)
        m = make()
        train_classifier(m, data["x_train"], data["y_train"], epochs=15, lr=2e-3, batch_size=32, seed=seed)
        models.append(m)
    return models


def test_base_and_independent_models_are_never_named(issued_digits_copy, independent_digits_models, run_cli, tmp_path):
    ws = Workspace(issued_digits_copy)
    from tracer.embedding.basemodel import load_base_model  # the base is a state_dict: export it like any suspect

    paths = []
    for i, model in enumerate([load_base_model(ws.config), *independent_digits_models]):
        p = tmp_path / f"independent-{i}.onnx"
        p.write_bytes(export_onnx(model, ws.config.task))
        paths.append(p)
    for p in paths:
        res = run_cli(["identify", p, "--json"], env=_env(issued_digits_copy))
        assert res.returncode == 1, res.stderr
        doc = json.loads(res.stdout)
        assert doc["verdict"] == "no_match" and doc["customers"] == []
        assert min(c["p_value"] for c in doc["candidates"]) > 1e-4


def test_null_p_values_are_uniform_or_conservative():
    """Simulated null: answers independent of the codewords. P[p <= u] must not exceed u."""
    rng = np.random.default_rng(12345)
    master = bytes(range(32))
    from tracer.config import TaskConfig
    from tracer.fingerprint import make_probe_set

    task = TaskConfig(num_classes=10, input_shape=(1, 8, 8))
    ps = make_probe_set(master, "ps1", task, 64)
    customers = [IssuedCustomer(f"c{i}", f"c{i}", ("ps1",)) for i in range(400)]
    pvals = []
    named = 0
    for _ in range(10):
        skewed = rng.choice(10, size=64, p=[0.5] + [0.5 / 9] * 9)  # a model with a strong class bias
        r = score_answers(master, customers, [ps], {"ps1": skewed}, num_classes=10, alpha=0.05, queries=64, model_sha256=None)
        named += len(r.customers)
        pvals.extend(c.p_value for c in r.candidates)
    pvals = np.array(pvals)
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(pvals <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(pvals)) + 1e-9
    assert named <= 2  # FWER 0.05 per suspect, 10 suspects


def test_exact_tail_matches_definition():
    from math import comb

    for m in (0, 1, 7, 20, 64):
        exact = sum(comb(64, k) * 0.1**k * 0.9 ** (64 - k) for k in range(m, 65))
        assert binomial_tail(m, 64, 10) == pytest.approx(exact, rel=1e-9)


# ----------------------------------------------------------------------------------- attacks


@pytest.fixture(scope="module")
def acme_torch(issued_digits):
    from tracer.evaluate.models import onnx_to_torch

    ws = Workspace(issued_digits)
    data = load_dataset(ws.config)
    onnx_bytes = (issued_digits / "models/issued/acme.onnx").read_bytes()
    return onnx_to_torch(onnx_bytes, digits.make_model, data.x_val[:64])


def _identify_torch(root: Path, model) -> tuple[str, list[str], float]:
    from tracer.training import predict

    ws = Workspace(root)
    r = identify_predictor(ws, ws.unlock(passphrase=PASSPHRASE, signing=False), lambda x: predict(model, x))
    return r.verdict, r.customers, r.candidates[0].p_value


def test_survives_fine_tuning_on_a_third_of_the_data(issued_digits, acme_torch):
    from tracer.evaluate.attacks import finetune

    data = digits.load_data()
    attacked = finetune(acme_torch, data["x_attack"], data["y_attack"], epochs=5, lr=1e-3)
    verdict, named, p = _identify_torch(issued_digits, attacked)
    assert verdict == "match" and named == ["acme"], p


def test_survives_half_magnitude_pruning(issued_digits, acme_torch):
    from tracer.evaluate.attacks import magnitude_prune

    pruned, _ = magnitude_prune(acme_torch, 0.5)
    verdict, named, _ = _identify_torch(issued_digits, pruned)
    assert verdict == "match" and named == ["acme"]


@pytest.mark.parametrize("attack", ["onnx_float16", "onnx_int8_dynamic"])
def test_survives_float16_and_int8_files(attack, issued_digits_copy, run_cli, tmp_path):
    from tracer.evaluate import attacks

    src = (issued_digits_copy / "models/issued/initech.onnx").read_bytes()
    path = tmp_path / f"initech-{attack}.onnx"
    path.write_bytes(getattr(attacks, attack)(src))
    res = run_cli(["identify", path, "--json"], env=_env(issued_digits_copy))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["customers"] == ["initech"]


def test_weight_average_of_two_copies_names_both(issued_digits, acme_torch):
    from tracer.evaluate.attacks import average_weights
    from tracer.evaluate.models import onnx_to_torch

    data = load_dataset(Workspace(issued_digits).config)
    globex = onnx_to_torch((issued_digits / "models/issued/globex.onnx").read_bytes(), digits.make_model, data.x_val[:64])
    verdict, named, _ = _identify_torch(issued_digits, average_weights([acme_torch, globex]))
    assert verdict == "match" and sorted(named) == ["acme", "globex"]  # both colluders, and never an outsider


# ----------------------------------------------------------------------------------- bad input


def _graph_model(inputs, outputs, nodes, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _bad_files(tmp_path: Path, task) -> dict[str, tuple[Path, str]]:
    files: dict[str, tuple[Path, str]] = {}
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    files["empty"] = (empty, "empty")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    files["not onnx"] = (text, "not a loadable ONNX model")
    good = export_onnx(digits.make_model(), task)
    trunc = tmp_path / "truncated.onnx"
    trunc.write_bytes(good[: len(good) // 2])
    files["corrupt"] = (trunc, "not a loadable ONNX model")
    wrong = tmp_path / "wrong-shape.onnx"
    w = helper.make_tensor_value_info
    m = _graph_model([w("x", TensorProto.FLOAT, ["N", 1, 4, 4])], [w("y", TensorProto.FLOAT, ["N", 16])],
                     [helper.make_node("Flatten", ["x"], ["y"])])
    wrong.write_bytes(m.SerializeToString())
    files["wrong input shape"] = (wrong, "input shape")
    two = tmp_path / "two-inputs.onnx"
    m = _graph_model([w("a", TensorProto.FLOAT, ["N", 1, 8, 8]), w("b", TensorProto.FLOAT, ["N", 1, 8, 8])],
                     [w("y", TensorProto.FLOAT, ["N", 1, 8, 8])], [helper.make_node("Add", ["a", "b"], ["y"])])
    two.write_bytes(m.SerializeToString())
    files["several inputs"] = (two, "2 inputs")
    vec = tmp_path / "not-a-class-vector.onnx"
    m = _graph_model([w("x", TensorProto.FLOAT, ["N", 1, 8, 8])], [w("y", TensorProto.FLOAT, ["N", 64])],
                     [helper.make_node("Flatten", ["x"], ["y"])])
    vec.write_bytes(m.SerializeToString())
    files["output not a class vector"] = (vec, "not a vector of 10 class scores")
    files["missing"] = (tmp_path / "nope.onnx", "does not exist")
    return files


def test_bad_model_files_give_one_line_errors_and_exit_3(issued_digits_copy, run_cli, tmp_path):
    ws = Workspace(issued_digits_copy)
    for case, (path, needle) in _bad_files(tmp_path, ws.config.task).items():
        res = run_cli(["identify", path, "--json"], env=_env(issued_digits_copy))
        assert res.returncode == 3, (case, res.stderr)
        doc = json.loads(res.stdout)  # --json: the one error document, never an empty stdout
        assert doc["exit_code"] == 3 and needle in doc["error"], (case, doc)
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith("error:") and needle in lines[0], (case, res.stderr)
        assert "Traceback" not in res.stderr
    with ws.ledger() as ledger:
        assert not list(ledger.entries(kind="identification"))  # nothing recorded for a bad file


def test_accepts_probabilities_class_indices_and_fixed_batch_one(issued_digits, tmp_path):
    """Wrap an issued copy's graph with Softmax / ArgMax, and re-export with a batch fixed to 1."""
    ws = Workspace(issued_digits)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    src = onnx.load(str(issued_digits / "models/issued/acme.onnx"))
    out_name = src.graph.output[0].name
    for op, elem, shape in (("Softmax", TensorProto.FLOAT, ["batch", 10]), ("ArgMax", TensorProto.INT64, ["batch"])):
        m = onnx.load(str(issued_digits / "models/issued/acme.onnx"))
        attrs = {"axis": 1, "keepdims": 0} if op == "ArgMax" else {"axis": 1}
        m.graph.node.append(helper.make_node(op, [out_name], ["final"], **attrs))
        del m.graph.output[:]
        m.graph.output.append(helper.make_tensor_value_info("final", elem, shape))
        p = tmp_path / f"acme-{op}.onnx"
        onnx.save(m, str(p))
        r = identify_model(ws, keyring, p, record=False)
        assert r.customers == ["acme"], op
    fixed = onnx.load(str(issued_digits / "models/issued/acme.onnx"))
    for vi in (*fixed.graph.input, *fixed.graph.output):
        vi.type.tensor_type.shape.dim[0].dim_value = 1
    p = tmp_path / "acme-batch1.onnx"
    onnx.save(fixed, str(p))
    r = identify_model(ws, keyring, p, record=False)
    assert r.customers == ["acme"] and r.queries > 0
