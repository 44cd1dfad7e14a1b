"""The rank code end to end on the issued digits workspace: recorded, read by identify, survives distillation.

Issue 12's item: after soft-label distillation into a different architecture, `tracer identify`
names the right customer at alpha 1e-6. The keys do not transfer (agreement near chance); the rank
code does, because it is the copy's wrong-class mass, which is what distillation copies.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.fixtures_issued import CUSTOMERS, PASSPHRASE, copy_workspace
from tracer.data import load_dataset
from tracer.embedding import Issuer
from tracer.embedding.export import export_onnx
from tracer.evaluate.attacks import distill, onnx_predictor, torch_predictor
from tracer.examples import digits
from tracer.fingerprint import rankcode
from tracer.identify import identify_model, identify_predictor
from tracer.identify.scoring import issued_customers
from tracer.training import train_classifier
from tracer.workspace import Workspace

IDS = [cid for cid, _ in CUSTOMERS]


@pytest.fixture(scope="module")
def digits_ws(issued_digits):
    ws = Workspace(issued_digits)
    return ws, ws.unlock(passphrase=PASSPHRASE)


def test_every_issuance_records_its_rank_code(digits_ws):
    ws, keyring = digits_ws
    with ws.ledger() as ledger:
        records = {e.payload["customer_id"]: e.payload for e in ledger.issuances()}
        carriers = issued_customers(ledger)
        assert {cid for cid, coded in zip(carriers.ids, carriers.members(rankcode.RANK_CODE_STYLE)) if coded} == set(IDS)
    for cid in IDS:
        assert records[cid]["rank_code"] == {"style": "rank-code/v1", "eps": ws.config.embedding.rank_code, "decay": rankcode.DECAY,
                                             "commitment": rankcode.rank_commitment(keyring.master, cid, 10)}
        assert records[cid]["parameters"]["embedding"]["rank_code"] == ws.config.embedding.rank_code


@pytest.mark.parametrize("cid", IDS)
def test_identify_reads_the_rank_code_of_each_copy(digits_ws, cid):
    ws, keyring = digits_ws
    r = identify_model(ws, keyring, ws.root / f"models/issued/{cid}.onnx", record=False)
    assert r.customers == [cid]
    doc = r.to_json()
    assert doc["rank_code"]["read"] and doc["rank_code"]["pairs"] == 360 and doc["rank_code"]["carriers"] == 3
    assert r.queries == 128 + doc["rank_code"]["queries"]
    by = {c.customer: c for c in r.candidates}
    assert by[cid].rank_log10_p < -8  # the copy's own code
    assert all(by[o].rank_log10_p > -4 for o in IDS if o != cid)  # the other customers' codes: chance
    for c in by.values():  # the decision's p-value is the Bonferroni combination of the two channels
        assert c.log10_p == pytest.approx(min(0.0, min(c.key_log10_p, c.rank_log10_p) + math.log10(2)), abs=2e-4)
    top = doc["candidates"][0]
    assert {"key_log10_p", "rank_concordant", "rank_pairs", "rank_log10_p"} <= set(top)


def test_a_suspect_without_scores_is_read_on_the_keys_alone(digits_ws, tmp_path):
    ws, keyring = digits_ws
    m = onnx.load(str(ws.root / "models/issued/acme.onnx"))
    m.graph.node.append(helper.make_node("ArgMax", [m.graph.output[0].name], ["final"], axis=1, keepdims=0))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("final", TensorProto.INT64, ["batch"]))
    onnx.save(m, str(tmp_path / "argmax.onnx"))
    r = identify_model(ws, keyring, tmp_path / "argmax.onnx", record=False)
    assert r.customers == ["acme"] and r.queries == 128
    assert r.extra["rank_code"] == {"read": False, "style": "rank-code/v1", "reason": "the suspect returns class indices, not scores"}
    assert all(c.rank_pairs is None and c.key_log10_p is None for c in r.candidates)
    assert "rank_concordant" not in r.to_json()["candidates"][0]


@pytest.fixture(scope="module")
def attack_data(issued_digits):
    d = load_dataset(Workspace(issued_digits).config)
    return d.x_attack, d.y_attack


def test_soft_label_distillation_into_another_architecture_is_named(digits_ws, attack_data, tmp_path):
    """The student, exported to ONNX as a leaker would ship it, is identified as `tracer identify` does."""
    ws, keyring = digits_ws
    teacher = onnx_predictor((ws.root / "models/issued/globex.onnx").read_bytes())
    student = distill(teacher, digits.make_model_alt(), attack_data[0], epochs=60, temperature=1.0, seed=0)
    (tmp_path / "student.onnx").write_bytes(export_onnx(student, ws.config.task))
    r = identify_model(ws, keyring, tmp_path / "student.onnx", record=False)
    by = {c.customer: c for c in r.candidates}
    assert by["globex"].key_log10_p > -6  # the keys did not transfer...
    assert r.customers == ["globex"]  # ...the rank code did
    assert by["globex"].rank_log10_p < -7


def test_independent_model_and_the_base_are_not_named(digits_ws, attack_data):
    ws, keyring = digits_ws
    from tracer.embedding.basemodel import load_base_model

    x, y = attack_data
    for model in (train_classifier(digits.make_model_alt(), x, y, epochs=40, lr=1e-3, batch_size=32, seed=5), load_base_model(ws.config)):
        pred = torch_predictor(model)
        r = identify_predictor(ws, keyring, lambda x, pred=pred: pred(x).argmax(1), scores=pred)
        assert r.verdict == "no_match" and r.extra["rank_code"]["read"]
        assert min(c.rank_log10_p for c in r.candidates) > -4


def test_copies_issued_without_a_rank_code_are_not_read_on_it(issued_digits, tmp_path):
    """An issuance record without ``rank_code`` (an older copy, or rank_code = 0) keeps the keys-only p-value."""
    root = copy_workspace(issued_digits, tmp_path / "ws")
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    with ws.ledger() as ledger:
        legacy = {k: v for k, v in next(iter(ledger.issuances())).payload.items() if k != "rank_code"}
        ledger.append("issuance", {**legacy, "customer_id": "legacy", "display_name": "Legacy", "new_customer": True,
                                   "model_sha256": hashlib.sha256(b"legacy").hexdigest(), "model_path": "paper/legacy.onnx"},
                      key=keyring.signing_key)
    r = identify_model(ws, keyring, root / "models/issued/acme.onnx", record=False)
    by = {c.customer: c for c in r.candidates}
    assert r.customers == ["acme"] and r.extra["rank_code"]["carriers"] == 3
    assert by["legacy"].rank_pairs is None and by["legacy"].key_log10_p is None


def test_rank_code_off_records_nothing(issued_digits, tmp_path):
    root = copy_workspace(issued_digits, tmp_path / "ws")
    toml = root / "tracer.toml"
    toml.write_text(toml.read_text().replace("[embedding]\n", "[embedding]\nrank_code = 0.0\n"))
    ws = Workspace(root)
    issuer = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    assert not issuer.rank_coded and issuer.rank_mass_for("acme") is None
    assert Issuer(Workspace(issued_digits), ws.unlock(passphrase=PASSPHRASE)).rank_mass_for("acme").shape == (10, 10)


def test_class_profiles_of_an_issued_copy_follow_its_code(digits_ws):
    """The copy's mean wrong-class scores on validation inputs order most pairs as its customer's code."""
    ws, keyring = digits_ws
    d = load_dataset(ws.config)
    logits = onnx_predictor((ws.root / "models/issued/acme.onnx").read_bytes())(d.x_val)
    profile, read = rankcode.class_profiles(np.asarray(logits, dtype=np.float64), d.y_val, 10)
    own = rankcode.concordant_pairs(profile, read, rankcode.rank_matrix(keyring.master, ["acme"], 10))[0]
    assert own > 0.75 * 360


def test_the_master_check_rederives_the_rank_commitment(issued_digits, tmp_path):
    """A record whose rank-code commitment does not re-derive from the master secret is refused like a wrong key."""
    from tracer.errors import KeyMismatch
    from tracer.workspace import verify_master_matches

    root = copy_workspace(issued_digits, tmp_path / "ws")
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    with ws.ledger() as ledger:
        assert verify_master_matches(ledger, keyring) == 3
        p = next(iter(ledger.issuances())).payload
        forged = {**p["rank_code"], "commitment": "0" * 64}
        ledger.append("issuance", {**p, "new_customer": False, "issuance_number": 2, "rank_code": forged,
                                   "model_sha256": hashlib.sha256(b"x").hexdigest(), "model_path": "paper/x.onnx"},
                      key=keyring.signing_key)
        with pytest.raises(KeyMismatch):
            verify_master_matches(ledger, keyring)


def test_the_customer_table_holds_the_rank_code_carriers(digits_ws, tmp_path):
    """The cached customer table and the ledger's own query agree on who carries a rank code; it is no key set."""
    ws, keyring = digits_ws
    with ws.ledger() as ledger:
        cached = issued_customers(ledger, master=keyring.master, cache_dir=tmp_path / "cache")
        direct = issued_customers(ledger)
    for table in (cached, direct):
        assert table.members(rankcode.RANK_CODE_STYLE).tolist() == [True, True, True]
        assert table.carried_sets() == ["ps1", "ps2"]
        assert [c.probe_sets for c in table] == [("ps1", "ps2")] * 3
    assert cached == direct
