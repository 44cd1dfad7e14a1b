"""Bench `tracer probe`: trigger queries to the verdict, per wire format, on the digits example.

Set-up: the digits example with 3 really issued copies (acme, globex, initech)
plus ``--customers`` (default 100) extra issued customers whose ledger records
are appended directly (same payload shape as ``tracer issue``, fake model
hashes: they only need codewords, and they make the Bonferroni family >= 103).
alpha = 1e-6, label-only APIs, one request in flight (so the count of
triggers revealed is exact), ``--runs`` sessions per cell, each with a fresh
CSPRNG schedule.

Models served: the unmodified copy of acme; acme's copy fine-tuned on the
attacker's third of the data (``x_attack``) with ``train_classifier`` and
re-exported with ``export_onnx``, gently (10 epochs, lr 1e-3) and hard (5
epochs, lr 3e-3, which erases a good part of the watermark); and an
independently trained model (the MLP ``make_model_alt``), which must never
be named.

Then fault injection: the unmodified copy behind a server with random 500s,
429 + Retry-After, answers slower than --timeout, dropped connections and
malformed JSON, and an endpoint that fails everything.

    python bench/bench_probe.py                      # builds a workspace (minutes: base model + 3 issuances)
    python bench/bench_probe.py --workspace DIR      # reuse an issued digits workspace (copied, never modified)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from _common import FAST_SCRYPT, PASSPHRASE  # noqa: E402

from tracer.errors import TracerError  # noqa: E402
from tracer.examples.servers import TEMPLATE_TENSOR, Faults, ModelServer  # noqa: E402
from tracer.fingerprint import codeword, make_probe_set, probe_set_ids, trigger_commitment  # noqa: E402
from tracer.probing import ClientOptions, ProbeOptions, make_format, probe_endpoint  # noqa: E402
from tracer.workspace import Workspace  # noqa: E402

REAL = (("acme", "ACME Corp."), ("globex", "Globex Corporation"), ("initech", "Initech"))
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def build_workspace(root: Path, passphrase: str) -> Path:
    from tracer.embedding import Issuer
    from tracer.examples import example_config, prepare_example
    from tracer.workspace import init_workspace

    ws = init_workspace(root, passphrase=passphrase, config_text=example_config("digits"), scrypt=FAST_SCRYPT)
    prepare_example(ws, "digits", progress=True)
    Issuer(ws, ws.unlock(passphrase=passphrase)).issue_many(list(REAL))
    return ws.root


def add_fake_customers(ws: Workspace, keyring, count: int) -> int:
    """Append `count` issuance records without models (fake hashes), as `tracer issue` would shape them."""
    cfg = ws.config
    sets = [make_probe_set(keyring.master, sid, cfg.task, cfg.probes_per_set) for sid in probe_set_ids(cfg.fingerprint.probe_sets)]
    with ws.ledger() as ledger:
        template = ledger.issuances()[0].payload
        items = []
        for i in range(count):
            cid = f"bench-{i:04d}"
            items.append(("issuance", {
                **template,
                "customer_id": cid, "display_name": f"Bench customer {i}", "new_customer": True, "issuance_number": 1,
                "model_sha256": hashlib.sha256(os.urandom(32)).hexdigest(), "model_path": f"models/issued/{cid}.onnx",
                "trigger_commitment": trigger_commitment(keyring.master, cid, sets, cfg.task.num_classes),
                "bench_note": "record only: no model was fine-tuned for this customer",
            }))
        ledger.append_many(items, key=keyring.signing_key)
        return len(ledger.issued_customer_ids())


def finetuned_copy(ws: Workspace, customer: str, *, epochs: int, lr: float) -> bytes:
    import onnx
    import torch
    from onnx import numpy_helper

    from tracer.data import load_dataset
    from tracer.embedding.export import export_onnx
    from tracer.examples.digits import make_model
    from tracer.training import train_classifier

    data = load_dataset(ws.config)
    model = make_model()
    graph = onnx.load(str(ws.root / "models" / "issued" / f"{customer}.onnx")).graph
    model.load_state_dict({i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in graph.initializer})
    train_classifier(model, data.x_attack, data.y_attack, epochs=epochs, lr=lr, batch_size=32, seed=1, device="cpu")
    return export_onnx(model, ws.config.task)


def independent_model(ws: Workspace) -> bytes:
    import torch

    from tracer.data import load_dataset
    from tracer.embedding.export import export_onnx
    from tracer.examples.digits import make_model_alt
    from tracer.training import train_classifier

    data = load_dataset(ws.config)
    torch.manual_seed(5)
    return export_onnx(train_classifier(make_model_alt(), data.x_train, data.y_train, epochs=30, lr=1e-3, seed=5, device="cpu"), ws.config.task)


def retention(ws: Workspace, keyring, model, customer: str = "acme") -> float:
    """Fraction of probe set ps1 on which the model answers `customer`'s codeword."""
    from tracer.identify import SuspectModel

    path = model
    if isinstance(model, bytes):
        path = Path(tempfile.mkdtemp()) / "m.onnx"
        path.write_bytes(model)
    ps = make_probe_set(keyring.master, "ps1", ws.config.task, ws.config.probes_per_set)
    pred = SuspectModel(Path(path), ws.config.task).predict(ps.inputs)
    return float(np.mean(pred == codeword(keyring.master, customer, "ps1", ps.size, ws.config.task.num_classes)))


