"""`tracer demo`: the README's first command tells the whole story and ends in the right verdicts."""

from __future__ import annotations

import json

from tracer.keys.keyring import load_public_key
from tracer.workspace import Workspace


def test_demo_end_to_end(run_cli, tmp_path):
    res = run_cli(["demo", "--keep", tmp_path / "demo", "--json"], cpu_limit=1800)  # about 4 CPU minutes; wall time is unbounded
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc["identify_customers"] == ["globex"] and doc["probe_customers"] == ["globex"]
    assert 0 < doc["probe_trigger_queries"] <= 32
    for key in ("report", "evidence", "leaked_model"):
        assert (tmp_path / "demo").joinpath(doc[key]).is_file()
    assert "<svg" in (tmp_path / "demo").joinpath(doc["report"]).read_text()
    ws = Workspace(tmp_path / "demo")
    with ws.ledger() as ledger:
        count, _ = ledger.verify(load_public_key(ws.public_key_pem()))
        kinds = [e.kind for e in ledger.entries()]
    assert count == doc["ledger_entries"]
    assert kinds.count("issuance") == 3 and "identification" in kinds and "probe-result" in kinds
    for step in ("1/7", "2/7", "3/7", "4/7", "5/7", "6/7", "7/7"):
        assert step in res.stderr
    assert "DEMO" not in res.stdout  # --json: one JSON document only


def test_demo_refuses_an_existing_workspace(run_cli, issued_tabular):
    res = run_cli(["demo", "--keep", issued_tabular])
    assert res.returncode == 3 and "refusing to overwrite" in res.stderr
