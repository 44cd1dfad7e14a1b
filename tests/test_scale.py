"""Parallel batch issuance: `tracer issue --customers FILE --workers N`, and the Ray backend.

One fresh tabular workspace is copied before anything is issued, so both copies share the master
secret: one is issued with ``--workers 2`` (after a batch whose worker died), the other with
``--workers 1``, and their records are compared field by field.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests._constants import LOW_SCRYPT, PASSPHRASE
from tracer.embedding import Issuer
from tracer.embedding.backends import EmbedJob, EmbedOutcome, LocalBackend, run_job
from tracer.errors import WorkerError
from tracer.identify import SuspectModel, identify_model
from tracer.keys.keyring import load_public_key
from tracer.workspace import Workspace

BATCH = [("a", "Alpha Ltd"), ("b", "Beta GmbH"), ("c", None)]
DIES = "b"


def _dying_job(job: EmbedJob) -> EmbedOutcome:
    """A worker that dies (no exception, no cleanup) on customer ``DIES``, as a killed or OOM-ed process does."""
    if job.customer_id == DIES:
        os._exit(9)
    return run_job(job)


def _payloads(root: Path) -> list[dict]:
    with Workspace(root).ledger() as ledger:
        return [e.payload for e in ledger.issuances()]


def _leftovers(root: Path) -> list[str]:
    """Files an issuance in flight may leave: staged copies, landed copies, pending markers."""
    issued = root / "models" / "issued"
    files = [p.name for p in issued.iterdir()] if issued.is_dir() else []
    pending = root / ".tracer" / "pending"
    return files + ([p.name for p in pending.glob("*.json")] if pending.is_dir() else [])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    from tracer.examples import example_config, prepare_example
    from tracer.workspace import init_workspace

    root = tmp_path_factory.mktemp("scale") / "fresh"
    # The batch plumbing is under test here, not the gates (bench/ measures those). Each run has a fresh master key,
    # and with the example's 0.5-point gate a tabular copy now and then misses it after every retry (seen once: 0.88
    # points after 5 tries), failing the whole module; a 2-point allowance lands every copy.
    text = re.sub(r"(?m)^max_accuracy_drop = \S+", "max_accuracy_drop = 0.02", example_config("tabular"))
    ws = init_workspace(root, passphrase=PASSPHRASE, config_text=text, scrypt=LOW_SCRYPT)
    prepare_example(ws, "tabular", progress=False)
    (root.parent / "customers.csv").write_text("".join(f"{c},{n or ''}\n" for c, n in BATCH))
    return root


@pytest.fixture(scope="module")
def parallel(fresh, run_cli) -> dict:
    """A copy of ``fresh``: first a batch whose worker dies on customer b, then `tracer issue --workers 2` of the whole batch."""
    root = shutil.copytree(fresh, fresh.parent / "w2")
    ws = Workspace(root)
    issuer = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    backend = LocalBackend(workers=2, fn=_dying_job)
    try:
        with pytest.raises(WorkerError) as died:
            issuer.issue_many(BATCH[:2], backend=backend)
    finally:
        backend.close()
    after_death = {"error": str(died.value), "payloads": _payloads(root), "leftovers": _leftovers(root)}
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root)}
    r = run_cli(["issue", "--customers", fresh.parent / "customers.csv", "--workers", "2", "--json"], env=env, cpu_limit=900)
    assert r.returncode == 0, r.stderr
    return {"root": root, "after_death": after_death, "run": r, "env": env}


@pytest.fixture(scope="module")
def sequential(fresh, run_cli) -> Path:
    root = shutil.copytree(fresh, fresh.parent / "w1")
    env = {"TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root)}
    r = run_cli(["issue", "--customers", fresh.parent / "customers.csv", "--workers", "1", "--json"], env=env, cpu_limit=900)
    assert r.returncode == 0, r.stderr
    return root


def test_workers_2_lands_every_copy_verifies_and_identifies_each(parallel, run_cli):
    root = parallel["root"]
    ws = Workspace(root)
    payloads = _payloads(root)
    assert sorted(p["customer_id"] for p in payloads) == [c for c, _ in BATCH]
    verify = run_cli(["ledger", "verify"], env=parallel["env"])
    assert verify.returncode == 0, verify.stderr
    keyring = ws.unlock(passphrase=PASSPHRASE)
    for p in payloads:
        found = identify_model(ws, keyring, SuspectModel(root / p["model_path"], ws.config.task), record=False)
        assert found.matched and found.customers == [p["customer_id"]], (p["customer_id"], found.customers)
    assert sorted(_leftovers(root)) == sorted(f"{c}.onnx" for c, _ in BATCH)  # no marker, no staged file


def test_a_dead_worker_leaves_nothing_recorded_and_a_rerun_issues_it(parallel):
    dead = parallel["after_death"]
    recorded = {p["customer_id"] for p in dead["payloads"]}
    assert DIES not in recorded
    assert dead["leftovers"] == [f"{c}.onnx" for c in sorted(recorded)]  # no marker, no staged file, no unrecorded copy
    assert recorded <= {"a"}  # a was in flight in the other worker: the broken pool stops it unless it had landed
    assert "the worker issuing" in dead["error"] and "nothing was recorded" in dead["error"]
    assert "rerun the batch" in dead["error"]
    assert DIES in {p["customer_id"] for p in _payloads(parallel["root"])}  # the rerun issued it


def test_records_from_two_workers_equal_those_from_one(parallel, sequential):
    """Every recorded field is the same but the durations and thread counts; the model bytes too: training is deterministic across thread counts."""
    by_cid = {p["customer_id"]: p for p in _payloads(sequential)}
    for p2 in _payloads(parallel["root"]):
        p1 = by_cid[p2["customer_id"]]
        assert set(p1) == set(p2)
        e1, e2 = p1["embedding"], p2["embedding"]
        # the thread count is recorded as used (one process with 2 threads, or 2 workers with 1 each)
        assert {k: v for k, v in e1.items() if k not in ("seconds", "threads")} == {k: v for k, v in e2.items() if k not in ("seconds", "threads")}
        for key in sorted(set(p1) - {"embedding", "issuance_wall_seconds", "issuance_cpu_seconds"}):  # durations differ
            assert p1[key] == p2[key], key


def test_the_job_sent_to_workers_holds_neither_secret(fresh):
    ws = Workspace(fresh)
    keyring = ws.unlock(passphrase=PASSPHRASE)  # the real key files
    master = keyring.master
    signing = keyring.signing_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                serialization.NoEncryption())
    job = Issuer(ws, keyring).job_for("a")
    blob = pickle.dumps(job)
    assert len(master) >= 16 and len(signing) == 32
    for secret in (master, signing):
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode()):
            assert form not in blob
    assert PASSPHRASE.encode() not in blob
    assert job.labels.size and job.triggers.size  # it does carry the customer's material


def test_ray_backend_issues_on_a_local_cluster(fresh):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    from tracer.embedding.backends import RayBackend

    root = shutil.copytree(fresh, fresh.parent / "ray")
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        backend = RayBackend(workers=2)
        reps = Issuer(ws, keyring).issue_many(BATCH[:2], backend=backend)
    finally:
        ray.shutdown()
    assert sorted(r.customer for r in reps) == ["a", "b"]
    with ws.ledger() as ledger:
        assert ledger.verify(load_public_key(ws.public_key_pem()))[0] >= 2
    for r in reps:
        found = identify_model(ws, keyring, SuspectModel(Path(r.model_path), ws.config.task), record=False)
        assert found.customers == [r.customer]
