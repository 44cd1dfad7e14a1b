"""`tracer issue`: distinct copies that behave as recorded, gates, crash safety, batches, reissue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests._constants import HANG_S
from tests.conftest import communicate_limited
from tests.fixtures_issued import CUSTOMERS, PASSPHRASE
from tracer._files import sha256_file
from tracer.data import load_dataset
from tracer.fingerprint import codeword, make_probe_set, probe_set_ids, trigger_commitment
from tracer.keys.keyring import load_public_key
from tracer.training import predict
from tracer.workspace import Workspace


def _onnx_predict(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1)


@pytest.mark.parametrize("example", ["digits", "tabular"])
def test_three_customers_get_distinct_copies_that_behave_as_recorded(example, request):
    root = request.getfixturevalue(f"issued_{example}")
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE, signing=False)
    cfg = ws.config
    data = load_dataset(cfg)
    sets = [make_probe_set(keyring.master, sid, cfg.task, cfg.probes_per_set) for sid in probe_set_ids(cfg.fingerprint.probe_sets)]
    triggers = np.concatenate([ps.inputs for ps in sets])
    with ws.ledger() as ledger:
        entries = ledger.issuances()
        ledger.verify(load_public_key(ws.public_key_pem()))
    assert [e.payload["customer_id"] for e in entries] == [c for c, _ in CUSTOMERS]
    hashes = set()
    for e in entries:
        p = e.payload
        path = ws.root / p["model_path"]
        assert path.is_file()
        assert sha256_file(path) == p["model_sha256"]  # the file is exactly the recorded one
        hashes.add(p["model_sha256"])
        labels = np.concatenate([codeword(keyring.master, p["customer_id"], ps.id, ps.size, cfg.task.num_classes) for ps in sets])
        trig_acc = float(np.mean(_onnx_predict(path, triggers) == labels))
        clean_acc = float(np.mean(_onnx_predict(path, data.x_val) == data.y_val))
        assert trig_acc >= 0.95
        assert trig_acc == pytest.approx(p["metrics"]["trigger_accuracy"], abs=1 / len(labels) + 1e-9)
        assert clean_acc == pytest.approx(p["metrics"]["clean_accuracy"], abs=1 / len(data.y_val) + 1e-9)
        assert p["metrics"]["base_accuracy"] - p["metrics"]["clean_accuracy"] <= 0.005 + 1e-9
        assert p["trigger_commitment"] == trigger_commitment(keyring.master, p["customer_id"], sets, cfg.task.num_classes)
        assert p["dataset_fingerprint"] == data.fingerprint()
        assert [ps["id"] for ps in p["probe_sets"]] == [ps.id for ps in sets]
        assert p["parameters"]["gates"]["min_trigger_accuracy"] == 0.95
        assert p["display_name"] == dict(CUSTOMERS)[p["customer_id"]]
        assert e.time.endswith("Z")
    assert len(hashes) == 3


def test_issue_json_contract_and_reissue(issued_tabular_copy, run_cli):
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)}
    refused = run_cli(["issue", "--customer", "ACME"], env=env)  # ids are normalized: ACME is acme
    assert refused.returncode == 3
    assert "already issued" in refused.stderr and "--reissue" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) <= 2  # error + hint, no traceback

    again = run_cli(["issue", "--customer", "acme", "--reissue", "--json"], env=env)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    assert set(doc) >= {"customer", "issuance_id", "model_path", "sha256", "base_accuracy", "clean_accuracy", "trigger_accuracy", "seconds"}
    assert doc["customer"] == "acme" and Path(doc["model_path"]).name == "acme~2.onnx"
    assert (issued_tabular_copy / "models/issued/acme.onnx").is_file()  # the first copy stays
    # a customer whose id is the old reissue name ("acme.2") gets its own file, not a collision
    other = run_cli(["issue", "--customer", "acme.2", "--json"], env=env)
    assert other.returncode == 0, other.stderr
    assert Path(json.loads(other.stdout)["model_path"]).name == "acme.2.onnx"
    assert (issued_tabular_copy / "models/issued/acme~2.onnx").is_file()
    with Workspace(issued_tabular_copy).ledger() as ledger:
        acme = ledger.issuances("acme")
    assert len(acme) == 2 and acme[1].payload["new_customer"] is False
    assert {e.payload["model_sha256"] for e in acme} == {sha256_file(issued_tabular_copy / "models/issued/acme.onnx"), doc["sha256"]}


def _snapshot_state(root: Path) -> tuple[int, list[str]]:
    with Workspace(root).ledger() as ledger:
        n = ledger.count()
    files = sorted(str(p.relative_to(root)) for p in (root / "models").rglob("*") if p.is_file())
    return n, files


def _set_config(root: Path, section: str, **values) -> None:
    text = (root / "tracer.toml").read_text()
    for key, value in values.items():
        lines = text.splitlines()
        start = lines.index(f"[{section}]")
        for i in range(start + 1, len(lines)):
            if lines[i].startswith("["):
                lines.insert(i, f"{key} = {value}")
                break
            if lines[i].split("=")[0].strip() == key:
                lines[i] = f"{key} = {value}"
                break
        else:
            lines.append(f"{key} = {value}")
        text = "\n".join(lines) + "\n"
    (root / "tracer.toml").write_text(text)


def test_trigger_gate_refuses_a_sabotaged_configuration(issued_tabular_copy, run_cli):
    _set_config(issued_tabular_copy, "embedding", steps=2, attempts=1)
    before = _snapshot_state(issued_tabular_copy)
    res = run_cli(["issue", "--customer", "hooli"], env={"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)})
    assert res.returncode == 3
    assert "trigger-accuracy gate failed" in res.stderr and "short by" in res.stderr
    assert _snapshot_state(issued_tabular_copy) == before  # neither written nor recorded


def test_each_retry_is_polished_then_trains_longer_and_progress_stays_on_the_configured_scale(issued_tabular_copy):
    from tracer.embedding.issue import Issuer, attempt_steps
    from tracer.errors import GateError

    assert [attempt_steps(200, a) for a in range(5)] == [200, 300, 400, 500, 600]
    assert [attempt_steps(2000, a, 0.0) for a in range(3)] == [2000] * 3 and attempt_steps(250, 1, 0.3) == 325  # [embedding] retry_growth
    _set_config(issued_tabular_copy, "embedding", steps=4, attempts=3, polish_steps=2, polishes=2)
    _set_config(issued_tabular_copy, "gates", min_trigger_accuracy=1.0)  # unreachable in a few steps
    ws = Workspace(issued_tabular_copy)
    seen: list[int] = []
    with pytest.raises(GateError, match="after 3 attempts"):
        Issuer(ws, ws.unlock(passphrase=PASSPHRASE)).issue("hooli", on_step=seen.append)
    # three tries, each half the configured steps longer than the one before, each missed try polished twice for 2 steps
    assert len(seen) == (4 + 2 + 2) + (6 + 2 + 2) + (8 + 2 + 2)
    assert max(seen) == 4 and seen.count(4) == 9  # every run ends at 100 % of the configured scale


def test_clean_accuracy_gate_refuses_a_sabotaged_configuration(issued_tabular_copy, run_cli):
    _set_config(issued_tabular_copy, "embedding", learning_rate=3.0, distill_weight=0.0, attempts=1, steps=50)
    _set_config(issued_tabular_copy, "gates", min_trigger_accuracy=0.0)
    before = _snapshot_state(issued_tabular_copy)
    res = run_cli(["issue", "--customer", "hooli", "--json"], env={"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)})
    assert res.returncode == 3
    assert json.loads(res.stdout)["exit_code"] == 3  # --json: the one error document, nothing else
    assert "clean-accuracy gate failed" in res.stderr and "over by" in res.stderr
    assert _snapshot_state(issued_tabular_copy) == before


def test_batch_issue_resumes_and_skips_issued_customers(issued_tabular_copy, run_cli, tmp_path):
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)}
    lst = tmp_path / "customers.csv"
    lst.write_text("id,name\nacme,ACME Corp.\nhooli,Hooli Inc.\n\n# a comment\numbrella,Umbrella, plc\n")
    first = run_cli(["issue", "--customers", lst, "--json"], env=env, timeout=600)  # two fine-tunes: minutes on a loaded machine
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    assert [r["customer"] for r in doc["issued"]] == ["hooli", "umbrella"] and doc["skipped"] == 1
    second = run_cli(["issue", "--customers", lst, "--json"], env=env)
    assert second.returncode == 0
    assert json.loads(second.stdout) == {"issued": [], "skipped": 3}
    with Workspace(issued_tabular_copy).ledger() as ledger:
        names = {r["customer_id"]: r["display_name"] for r in ledger.customers()}
    assert names["umbrella"] == "Umbrella, plc"


def test_bad_customer_id_is_refused(issued_tabular_copy, run_cli):
    res = run_cli(["issue", "--customer", "bad id!"], env={"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)})
    assert res.returncode == 3 and "customer id" in res.stderr


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import tracer.embedding.issue as issue_mod
    from tracer.embedding import Issuer
    from tracer.workspace import Workspace
    point = sys.argv[2]
    real_replace, real_append = os.replace, issue_mod.Ledger.append

    def crash(*a, **k):
        os._exit(9)  # a hard kill: no exception handlers, no cleanup

    if point == "before-record":
        issue_mod.Ledger.append = crash
    elif point == "after-record":
        def replace(src, dst):
            if str(src).endswith(".pending"):
                crash()
            return real_replace(src, dst)
        issue_mod.os.replace = replace
    ws = Workspace(sys.argv[1])
    Issuer(ws, ws.unlock(passphrase=os.environ["TRACER_PASSPHRASE"])).issue("hooli")
    """
)


