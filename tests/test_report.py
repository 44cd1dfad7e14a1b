"""`tracer identify --report`: the self-contained HTML report and the signed evidence beside it,
and `tracer evidence verify` with nothing but the exported public key.

Real parts throughout: a copy of the issued digits workspace (real keys, real ledger, real
issued ONNX copies), the CLI in-process (CliRunner) and as a subprocess without any workspace.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html as htmllib
import json
import re
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from tracer.identify.result import Candidate, IdentificationResult
from tracer.keys.keyring import Keyring, load_public_key, public_pem
from tracer.ledger import Ledger
from tracer.ledger.entries import canonical, sign_blob
from tracer.report import check_evidence, verify_evidence, write_report
from tracer.report.evidence import EVIDENCE_DOMAIN
from tracer.report.html import ReportData, render_html
from tracer.workspace import Workspace

from .fixtures_issued import PASSPHRASE, issued_digits


def _invoke(args, **env):
    from tracer.cli import app

    full_env = {"TRACER_PASSPHRASE": None, "TRACER_WORKSPACE": None, **env}
    return CliRunner().invoke(app, [str(a) for a in args], env=full_env, catch_exceptions=False)


def _text(page: str) -> str:
    """Visible text of an HTML page: no tags, entities decoded, whitespace collapsed."""
    page = re.sub(r"<(style|svg)\b.*?</\1>", " ", page, flags=re.S)
    page = re.sub(r"</?(p|div|h\d|tr|td|th|li|ul|table|section|figure|figcaption|pre|br|main|footer)\b[^>]*>", " ", page)
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", "", page))).strip()


def _assert_self_contained(page: str) -> None:
    low = page.lower()
    assert "<script" not in low
    assert not re.search(r"""\b(src|href|xlink:href|action|srcset|poster|data)\s*=\s*["']?\s*(https?:|//|file:)""", low), "loads a resource"
    assert "http://" not in low and "https://" not in low
    assert "@import" not in low and "url(" not in low, "CSS that loads a resource"
    assert "<link" not in low and "<iframe" not in low and "<object" not in low and "<embed" not in low and "<img" not in low
    assert "content-security-policy" in low and "default-src 'none'" in low


@pytest.fixture(scope="module")
def reported(issued_digits, tmp_path_factory):
    """One `tracer identify acme.onnx --report out/report.html --json` on a private copy of the workspace."""
    base = tmp_path_factory.mktemp("report")
    ws = Path(shutil.copytree(issued_digits, base / "ws"))
    suspect = base / "suspect" / "leaked-model.onnx"
    suspect.parent.mkdir()
    shutil.copyfile(ws / "models" / "issued" / "acme.onnx", suspect)
    html_path = base / "out" / "report.html"
    r = _invoke(["-w", ws, "identify", suspect, "--report", html_path, "--json"], TRACER_PASSPHRASE=PASSPHRASE)
    pem = _invoke(["-w", ws, "keys", "export-public"])
    assert pem.exit_code == 0, pem.output
    key_file = base / "key.pem"
    key_file.write_text(pem.stdout)
    return {"ws": ws, "suspect": suspect, "html": html_path, "evidence": base / "out" / "report.evidence.json",
            "run": r, "key_file": key_file, "base": base}


@pytest.fixture(scope="module")
def evidence_doc(reported) -> dict:
    return json.loads(reported["evidence"].read_text())


# -- the report of a match -------------------------------------------------------------------------


def test_identify_report_writes_both_files(reported):
    r = reported["run"]
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["verdict"] == "match"  # --json stays one document on stdout
    assert str(reported["html"]) in r.stderr and str(reported["evidence"]) in r.stderr
    assert sorted(p.name for p in reported["html"].parent.iterdir()) == ["report.evidence.json", "report.html"]  # no temporaries