def fmt_setup(fmt: str, task, tmp: Path):
    """(server kwargs, make_format kwargs) for a label-only API in each format."""
    if fmt == "kserve-v1":
        return {"label_only": True}, {}
    if fmt == "open-inference":
        return {"label_only": True}, {}
    lm = tmp / "labels.json"
    lm.write_text(json.dumps({n: i for i, n in enumerate(NAMES)}))
    if fmt == "torchserve":
        return {"label_only": True, "labels": NAMES}, {"label_map": lm}
    tpl = tmp / "template.json"
    tpl.write_text(json.dumps(TEMPLATE_TENSOR))
    return {"label_only": True, "labels": NAMES}, {"request_template": tpl, "response_path": "result.label", "label_map": lm}


def run_cell(ws, keyring, model, fmt: str, runs: int, tmp: Path, *, concurrency: int = 1) -> dict:
    server_kw, fmt_kw = fmt_setup(fmt, ws.config.task, tmp)
    wire = make_format(fmt, ws.config.task, **fmt_kw)
    rows = []
    with ModelServer(model, ws.config.task, fmt, **server_kw) as srv:
        for _ in range(runs):
            t0 = time.perf_counter()
            r = probe_endpoint(ws, keyring, srv.url, wire, ProbeOptions(probe_set="ps1", client=ClientOptions(concurrency=concurrency)))
            rows.append({"verdict": r.verdict, "customers": r.customers, "triggers": r.extra["trigger_queries"],
                         "requests": r.queries, "seconds": time.perf_counter() - t0, "log10_p": r.candidates[0].log10_p,
                         "stopped": r.extra["stopped"]})
    return {
        "verdicts": [r["verdict"] + (f"({','.join(r['customers'])})" if r["customers"] else "") for r in rows],
        "triggers": [r["triggers"] for r in rows],
        "requests": [r["requests"] for r in rows],
        "seconds": statistics.median(r["seconds"] for r in rows),
        "stopped": sorted({r["stopped"] for r in rows}),
        "best_log10_p": min(r["log10_p"] for r in rows),
    }