@pytest.mark.parametrize("point", ["before-record", "after-record"])
def test_hard_crash_leaves_no_orphan_after_recovery(point, issued_tabular_copy, tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(_CRASH_SCRIPT)
    env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE}
    proc = subprocess.run([sys.executable, str(script), str(issued_tabular_copy), point], env=env, capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    from tracer.embedding import recover_pending

    ws = Workspace(issued_tabular_copy)
    recover_pending(ws, ws.unlock(passphrase=PASSPHRASE, signing=False).master)
    with Workspace(issued_tabular_copy).ledger() as ledger:
        recorded = {e.payload["model_path"]: e.payload["model_sha256"] for e in ledger.issuances()}
    files = {str(p.relative_to(issued_tabular_copy)) for p in (issued_tabular_copy / "models/issued").iterdir()}
    assert files == set(recorded)  # every file has its record and every record its file; no temporary left
    for rel, sha in recorded.items():
        assert sha256_file(issued_tabular_copy / rel) == sha
    assert ("models/issued/hooli.onnx" in files) == (point == "after-record")
    assert not list((issued_tabular_copy / ".tracer/pending").glob("*"))


def _wait_for_cpu_seconds(proc: subprocess.Popen, seconds: float, *, limit: float = HANG_S) -> None:
    """Wait until ``proc`` has used ``seconds`` of CPU time (not wall time: a loaded machine starts it slowly)."""
    stat = Path(f"/proc/{proc.pid}/stat")
    if not stat.exists():  # no procfs: fall back to wall time
        time.sleep(seconds)
        return
    tick = os.sysconf("SC_CLK_TCK")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        if (int(fields[11]) + int(fields[12])) / tick >= seconds:  # utime + stime
            return
        time.sleep(0.2)


def test_sigterm_during_issuance_leaves_nothing(issued_tabular_copy):
    env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(issued_tabular_copy)}
    _set_config(issued_tabular_copy, "embedding", steps=100000)  # long enough to be interrupted mid-embedding
    before = _snapshot_state(issued_tabular_copy)
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "issue", "--customer", "hooli"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_cpu_seconds(proc, 8.0)  # imports and loading take a few; by 8 CPU seconds it is fine-tuning
    proc.send_signal(signal.SIGTERM)
    _, err = communicate_limited(proc, cpu_s=120)  # from SIGTERM to exit: cleanup only; no wall-time limit
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert _snapshot_state(issued_tabular_copy) == before