def test_report_is_self_contained_and_states_the_verdict(reported):
    page = reported["html"].read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert page.count("<svg") >= 2 and "<rect" in page and "<circle" in page
    sha = hashlib.sha256(reported["suspect"].read_bytes()).hexdigest()
    text = _text(page)
    with Ledger(reported["ws"] / "tracer.db") as ledger:
        (issuance,) = ledger.issuances("acme")
    from datetime import datetime

    day = datetime.fromisoformat(issuance.time.replace("Z", "+00:00")).strftime("%-d %B %Y")
    assert f"The suspect model file (sha256 {sha}) was derived from the copy issued to ACME Corp. (customer acme) on {day}." in text
    assert "byte-for-byte identical to the issued copy" in text
    # the matching issuance record: entry number, hash, the issued model's sha256, a valid signature
    assert f"Ledger entry number {issuance.seq}" in text and issuance.hash in text
    assert issuance.payload["model_sha256"] in text
    assert "✔ valid" in text and "INVALID" not in text
    assert "verified intact" in text
    # method in plain words, and how to verify independently
    assert "the chance that tracer names any innocent customer is at most alpha" in text
    assert "null hypothesis" in text and "Holm" in text and "cannot detect" in text
    assert "Bonferroni's correction" not in text and "e-value" not in text  # a model file is decided by the fixed-size Holm test
    # the copy's scores were read on the rank code too: its evidence, and how the two are combined, in words
    assert "A second fingerprint, in the suspect's scores" in text and "twice the smaller one" in text
    assert re.search(r"rank the wrong answers as that customer's secret ranking does on \d+ of 360 pairs", text)
    assert "Decision rule: holm-binomial" in text and "Technical appendix" in text
    assert "tracer evidence verify report.evidence.json --public-key key.pem" in text
    # every customer is in the chart, the named one highlighted and labelled
    for name in ("ACME Corp.", "Globex Corporation", "Initech"):
        assert name in page
    assert "ACME Corp.: 128 of 128" in page or re.search(r"ACME Corp\.: \d+ of 128", page)


def test_report_and_evidence_hold_no_secret(reported, evidence_doc):
    keyring = Keyring.open(reported["ws"] / "keys", passphrase=PASSPHRASE)
    from tracer.fingerprint import codeword

    blobs = [reported["html"].read_text(encoding="utf-8"), reported["evidence"].read_text(encoding="utf-8")]
    for blob in blobs:
        assert PASSPHRASE not in blob
        assert keyring.master.hex() not in blob and base64.b64encode(keyring.master).decode() not in blob
        for cid in ("acme", "globex"):
            word = codeword(keyring.master, cid, "ps1", 64, 10)
            assert json.dumps(word.tolist()) not in blob and ",".join(map(str, word.tolist())) not in blob

    def keys(node):
        if isinstance(node, dict):
            for k, v in node.items():
                yield k
                yield from keys(v)
        elif isinstance(node, list):
            for v in node:
                yield from keys(v)

    assert not [k for k in keys(evidence_doc) if "codeword" in k.lower() or ("input" in k.lower() and k not in ("input_shape", "input_dtype"))]


# -- the evidence ----------------------------------------------------------------------------------


def test_evidence_content(reported, evidence_doc):
    doc = evidence_doc
    assert doc["format"] == "tracer-evidence/1" and doc["created"].endswith("Z")
    res = doc["result"]
    assert res["verdict"] == "match" and res["customers"] == ["acme"]
    assert res["model_sha256"] == hashlib.sha256(reported["suspect"].read_bytes()).hexdigest()
    assert {c["customer"] for c in res["candidates"]} == {"acme", "globex", "initech"}  # every customer, not a top-k
    assert len(res["candidates_all"]) == 3
    with Ledger(reported["ws"] / "tracer.db") as ledger:
        assert doc["issuances"] == [e.to_json() for e in ledger.issuances("acme")]
        assert doc["identification_entry"] == ledger.get(res["ledger_entry"]).to_json()
    assert doc["identification_entry"]["kind"] == "identification"
    assert doc["public_key"] == reported["key_file"].read_text()
    checks = verify_evidence(doc, load_public_key(reported["key_file"].read_bytes()))
    assert any("evidence signature valid" in c for c in checks)
    assert any("issuance record" in c for c in checks) and any("identification record" in c for c in checks)