def fault_runs(ws, keyring, model, seeds: int) -> list[dict]:
    out = []
    wire = make_format("kserve-v1", ws.config.task)
    for seed in range(seeds):
        faults = Faults(p_500=0.12, p_429=0.08, retry_after=0.05, p_slow=0.06, slow_seconds=0.6, p_drop=0.06, p_malformed=0.06, seed=seed)
        with ModelServer(model, ws.config.task, "kserve-v1", label_only=True, faults=faults) as srv:
            opts = ProbeOptions(probe_set="ps1", budget=150, client=ClientOptions(concurrency=3, timeout=0.3, max_retries=6))
            t0 = time.perf_counter()
            try:
                r = probe_endpoint(ws, keyring, srv.url, wire, opts)
                outcome = f"{r.verdict} {','.join(r.customers) or '-'}"
                session, requests = r.extra["session"], r.queries
            except TracerError as exc:
                outcome = f"exit {exc.exit_code}: {exc.message}"
                session, requests = None, None
            injected: dict[str, int] = {}
            for rec in srv.log:
                injected[rec.outcome] = injected.get(rec.outcome, 0) + 1
            with ws.ledger() as ledger:
                if session is None:
                    session = [e.payload for e in ledger.entries(kind="probe-start")][-1]["session"]
                answered = [e.payload for e in ledger.entries(kind="probe-query") if e.payload["session"] == session]
            ok_hashes = set(srv.hashes("ok")) | set(srv.hashes("slow"))
            out.append({"seed": seed, "outcome": outcome, "server_requests": len(srv.log), "charged": requests,
                        "injected": injected, "journaled_answers": len(answered),
                        "journal_consistent": all(q["input_sha256"] in ok_hashes for q in answered),
                        "seconds": round(time.perf_counter() - t0, 2)})
    # an endpoint that fails everything
    with ModelServer(model, ws.config.task, "kserve-v1", fail_all=True) as srv:
        t0 = time.perf_counter()
        try:
            probe_endpoint(ws, keyring, srv.url, wire, ProbeOptions(probe_set="ps1", client=ClientOptions(max_retries=2, backoff_base=0.05)))
            outcome = "no error?!"
        except TracerError as exc:
            outcome = f"exit {exc.exit_code}: {exc.message}"
        out.append({"seed": "fail-all", "outcome": outcome, "server_requests": len(srv.log), "charged": None,
                    "injected": {"500": len(srv.log)}, "journaled_answers": 0, "journal_consistent": True,
                    "seconds": round(time.perf_counter() - t0, 2)})
    return out