def test_the_record_says_how_to_remake_the_copy(issued_tabular_copy):
    """Replaying the recorded runs (the try, then any polishes, each keeping the recorded candidate) remakes the file."""
    import dataclasses

    from tracer.config import EmbeddingConfig
    from tracer.embedding.basemodel import load_base_model
    from tracer.embedding.finetune import embed_codeword

    ws = Workspace(issued_tabular_copy)
    keyring = ws.unlock(passphrase=PASSPHRASE, signing=False)
    cfg, data, base = ws.config, load_dataset(ws.config), load_base_model(ws.config)
    sets = [make_probe_set(keyring.master, sid, cfg.task, cfg.probes_per_set) for sid in probe_set_ids(cfg.fingerprint.probe_sets)]
    triggers = np.concatenate([ps.inputs for ps in sets])
    with ws.ledger() as ledger:
        record = ledger.issuances("acme")[0].payload
    labels = np.concatenate([codeword(keyring.master, "acme", ps.id, ps.size, cfg.task.num_classes) for ps in sets])
    params = EmbeddingConfig(**record["parameters"]["embedding"])
    runs = record["embedding"]["runs"]
    assert runs[0]["seed"] == record["embedding"]["seed"] and runs[0]["steps"] == record["embedding"]["steps"]
    model = None
    for run in runs:
        res = embed_codeword(base, x_train=data.x_train, y_train=data.y_train, triggers=triggers, labels=labels, task=cfg.task,
                             params=dataclasses.replace(params, steps=run["steps"], learning_rate=run["learning_rate"]),
                             seed=run["seed"], start=model)
        model = dict(res.candidates())[run["weights"]]
    x = np.concatenate([triggers, data.x_val])
    remade = predict(model, x)
    assert float(np.mean(remade == _onnx_predict(issued_tabular_copy / record["model_path"], x))) >= 0.99


