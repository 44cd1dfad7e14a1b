"""`tracer evaluate`: the attack primitives, the suite, the false-accusation study and the command.

Fast by design: the attack primitives run on tiny models, and the suite runs a
reduced attack list on the tabular example's issued workspace (the full suite,
on both examples, is bench/bench_evaluate.py).
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

from tests.fixtures_issued import PASSPHRASE, issued_digits, issued_tabular, issued_tabular_copy, passphrase_env
from tracer.config import TaskConfig
from tracer.evaluate import attacks as A
from tracer.evaluate.attacks import ATTACKS, GROUPS, resolve_attacks

IMAGE_TASK = TaskConfig(num_classes=10, input_shape=(1, 8, 8), domain="image")
TABULAR_TASK = TaskConfig(num_classes=3, input_shape=(5,), domain="tabular", low=(-4.0,), high=(4.0,))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _toy_data(n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)


# --------------------------------------------------------------------------- attack names


def test_attack_names_groups_and_validation():
    assert resolve_attacks(None) == list(ATTACKS)
    assert resolve_attacks("all") == list(ATTACKS)
    assert resolve_attacks("float16, prune-50,float16") == ["float16", "prune-50"]
    assert resolve_attacks("pruning") == GROUPS["pruning"] == ["prune-30", "prune-50", "prune-70", "fine-prune"]
    for group in ("fine-tuning", "pruning", "quantization", "input", "extraction", "collusion"):
        assert GROUPS[group]
    with pytest.raises(ValueError, match="unknown attack 'bogus'"):
        resolve_attacks("float16,bogus")


# --------------------------------------------------------------------------- primitives on tiny models


def test_pruning_quantization_noise_and_averaging():
    model = _mlp()
    pruned, masks = A.magnitude_prune(model, 0.5)
    for name, p in pruned.named_parameters():
        if p.dim() >= 2:
            assert abs(float((p == 0).float().mean()) - 0.5) < 0.05
            assert torch.equal(masks[name] == 0, p == 0)
    assert float((model[0].weight == 0).float().mean()) == 0  # the original is untouched

    q = A.quantize_weights(model, bits=5)
    for p in (q[0].weight, q[2].weight):
        assert len(torch.unique(p)) <= 31
    assert torch.equal(q[0].bias, model[0].bias)

    noisy = A.weight_noise(model, 0.1, seed=1)
    assert not torch.equal(noisy[0].weight, model[0].weight)
    assert torch.equal(A.weight_noise(model, 0.1, seed=1)[0].weight, noisy[0].weight)  # deterministic

    other = _mlp(1)
    avg = A.average_weights([model, other])
    assert torch.allclose(avg[0].weight, (model[0].weight + other[0].weight) / 2)


def test_finetuning_variants_touch_the_right_layers():
    model = _mlp()
    x, y = _toy_data()
    last = A.finetune(model, x, y, epochs=1, lr=1e-2, last_only=True)
    assert torch.equal(last[0].weight, model[0].weight) and not torch.equal(last[2].weight, model[2].weight)
    full = A.finetune(model, x, y, epochs=1, lr=1e-2)
    assert not torch.equal(full[0].weight, model[0].weight)
    re = A.retrain_head(model, x, y, head_epochs=1, epochs=1)
    assert not torch.equal(re[2].weight, model[2].weight)
    fp, frac = A.fine_prune(model, x, y, epochs=1)
    assert 0 <= frac <= 0.9
    dead = (fp[2].weight == 0).all(0)
    assert int(dead.sum()) == int(round(frac * 16))


def test_input_transformations_stay_in_the_domain():
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 256, (4, 1, 8, 8)) / 255.0).astype(np.float32)
    for out in (A.input_jpeg(img, IMAGE_TASK, 50), A.input_blur(img, IMAGE_TASK, 0.75), A.input_noise(img, IMAGE_TASK, 0.1),
                A.input_quantize(img, IMAGE_TASK, 8)):
        assert out.shape == img.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.allclose(A.input_quantize(img, IMAGE_TASK, 8), img, atol=1e-6)  # 8-bit probes survive 8-bit squeezing
    assert np.abs(A.input_jpeg(img, IMAGE_TASK, 10) - img).mean() > 0.01
    tab = rng.uniform(-4, 4, (6, 5)).astype(np.float32)
    assert np.abs(A.input_quantize(tab, TABULAR_TASK, 8) - tab).max() <= 8 / 255 / 2 + 1e-6
    with pytest.raises(ValueError):
        A.input_jpeg(tab, TABULAR_TASK)
    smooth = A.randomized_smoothing(A.torch_predictor(_mlp()), TABULAR_TASK, 0.05, samples=4)(tab)
    assert smooth.shape == (6, 3) and np.allclose(smooth.sum(1), 1.0)


def test_onnx_quantization_and_float16_keep_the_model():
    from tracer.embedding.export import export_onnx

    model = _mlp()
    data = export_onnx(model, TABULAR_TASK)
    x, _ = _toy_data(64)
    want = A.torch_predictor(model)(x).argmax(1)
    for attacked in (A.onnx_float16(data), A.onnx_int8_dynamic(data), A.onnx_int8_static(data, x)):
        got = A.onnx_predictor(attacked)(x).argmax(1)
        assert np.mean(got == want) > 0.9


# --------------------------------------------------------------------------- the suite on an issued workspace


def _open(root):
    from tracer.workspace import Workspace

    ws = Workspace(root)
    return ws, ws.unlock(passphrase=PASSPHRASE)


def test_suite_names_the_customer_after_benign_attacks_and_nobody_else(issued_tabular):
    from tracer.evaluate import run_suite

    ws, keyring = _open(issued_tabular)
    with ws.ledger() as ledger:
        before = ledger.count()
    suite = run_suite(ws, keyring, customer="globex",
                      attacks="int8-dynamic,int8-static,float16,prune-30,prune-50,average-2,ensemble-3")
    with ws.ledger() as ledger:
        assert ledger.count() == before  # the library call records nothing (the command does)
    assert suite.customer == "globex" and suite.reference.verdict == "survives"
    rows = {a.name: a for a in suite.attacks}
    for name in ("int8-dynamic", "int8-static", "float16", "prune-30"):
        a = rows[name]
        assert a.valid and a.named == ["globex"] and a.verdict == "survives", a
        assert a.agreement > 0.8 and a.p_value < 1e-20
    # prune-50 costs 0-3.5 points on 120 fresh tabular copies, but a CI build's copy lost more than the 5-point budget:
    # then it is no valid attack, whatever identify says; either way nobody else may be named
    a = rows["prune-50"]
    assert a.named_others == [] and a.verdict == ("survives" if a.valid else "not a valid attack"), a
    assert a.valid == (a.accuracy_drop <= 0.05 + 1e-12)
    if a.valid:
        assert a.named == ["globex"] and a.p_value < 1e-20, a
    for name, k in (("average-2", 2), ("ensemble-3", 3)):
        a = rows[name]
        assert a.right[0] == "globex" and len(a.right) == k and set(a.right) <= {"acme", "globex", "initech"}
        assert a.named_right == k and not a.named_others and a.verdict == "survives"
    doc = suite.to_json()
    json.dumps(doc)
    assert doc["summary"]["valid"] == 6 + rows["prune-50"].valid and doc["summary"]["false_accusations"] == []


def test_margin_embedding_outlives_hot_finetuning(issued_digits):
    """Regression guard for the margin hinge: before it, Adam at 1e-2 on all layers left 24 of 128 probes (erased).

    With it, 24 of 24 digits copies in 8 fresh workspaces kept 61-99 (bench/results/evaluate_digits.txt).
    """
    from tracer.evaluate import run_suite

    ws, keyring = _open(issued_digits)
    suite = run_suite(ws, keyring, customer="initech", attacks="ft-all-1e-2")
    (a,) = suite.attacks
    assert a.valid and a.named == ["initech"] and a.verdict == "survives", a
    assert a.agreement > 0.35


def test_attack_costing_more_than_five_points_is_not_valid(issued_tabular):
    from tracer.data import load_dataset
    from tracer.evaluate.suite import AttackResult, _score

    ws, keyring = _open(issued_tabular)
    data = load_dataset(ws.config)
    const = lambda x: np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(x), 1))  # always class 0
    row = _score(ws, keyring, AttackResult("const", "test", "", right=["acme"]), const, data.x_val, data.y_val, 0.98, 0.05, None)
    assert not row.valid and row.verdict == "not a valid attack" and row.named == []
    assert row.accuracy_drop > 0.05


def test_false_accusation_study_never_names_an_independent_model(issued_tabular):
    from tracer.evaluate import false_accusation_study

    ws, keyring = _open(issued_tabular)
    fa = false_accusation_study(ws, keyring, models=3, max_steps=150)
    doc = fa.to_json()
    assert doc["models"] == 4 and doc["named"] == 0
    assert {"model.factory", "make_model_alt", "base model"} <= {m.architecture for m in fa.models}
    assert {"vendor", "attacker"} <= {m.data for m in fa.models}
    assert all(m.smallest_p > 1e-6 and m.clean_accuracy > 0.85 for m in fa.models)
    assert doc["smallest_p"] == min(doc["smallest_p_values"])


# --------------------------------------------------------------------------- the command


def test_cli_evaluate_json_report_and_ledger(issued_tabular_copy, passphrase_env, cli, tmp_path):
    report = tmp_path / "eval.html"
    res = cli(["--workspace", issued_tabular_copy, "evaluate", "--customer", "initech", "--attacks", "float16,prune-30",
               "--independent", "1", "--json", "--report", report])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    for key in ("customer", "model_sha256", "copy_accuracy", "alpha", "issued_customers", "attacker_data", "accuracy_budget",
                "reference", "attacks", "summary", "false_accusation", "false_accusations", "verdict", "ledger_entry"):
        assert key in doc, key
    assert doc["customer"] == "initech" and doc["false_accusations"] == 0
    assert [a["name"] for a in doc["attacks"]] == ["float16", "prune-30"]  # prune-30: 0-1.75 points on 120 copies, always valid
    for a in doc["attacks"]:
        for key in ("clean_accuracy", "accuracy_drop", "valid", "matches", "trials", "agreement", "p_value", "log10_p",
                    "named", "named_right", "named_others", "verdict", "params"):
            assert key in a, key
        assert a["named"] == ["initech"] and a["verdict"] == "survives"
    assert doc["false_accusation"]["models"] == 2 and doc["false_accusation"]["named"] == 0
    html = report.read_text()
    assert "<svg" in html and "initech" in html and "<script" not in html
    db = sqlite3.connect(issued_tabular_copy / "tracer.db")
    kinds = [r[0] for r in db.execute("SELECT kind FROM entries ORDER BY seq")]
    assert kinds[-1] == "evaluation"


def test_cli_evaluate_table_output(issued_tabular_copy, passphrase_env, cli):
    res = cli(["--workspace", issued_tabular_copy, "evaluate", "--attacks", "5bit", "--independent", "0"])
    assert res.exit_code == 0, res.output
    assert "5bit" in res.stdout and "survives" in res.stdout and "acme" in res.stdout


@pytest.mark.parametrize("args, code, text", [
    (["--attacks", "float16,bogus"], 2, "unknown attack 'bogus'"),
    (["--attacks", ""], 2, "no attack given"),
    (["--independent", "-1"], 2, "--independent"),
    (["--report", "out.pdf"], 2, ".html"),
    (["--customer", "nobody", "--attacks", "float16", "--independent", "0"], 3, "nobody has no issued copy"),
])
def test_cli_evaluate_bad_arguments(issued_tabular_copy, passphrase_env, cli, args, code, text):
    res = cli(["--workspace", issued_tabular_copy, "evaluate", *args])
    assert res.exit_code == code
    assert text in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error:") and len(res.stderr.strip().splitlines()) <= 2  # one line, plus a hint


# --------------------------------------------------------------------------- the page


def test_evaluation_page_shares_the_report_shell_and_says_what_decided():
    import html as htmllib
    import re

    from tests.test_report_browser import sample_evaluation
    from tracer.evaluate.html import render_html
    from tracer.evaluate.tables import false_accusation_table
    from tracer.report._page import CSP

    ev = sample_evaluation()
    page = render_html(ev)
    assert f'content="{CSP}"' in page and "default-src 'none'" in page and "<script" not in page.lower()
    text = re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(style|svg)\b.*?</\1>", " ", page, flags=re.S))))
    assert "Holm's step-down over 3 issued customers" in text and "Bonferroni" not in page
    assert "3.3 × 10⁻⁷" in text and "1.3 × 10⁻¹³⁰" in text and not re.search(r"\d\.\de-\d", text)  # one p-value format, as on the identify page
    assert "naming needs" not in text and "+</text>" not in page  # no clipped bars labelled "129.9+"
    # 9 of 9 below 0.05 against at most 1.35 on average: explained, with the customer they all lean to
    assert "9 of 9 models had some customer with a p-value below 0.05" in text and "at most 1.35 of 9" in text
    assert "share one codeword's luck" in text and "8 of the 9 models were closest to the same customer, globex" in text
    doc = ev.false_accusation.to_json()
    assert doc["closest_customer_counts"] == {"globex": 8, "acme": 1} and doc["customers_below_0.05"] == ["acme", "globex"]
    assert "closest customers globex 8, acme 1" in false_accusation_table(ev.false_accusation)