def spread(values: list[int]) -> str:
    return f"{statistics.median(values):g} [{min(values)}-{max(values)}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="an issued digits workspace to copy (default: build one)")
    ap.add_argument("--passphrase", default=None, help="its passphrase (default: $TRACER_PASSPHRASE or the bench's)")
    ap.add_argument("--customers", type=int, default=100, help="extra issued customers (records only)")
    ap.add_argument("--runs", type=int, default=5, help="probe sessions per cell")
    ap.add_argument("--fault-seeds", type=int, default=5)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    if args.workspace:
        passphrase = args.passphrase or os.environ.get("TRACER_PASSPHRASE") or PASSPHRASE
        root = Path(shutil.copytree(args.workspace, tmp / "ws"))
    else:
        passphrase = PASSPHRASE
        print("building the digits workspace (base model + 3 issued copies)...", file=sys.stderr)
        root = build_workspace(tmp / "ws", passphrase)
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=passphrase)
    n_customers = add_fake_customers(ws, keyring, args.customers)
    print(f"workspace {root}: {n_customers} issued customers, alpha {ws.config.alpha:g}, "
          f"{ws.config.probes_per_set} triggers per probe set, 1 decoy per trigger", file=sys.stderr)

    t0 = time.perf_counter()
    models = {
        "unmodified copy": ws.root / "models" / "issued" / "acme.onnx",
        "fine-tuned (10 ep, lr 1e-3)": finetuned_copy(ws, "acme", epochs=10, lr=1e-3),
        "fine-tuned hard (5 ep, lr 3e-3)": finetuned_copy(ws, "acme", epochs=5, lr=3e-3),
        "independent model": independent_model(ws),
    }
    print(f"models ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    kept = {name: retention(ws, keyring, m) for name, m in models.items()}

    results = []
    for fmt in ("kserve-v1", "open-inference", "torchserve", "template"):
        for name, model in models.items():
            cell = run_cell(ws, keyring, model, fmt, args.runs, tmp)
            results.append({"format": fmt, "model": name, "watermark_kept": kept[name], **cell})
            print(f"  {fmt:<15} {name:<32} triggers {spread(cell['triggers'])}", file=sys.stderr)
    conc = run_cell(ws, keyring, models["unmodified copy"], "kserve-v1", args.runs, tmp, concurrency=4)

    print()
    print(f"tracer probe, digits example, {n_customers} issued customers, alpha {ws.config.alpha:g}, label-only APIs, "
          f"1 decoy per trigger, concurrency 1, {args.runs} sessions per row (median [min-max])")
    print()
    head = f"| {'format':<15} | {'model':<32} | {'kept':>5} | {'verdicts':<22} | {'trigger queries':>15} | {'HTTP requests':>15} | {'s/probe':>7} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in results:
        verdicts = {v: r["verdicts"].count(v) for v in r["verdicts"]}
        vtext = ", ".join(f"{k} x{n}" for k, n in verdicts.items())
        print(f"| {r['format']:<15} | {r['model']:<32} | {r['watermark_kept']:>5.2f} | {vtext:<22} | {spread(r['triggers']):>15} | "
              f"{spread(r['requests']):>15} | {r['seconds']:>7.2f} |")
    print()
    print(f"kserve-v1, unmodified copy, concurrency 4: trigger queries {spread(conc['triggers'])} "
          f"(in-flight queries at the verdict are revealed too), HTTP requests {spread(conc['requests'])}")
    targets = {"unmodified copy": 32, "fine-tuned (10 ep, lr 1e-3)": 64}
    for name, limit in targets.items():
        worst = max(max(r["triggers"]) for r in results if r["model"] == name)
        named = all(v == "match(acme)" for r in results if r["model"] == name for v in r["verdicts"])
        print(f"target {name}: named in every run: {named}; worst case {worst} trigger queries (target <= {limit}): "
              f"{'MET' if named and worst <= limit else 'MISSED'}")

    faults = fault_runs(ws, keyring, models["unmodified copy"], args.fault_seeds)
    print()
    print("fault injection (kserve-v1, unmodified acme copy; per request: 12% HTTP 500, 8% 429 + Retry-After 0.05 s, "
          "6% answer after 0.6 s > --timeout 0.3 s, 6% dropped connection, 6% malformed JSON; --retries 6, --concurrency 3, --budget 150)")
    print()
    print(f"| {'run':<8} | {'outcome':<60} | {'requests':>8} | {'injected faults':<62} | {'answers journaled':>17} | {'journal ok':>10} | {'s':>5} |")
    print(f"|{'-' * 10}|{'-' * 62}|{'-' * 10}|{'-' * 64}|{'-' * 19}|{'-' * 12}|{'-' * 7}|")
    for f in faults:
        inj = ", ".join(f"{k}:{v}" for k, v in sorted(f["injected"].items()))
        print(f"| {f['seed']!s:<8} | {f['outcome'][:60]:<60} | {f['server_requests']:>8} | {inj[:62]:<62} | {f['journaled_answers']:>17} | "
              f"{f['journal_consistent']!s:>10} | {f['seconds']:>5} |")
    with ws.ledger() as ledger:
        count, _ = ledger.verify(keyring.public_key)
    print(f"\nledger verified after the bench: {count} entries")
    if args.json_out:
        args.json_out.write_text(json.dumps({"customers": n_customers, "results": results, "concurrency4": conc, "faults": faults}, indent=2, default=str))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