def test_verify_cli_needs_nothing_but_the_public_key(reported, run_cli, tmp_path):
    empty = tmp_path / "nowhere"
    empty.mkdir()
    env = {"TRACER_WORKSPACE": None, "TRACER_PASSPHRASE": None}
    r = run_cli(["evidence", "verify", reported["evidence"], "--public-key", reported["key_file"]], env=env, cwd=empty)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("VALID") and "acme" in r.stdout and r.stderr == ""
    r = run_cli(["evidence", "verify", reported["evidence"], "--public-key", reported["key_file"], "--json"], env=env, cwd=empty)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["valid"] is True and doc["failures"] == [] and doc["customers"] == ["acme"]
    assert list(empty.iterdir()) == []  # wrote nothing


def _flip_b64(sig: str) -> str:
    raw = bytearray(base64.b64decode(sig))
    raw[10] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _t_matches(d):
    d["result"]["candidates"][0]["matches"] -= 1


def _t_customers(d):
    d["result"]["customers"] = ["globex"]


def _t_p(d):
    d["result"]["candidates_all"][1]["p_value"] = 1e-30


def _t_issuance_name(d):
    d["issuances"][0]["payload"]["display_name"] = "Someone Else Inc."


def _t_issuance_sha(d):
    sha = d["issuances"][0]["payload"]["model_sha256"]
    d["issuances"][0]["payload"]["model_sha256"] = ("0" if sha[0] != "0" else "1") + sha[1:]


def _t_issuance_time(d):
    d["issuances"][0]["time"] = d["issuances"][0]["time"].replace("20", "19", 1)


def _t_issuance_sig(d):
    d["issuances"][0]["signature"] = _flip_b64(d["issuances"][0]["signature"])


def _t_issuances_dropped(d):
    d["issuances"] = []


def _t_ident(d):
    d["identification_entry"]["payload"]["verdict"] = "no_match"


def _t_signature(d):
    d["signature"] = _flip_b64(d["signature"])


def _t_created(d):
    d["created"] = "2020-01-01T00:00:00.000000Z"


def _t_format(d):
    d["format"] = "tracer-evidence/2"


def _t_extra_field(d):
    d["note"] = "added later"


def _t_wrong_types(d):
    d["result"]["customers"] = [{"id": "acme"}]
    d["issuances"][0]["payload"] = "nothing"


TAMPERINGS = [_t_matches, _t_customers, _t_p, _t_issuance_name, _t_issuance_sha, _t_issuance_time, _t_issuance_sig,
              _t_issuances_dropped, _t_ident, _t_signature, _t_created, _t_format, _t_extra_field, _t_wrong_types]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=lambda f: f.__name__[3:])
