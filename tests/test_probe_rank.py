"""`tracer probe --rank-code`: the rank code read through a real loopback HTTP server, natural inputs only.

On the shared issued digits workspace (noise probe sets with the rank code, the example's defaults):
a copy, the same copy behind a leaker's nearest-neighbour query filter, and a soft-label student of
it are named by the code with no key sent; an independent model and the base model are not; a
label-only endpoint, a workspace without carriers and the options that do not apply are one-line
errors; the journal holds every request and no key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures_issued import PASSPHRASE, issued_digits, issued_digits_copy, issued_tabular
from tests.servers import no_proxy  # autouse: the loopback servers bypass any proxy
from tracer.errors import EndpointError, UsageError
from tracer.examples.servers import FilterServer, ModelServer
from tracer.identify.result import RANK_MODE
from tracer.probing import ClientOptions, ProbeOptions, make_format, probe_rank_code
from tracer.workspace import Workspace


@pytest.fixture
def ws(issued_digits_copy) -> Workspace:
    return Workspace(issued_digits_copy)


@pytest.fixture
def keyring(ws):
    return ws.unlock(passphrase=PASSPHRASE)


def _copy(ws: Workspace, customer: str) -> Path:
    return ws.root / "models" / "issued" / f"{customer}.onnx"


def _read(ws, keyring, server, *, client_retries: int = 4, **options):
    with server as srv:
        client = ClientOptions(concurrency=4, max_retries=client_retries, backoff_base=0.01, backoff_cap=0.05)
        result = probe_rank_code(ws, keyring, srv.url, make_format("kserve-v1", ws.config.task), ProbeOptions(client=client, **options))
        return result, srv.requests


def _entries(ws: Workspace, session: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    with ws.ledger() as ledger:
        for e in ledger.entries():
            if e.payload.get("session") == session:
                out.setdefault(e.kind, []).append(e.payload)
    return out


def test_a_copy_is_named_from_natural_queries_alone_and_the_journal_holds_no_key(ws, keyring):
    from tracer.data import load_dataset

    result, requests = _read(ws, keyring, ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1"))
    n_val = len(load_dataset(ws.config).x_val)
    assert result.verdict == "match" and result.customers == ["acme"]
    doc = result.to_json()
    assert doc["rank_code"]["read"] and doc["rank_code"]["queries"] == n_val and doc["rank_code"]["carriers"] == 3
    by = {c["customer"]: c for c in doc["candidates"]}
    assert by["acme"]["log10_p"] == by["acme"]["rank_log10_p"] < -10  # the code alone: no Bonferroni factor
    assert all(by[o]["log10_p"] > -4 for o in ("globex", "initech"))
    assert "rank code only" in doc["method"] and doc["probe_sets"] == []
    assert result.queries == requests == n_val and result.extra["trigger_queries"] == 0
    journal = _entries(ws, result.extra["session"])
    assert journal["probe-start"][0]["mode"] == RANK_MODE and len(journal["probe-sent"]) == requests
    assert len(journal["probe-query"]) == n_val and all(q["kind"] == "natural" for q in journal["probe-query"])
    assert "probe-set-revealed" not in journal and journal["probe-result"][0]["customers"] == ["acme"]
    with ws.ledger() as ledger:  # no probe set was revealed by the read
        assert not list(ledger.entries(kind="probe-set-revealed"))


def test_a_copy_behind_a_query_filter_and_a_soft_label_student_of_it_are_named(ws, keyring):
    from tracer.data import load_dataset
    from tracer.evaluate.attacks import distill, onnx_predictor, torch_predictor
    from tracer.evaluate.detectors import KNNDetector
    from tracer.examples.digits import make_model_alt

    d = load_dataset(ws.config)
    detector = KNNDetector().fit(d.x_attack)  # fitted on the leaker's own share: flags odd queries, passes natural ones
    filtered = FilterServer(_copy(ws, "globex"), ws.config.task, "kserve-v1", flags=detector.flags)
    result, _ = _read(ws, keyring, filtered)
    assert result.customers == ["globex"] and filtered.flagged <= 0.05 * result.queries
    student = torch_predictor(distill(onnx_predictor(_copy(ws, "initech").read_bytes()), make_model_alt(), d.x_attack,
                                      epochs=60, temperature=1.0, seed=0))
    result, _ = _read(ws, keyring, ModelServer(student, ws.config.task, "kserve-v1"))
    assert result.customers == ["initech"] and result.to_json()["candidates"][0]["rank_log10_p"] < -7


def test_independent_models_are_not_named(ws, keyring):
    import torch

    from tracer.data import load_dataset
    from tracer.embedding.basemodel import load_base_model
    from tracer.evaluate.attacks import torch_predictor
    from tracer.examples.digits import make_model_alt
    from tracer.training import train_classifier

    d = load_dataset(ws.config)
    torch.manual_seed(5)
    independent = train_classifier(make_model_alt(), d.x_attack, d.y_attack, epochs=20, lr=3e-3, batch_size=32, seed=5)
    assert (torch_predictor(independent)(d.x_val).argmax(1) == d.y_val).mean() > 0.9  # a working classifier, just not a copy
    for model in (independent, load_base_model(ws.config)):
        result, _ = _read(ws, keyring, ModelServer(torch_predictor(model), ws.config.task, "kserve-v1"))
        assert result.verdict == "no_match" and min(c.log10_p for c in result.candidates) > -4


def test_a_budget_reads_a_subset_and_the_test_stays_exact(ws, keyring):
    result, requests = _read(ws, keyring, ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1"), budget=120)
    assert requests == result.queries == 120 and result.extra["stopped"] == "budget spent"
    assert result.to_json()["rank_code"]["queries"] == 120 and result.customers == ["acme"]


def test_a_label_only_endpoint_is_one_line_error_after_one_answer(ws, keyring):
    srv = ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1", label_only=True)
    with pytest.raises(EndpointError, match="answers class labels, not scores"):
        _read(ws, keyring, srv)
    assert srv.requests <= 4  # stopped at the first answers (4 in flight), not after the whole read set


def test_options_that_do_not_apply_and_resume_are_refused(ws, keyring, run_cli):
    with pytest.raises(UsageError, match="sends no keys"):
        probe_rank_code(ws, keyring, "http://127.0.0.1:9/", make_format("kserve-v1", ws.config.task), ProbeOptions(probe_set="ps1"))
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(ws.root)}
    r = run_cli(["probe", "http://127.0.0.1:9/", "--rank-code", "--decoys-per-trigger", "2"], env=env)
    assert r.returncode == 2 and "--rank-code sends no keys" in r.stderr
    result, _ = _read(ws, keyring, ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1"), budget=40)
    r = run_cli(["probe", "--resume", result.extra["session"]], env=env)
    assert r.returncode == 2 and "was a --rank-code read, which is not resumed" in r.stderr


def test_the_cli_reads_the_code_and_exits_0_on_a_match(ws, run_cli):
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(ws.root)}
    with ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1") as srv:
        r = run_cli(["probe", srv.url, "--format", "kserve-v1", "--rank-code", "--json"], env=env)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["customers"] == ["acme"] and doc["rank_code"]["read"] and doc["queries"] == srv.requests
        r = run_cli(["probe", srv.url, "--format", "kserve-v1", "--rank-code"], env=env)
        assert r.returncode == 0 and "natural queries and no key" in r.stderr
        assert "p is the rank code's alone (no key sent)" in r.stdout and "/360 pairs" in r.stdout and "0/0" not in r.stdout


def test_a_workspace_whose_copies_carry_no_code_is_told_so(issued_tabular, tmp_path):
    from tests.fixtures_issued import copy_workspace

    ws = Workspace(copy_workspace(issued_tabular, tmp_path / "tab"))
    keyring = ws.unlock(passphrase=PASSPHRASE)
    with pytest.raises(UsageError, match="no issued copy carries a rank code"):
        probe_rank_code(ws, keyring, "http://127.0.0.1:9/", make_format("kserve-v1", ws.config.task))
    with ws.ledger() as ledger:
        assert not list(ledger.entries(kind="probe-start"))  # refused before anything was journaled


def test_retries_absorb_a_flaky_endpoint_and_a_failing_one_is_a_one_line_error(ws, keyring):
    from tracer.examples.servers import Faults

    flaky = ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1", faults=Faults(p_500=0.2, p_429=0.1, seed=3))
    result, requests = _read(ws, keyring, flaky)
    assert result.customers == ["acme"] and result.queries == requests > result.to_json()["rank_code"]["queries"]
    dead = ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1", faults=Faults(p_500=1.0))
    with pytest.raises(EndpointError, match="inputs in a row got no answer"):
        _read(ws, keyring, dead, client_retries=1)


def test_evaluate_reads_the_rank_code_through_the_filter_on_a_scratch_ledger(ws, keyring):
    from tracer.evaluate import run_suite
    from tracer.evaluate.evaluation import Evaluation
    from tracer.evaluate.html import render_html
    from tracer.evaluate.tables import suite_table

    with ws.ledger() as ledger:
        before = ledger.count()
    suite = run_suite(ws, keyring, attacks="evade-knn")
    with ws.ledger() as ledger:
        assert ledger.count() == before  # both probes journaled on scratch copies of the ledger
    e = suite.attacks[0].evasion
    assert e["probe"]["verdict"] == "no_match"  # noise keys: the filter flags them, the label-only probe is evaded
    rank = e["rank_probe"]
    assert rank["verdict"] == "match" and rank["named"] == [suite.customer] and rank["trigger_queries"] == 0
    assert rank["flagged"] <= 0.05 * rank["requests"] and rank["log10_p"] < -10
    assert f"match ({suite.customer})" in suite_table(suite) and "rank read (scores)" in suite_table(suite)
    assert "rank-code read (scores)" in render_html(Evaluation(suite=suite))


def test_the_report_of_a_rank_code_read_says_no_key_was_sent(ws, keyring, tmp_path):
    from tracer.report import write_report

    result, _ = _read(ws, keyring, ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1"))
    html_path, evidence_path = write_report(ws, keyring, result, tmp_path / "read.html")
    page = html_path.read_text(encoding="utf-8")
    assert "acme" in page and "No secret probe was sent: this is the whole evidence" in page
    assert "no secret\ninput at all" in page or "no secret input at all" in page
    assert "twice the smaller" not in page and "0 of 0" not in page and "Pairs agreeing" in page
    evidence = json.loads(evidence_path.read_text(encoding="utf-8"))
    assert "rank_code" in json.dumps(evidence)


def test_a_key_probe_that_names_no_one_points_to_the_rank_code_read_when_it_is_open(ws, keyring, run_cli):
    """Noise keys behind a query filter: no match; with scores the result says how the copy can still be named."""
    from tracer.data import load_dataset
    from tracer.evaluate.detectors import KNNDetector
    from tracer.probing import ProbeSession

    detector = KNNDetector().fit(load_dataset(ws.config).x_attack)
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(ws.root)}
    with FilterServer(_copy(ws, "globex"), ws.config.task, "kserve-v1", flags=detector.flags) as srv:
        r = run_cli(["probe", srv.url, "--format", "kserve-v1", "--probe-set", "ps2", "--json"], env=env)
        assert r.returncode == 1, r.stderr
        doc = json.loads(r.stdout)
        assert doc["verdict"] == "no_match" and srv.flagged >= doc["trigger_queries"] > 0  # every key flagged
        assert doc["rank_code_probe"]["command"] == "tracer probe URL --rank-code" and "scores" in doc["rank_code_probe"]["why"]
        r = run_cli(["probe", srv.url, "--format", "kserve-v1", "--probe-set", "ps2"], env=env)
        assert r.returncode == 1 and "hint: the endpoint answers with scores" in r.stderr and "--rank-code" in r.stderr
    client = ClientOptions(concurrency=4, backoff_base=0.01, backoff_cap=0.05)
    labels_only = FilterServer(_copy(ws, "globex"), ws.config.task, "kserve-v1", flags=detector.flags, label_only=True)
    for server, verdict in ((labels_only, "no_match"), (ModelServer(_copy(ws, "acme"), ws.config.task, "kserve-v1"), "match")):
        with server as srv:  # labels only: the read is not open; a match: nothing to point to
            result = ProbeSession(ws, keyring, srv.url, make_format("kserve-v1", ws.config.task),
                                  ProbeOptions(client=client, probe_set="ps2")).run()
        assert result.verdict == verdict and "rank_code_probe" not in result.to_json()