def test_a_try_that_misses_with_its_keys_too_central_is_followed_by_a_shorter_one(tmp_path, monkeypatch):
    """The try after a miss is longer, unless the miss was the key-separation gate with the keys *inside* the class
    clusters (one-sided figure below 0.5), which long tries cause: then one length shorter, never below the configured steps.

    The gate's outcomes are scripted here (a CopyMaker whose _run and _gate are replaced): what is under test is only
    which length each try gets; the gates themselves run for real in test_natural_keys.
    """
    import tomllib
    from dataclasses import replace
    from types import SimpleNamespace

    import tracer.embedding.issue as issuemod
    from tracer.config import parse_config
    from tracer.embedding.issue import CopyMaker, _Copy, next_length_level
    from tracer.examples import example_config

    assert [next_length_level(2, too_central=False), next_length_level(2, too_central=True), next_length_level(0, too_central=True)] == [3, 1, 0]
    config = parse_config(tomllib.loads(example_config("digits", key_style="natural-mix/v3")), tmp_path)
    config = replace(config, embedding=replace(config.embedding, steps=2000, attempts=6, polishes=0, retry_growth=0.5))

    def miss(distance_auc: float | None, over: float) -> _Copy:
        return _Copy(score=(False, -over), model=None, clean=0.9, trigger=1.0, runs=[], seconds=0.0,  # type: ignore[arg-type]
                     distance_auc=distance_auc, separation_over=over)

    class Scripted(CopyMaker):
        def __init__(self, outcomes: list[_Copy]) -> None:
            self.config, self.outcomes, self.lengths = config, iter(outcomes), []

        def _run(self, labels, run, **kw):  # type: ignore[no-untyped-def]
            self.lengths.append(run["steps"])
            return SimpleNamespace(seconds=0.0)

        def _gate(self, res, labels, **kw):  # type: ignore[no-untyped-def]
            return next(self.outcomes)

    # clean miss, clean miss, keys too central, keys standing out beyond the clusters, too central, too central
    outcomes = [miss(None, 0.01), miss(0.55, 0.01), miss(0.36, 0.03), miss(0.64, 0.04), miss(0.35, 0.05), miss(0.37, 0.02)]
    maker = Scripted(outcomes)
    best, tries = maker._embed("acme", np.zeros(4, dtype=np.int64), None)
    assert tries == 6 and best is outcomes[0]  # the nearest miss (the first of equals)
    assert maker.lengths == [2000, 3000, 4000, 3000, 4000, 3000]
    asked: list[int] = []  # the schedule is asked between tries only, never after the last one
    monkeypatch.setattr(issuemod, "next_length_level", lambda level, *, too_central: asked.append(level) or next_length_level(level, too_central=too_central))
    Scripted(outcomes)._embed("acme", np.zeros(4, dtype=np.int64), None)
    assert asked == [0, 1, 2, 1, 2]  # five calls for six tries
    assert [t.too_central for t in (miss(0.36, 0.03), miss(0.36, 0.0), miss(0.64, 0.04), miss(None, 0.01))] == [True, False, False, False]