def test_any_change_fails_verification(reported, evidence_doc, tamper, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = copy.deepcopy(evidence_doc)
    tamper(doc)
    bad = tmp_path / "bad.evidence.json"
    bad.write_text(json.dumps(doc, indent=2))
    r = _invoke(["evidence", "verify", bad, "--public-key", reported["key_file"]])
    assert r.exit_code == 1, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: evidence check failed"), r.stderr
    assert "VALID" not in r.stdout
    from tracer.errors import LedgerTampered

    with pytest.raises(LedgerTampered) as info:
        verify_evidence(doc, load_public_key(reported["key_file"].read_bytes()))
    assert getattr(info.value, "exit_code", None) == 1


def test_one_byte_flipped_in_the_file_fails(reported, tmp_path):
    raw = bytearray(reported["evidence"].read_bytes())
    sha = json.loads(raw)["result"]["model_sha256"]
    at = raw.index(sha.encode()) + 5
    raw[at] = ord("a") if raw[at] != ord("a") else ord("b")
    bad = tmp_path / "flipped.evidence.json"
    bad.write_bytes(bytes(raw))
    r = _invoke(["evidence", "verify", bad, "--public-key", reported["key_file"], "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["valid"] is False and any("signature" in f for f in doc["failures"])


def test_embedded_records_are_checked_on_their_own(reported, evidence_doc):
    """A modified issuance is caught by its own hash even if the whole document were re-signed."""
    keyring = Keyring.open(reported["ws"] / "keys", passphrase=PASSPHRASE)
    key = keyring.public_key
    doc = copy.deepcopy(evidence_doc)
    doc["issuances"][0]["payload"]["display_name"] = "Someone Else Inc."
    body = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"] = sign_blob(keyring.signing_key, EVIDENCE_DOMAIN, canonical(body))
    check = check_evidence(doc, key)
    assert any("evidence signature valid" in c for c in check.passed)
    assert any("issuance record" in f and "modified" in f for f in check.failed)


def test_forged_evidence_with_its_own_key_fails(reported, evidence_doc, tmp_path):
    """A forger re-signs everything with a key of their own and embeds its PEM: the verifier's key decides."""
    forger = Ed25519PrivateKey.generate()
    doc = copy.deepcopy(evidence_doc)
    doc["public_key"] = public_pem(forger.public_key()).decode()
    doc["result"]["customers"] = ["globex"]
    body = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"] = sign_blob(forger, EVIDENCE_DOMAIN, canonical(body))
    check = check_evidence(doc, load_public_key(reported["key_file"].read_bytes()))
    assert not check.ok and any("signature is invalid" in f for f in check.failed)
    assert check_evidence(doc, forger.public_key()).failed  # and the embedded ledger records are not the forger's


def test_a_different_key_fails(reported, tmp_path):
    other = tmp_path / "other.pem"
    other.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    r = _invoke(["evidence", "verify", reported["evidence"], "--public-key", other])
    assert r.exit_code == 1
    assert "signature" in r.stderr and "not signed with this key" in r.stderr


def test_unreadable_input_exits_3(reported, tmp_path):
    key = reported["key_file"]
    r = _invoke(["evidence", "verify", tmp_path / "missing.json", "--public-key", key])
    assert r.exit_code == 3 and "cannot read evidence file" in r.stderr
    (tmp_path / "not.json").write_text("{not json")
    r = _invoke(["evidence", "verify", tmp_path / "not.json", "--public-key", key])
    assert r.exit_code == 3 and "not JSON" in r.stderr
    (tmp_path / "list.json").write_text("[1, 2]")
    assert _invoke(["evidence", "verify", tmp_path / "list.json", "--public-key", key]).exit_code == 3
    (tmp_path / "bad.pem").write_text("hello")
    r = _invoke(["evidence", "verify", reported["evidence"], "--public-key", tmp_path / "bad.pem"])
    assert r.exit_code == 3 and "PEM" in r.stderr
    r = _invoke(["evidence", "verify", reported["evidence"], "--public-key", tmp_path / "missing.pem"])
    assert r.exit_code == 3 and "cannot read public key" in r.stderr


# -- no match --------------------------------------------------------------------------------------


def test_no_match_report(reported, run_cli, tmp_path):
    import torch

    from tracer.embedding.export import export_onnx
    from tracer.examples.digits import make_model_alt

    ws = Workspace(reported["ws"])
    torch.manual_seed(1234)
    model = tmp_path / "independent.onnx"
    model.write_bytes(export_onnx(make_model_alt(), ws.config.task))
    html_path = tmp_path / "no-match.html"
    r = _invoke(["-w", ws.root, "identify", model, "--report", html_path], TRACER_PASSPHRASE=PASSPHRASE)
    assert r.exit_code == 1, r.output
    page = html_path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    text = _text(page)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert f"No issued customer can be named: the suspect model file (sha256 {sha}) does not match any of the 3 issued customers" in text
    assert "was derived from the copy" not in text and "<svg" in page
    assert "No customer was named, so no issuance record is attached." in text
    evidence = tmp_path / "no-match.evidence.json"
    doc = json.loads(evidence.read_text())
    assert doc["result"]["verdict"] == "no_match" and doc["issuances"] == [] and doc["identification_entry"]["payload"]["verdict"] == "no_match"
    empty = tmp_path / "empty"
    empty.mkdir()
    v = run_cli(["evidence", "verify", evidence, "--public-key", reported["key_file"]], env={"TRACER_WORKSPACE": None}, cwd=empty)
    assert v.returncode == 0, v.stderr


# -- black-box probe results and rendering edge cases (library level) ------------------------------


def test_probe_result_report_redacts_the_endpoint(reported, tmp_path):
    from tracer.identify import SuspectModel, identify_predictor

    ws = Workspace(reported["ws"])
    keyring = ws.unlock(passphrase=PASSPHRASE)
    suspect = SuspectModel(ws.root / "models" / "issued" / "globex.onnx", ws.config.task)
    extra = {"endpoint": "https://user:t0ps3cret@api.example.com/v1/predict?api_key=K3Y#frag", "session": "s-0001",
             "trigger_queries": 128, "probe_inputs": [[0.5] * 64] * 3, "raw_answers": list(range(128))}
    result = identify_predictor(ws, keyring, suspect.predict, extra=extra)
    assert result.customers == ["globex"] and result.ledger_entry is None
    html_path, ev_path = write_report(ws, keyring, result, tmp_path / "probe" / "api.html")
    assert html_path == tmp_path / "probe" / "api.html" and ev_path == tmp_path / "probe" / "api.evidence.json"
    page = html_path.read_text(encoding="utf-8")
    text = _text(page)
    # the one redaction (tracer.probing.urls): userinfo and the fragment go, a secret-named parameter keeps its name only
    assert ("The prediction service at https://api.example.com/v1/predict?api_key=REDACTED is serving a model derived from the copy issued to "
            "Globex Corporation (customer globex)") in text
    assert "This identification was not recorded in the ledger." in text
    for blob in (page, ev_path.read_text()):
        assert "t0ps3cret" not in blob and "K3Y" not in blob and "frag" not in blob
        assert "probe_inputs" not in blob and "raw_answers" not in blob
    doc = json.loads(ev_path.read_text())
    assert doc["result"]["endpoint"] == "https://api.example.com/v1/predict?api_key=REDACTED" and doc["result"]["trigger_queries"] == 128
    assert doc["identification_entry"] is None and [e["payload"]["customer_id"] for e in doc["issuances"]] == ["globex"]
    assert verify_evidence(doc, keyring.public_key)


def _synthetic(names: list[tuple[str, str, int, bool]], *, trials: int = 128) -> IdentificationResult:
    from tracer.fingerprint.stats import binomial_tail, log10_tail

    cands = [Candidate(cid, name, m, trials, binomial_tail(m, trials, 10), round(log10_tail(m, trials, 10), 4), named)
             for cid, name, m, named in names]
    cands.sort(key=lambda c: c.log10_p)
    chosen = [c.customer for c in cands if c.named]
    return IdentificationResult("match" if chosen else "no_match", chosen, 1e-6, trials, "ab" * 32, cands, 10, ["ps1", "ps2"],
                                "exact binomial", extra={})


def _render(result: IdentificationResult) -> str:
    return render_html(ReportData(result=result, created="2026-01-02T03:04:05.000000Z", issuances=[], identification=None,
                                  ledger_status=(True, "ok"), key_sha256="0" * 64, evidence_name="x.evidence.json",
                                  evidence_sha256="1" * 64))


def test_every_text_is_escaped():
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    page = _render(_synthetic([("evil", evil, 100, True), ("fine", "Fine & Co", 12, False)]))
    _assert_self_contained(page)
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page and "Fine &amp; Co" in page


def test_chart_scales_to_many_customers():
    import random

    rng = random.Random(0)
    names = [(f"c{i}", f"Customer {i}", sum(rng.random() < 0.1 for _ in range(128)), False) for i in range(2000)]
    names += [("x1", "Merged One", 70, True), ("x2", "Merged Two", 66, True)]
    page = _render(_synthetic(names))
    _assert_self_contained(page)
    assert "Merged One: 70 of 128" in page and "Merged Two: 66 of 128" in page
    assert "customers with 12 matches" in page  # too many for dots: a histogram of customers
    assert "more customers, all less likely, are in the evidence file" in page
    assert len(page) < 2_000_000


# -- a real probe's report: the e-process with Bonferroni decided, and the page says so ------------


@pytest.fixture
def probed(issued_digits, tmp_path, monkeypatch):
    """A real probe over loopback HTTP of globex's copy, in a workspace where one more customer's copy lacks ps1."""
    from tests.servers import ModelServer
    from tracer.probing import ClientOptions, ProbeOptions, make_format, probe_endpoint

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    ws = Workspace(shutil.copytree(issued_digits, tmp_path / "ws"))
    keyring = ws.unlock(passphrase=PASSPHRASE)
    with ws.ledger() as ledger:  # a signed issuance of a copy that embeds probe set ps2 only
        payload = copy.deepcopy(ledger.issuances("acme")[0].payload)
        payload.update(customer_id="hooli", display_name="Hooli XYZ", new_customer=True,
                       probe_sets=[ps for ps in payload["probe_sets"] if ps["id"] == "ps2"])
        ledger.append("issuance", payload, key=keyring.signing_key)
    task = ws.config.task
    with ModelServer(ws.root / "models" / "issued" / "globex.onnx", task, "kserve-v1", label_only=True) as srv:
        result = probe_endpoint(ws, keyring, srv.url, make_format("kserve-v1", task), ProbeOptions(client=ClientOptions(concurrency=1)))
    html_path, _ = write_report(ws, keyring, result, tmp_path / "probe.html")
    return result, html_path.read_text(encoding="utf-8")


def test_probe_report_describes_the_sequential_test_that_decided(probed):
    from tracer.report.html import EPROCESS, decision_of

    result, page = probed
    url = result.extra["endpoint"]
    assert url.startswith("http://127.0.0.1:")
    _assert_self_contained(page.replace(url, "ENDPOINT"))  # the service's own address is the only URL in it
    assert result.customers == ["globex"] and result.probe_sets == ["ps1"]
    assert [c.customer for c in result.candidates if c.trials == 0] == ["hooli"]
    dec = decision_of(result)
    assert dec.rule == EPROCESS and dec.family_size == 3 and dec.threshold == pytest.approx(3 / result.alpha)
    text = _text(page)
    assert "Holm" not in page and "binomial-holm" not in page
    assert "e-value" in text and "Bonferroni" in text and "Ville" in text
    # the threshold N / alpha, in words and as the dashed line of the e-value chart
    assert "a customer is named once its e-value reaches 3 / alpha = 3.0 × 10⁶" in text
    assert "naming threshold: e-value 3.0 × 10⁶ = 3 / alpha" in page
    assert "largest e-value reached" in page and "Decision rule: e-process-bonferroni" in text
    named = next(c for c in result.candidates if c.named)
    assert "Its e-value (the evidence against chance, which starts at 1) reached" in text and f"{named.matches} of {named.trials}" in text
    # the customer whose copy lacks the probe set is not plotted or ranked as a candidate, but is named as not tested
    charts_part = page[page.index("Every customer against chance"):page.index("Scores of the customers")]
    assert "Hooli" not in charts_part
    scores = page[page.index("Scores of the customers"):page.index("How the decision was made")]
    assert "Not tested (1): Hooli XYZ" in _text(scores) and "<code>hooli</code>" not in scores
    assert "1 more issued customer(s) were not tested: their copies do not carry the probe set used" in text
    # the probe's own rows are explained; decoy accuracy only when a decoy was answered: at 10 classes a perfect copy is named
    # after about 8 triggers, and the random order puts all of them before the first decoy about once in 320 probes (seen once)
    decoy_rows = ("Decoy accuracy", "the share of decoys the service answered correctly") if result.extra["decoy_answers"] else ()
    for row in ("Customers tested (family size) 3", "Naming threshold (e-value) 3.0 × 10⁶", "Query budget",
                *decoy_rows, "Why the probe stopped named"):
        assert row in text, row
    assert ("Decoy accuracy" in text) == bool(result.extra["decoy_answers"])
