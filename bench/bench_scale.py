"""Batch issuance at scale (issue 16): customers per hour at --workers 1 and 2, CPU use, disk per customer.

One fresh workspace (digits by default) is made, then copied before anything is issued, so every
run has the same master secret and the same customers; each copy is issued by the CLI,
``tracer issue --customers FILE --workers W --json``, under ``/usr/bin/time -v``, alternately
(1, 2, 1, 2, ... for ``--rounds``) so that load from other processes hits both sides alike. Printed
per run: wall seconds, customers per hour, the CPU share ``time`` reports (100 % = one core busy),
the 1-minute load average before and after; then the speed-up of the best run of each side.
Storage: ledger bytes per issuance (the SQLite file after a WAL checkpoint, before and after the
batch, over the customers) and ONNX bytes per copy, and what 10,000 and 100,000 customers cost.

    python bench/bench_scale.py [digits|tabular] [--customers N] [--rounds R] [--workers 1,2]

Every record is verified (``tracer ledger verify``) and the rounds' records must be identical but
for durations: a mismatch is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import FAST_SCRYPT, PASSPHRASE, ROOT


def _fresh(folder: Path, example: str, n: int) -> tuple[Path, Path]:
    from tracer.examples import example_config, prepare_example
    from tracer.workspace import init_workspace

    ws = init_workspace(folder / "fresh", passphrase=PASSPHRASE, config_text=example_config(example), scrypt=FAST_SCRYPT)
    prepare_example(ws, example, progress=False)
    customers = folder / "customers.csv"
    customers.write_text("".join(f"customer{i:05d},Customer {i}\n" for i in range(n)))
    return ws.root, customers


def _ledger_bytes(root: Path) -> int:
    """The ledger's size on disk after a checkpoint (SQLite grows it in whole pages)."""
    path = root / "tracer.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def _entry_bytes(root: Path) -> float:
    """The mean size of an issuance entry's stored row (payload JSON, signature, hashes): the page-free figure."""
    with sqlite3.connect(root / "tracer.db") as db:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        table = "entries" if "entries" in tables else tables[0]
        cols = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
        expr = " + ".join(f"coalesce(length({c}), 0)" for c in cols)
        kind = "kind" if "kind" in cols else None
        where = f" WHERE {kind} = 'issuance'" if kind else ""
        return db.execute(f"SELECT avg({expr}) FROM {table}{where}").fetchone()[0] or 0.0


def _run(fresh: Path, customers: Path, workers: int | str, tag: str) -> dict:
    root = Path(shutil.copytree(fresh, fresh.parent / tag))
    before = _ledger_bytes(root)
    env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE, "TRACER_WORKSPACE": str(root), "PYTHONPATH": str(ROOT)}
    # "ray": the Ray backend on a local cluster started by the command (2 workers, as many CPUs)
    backend = ["--backend", "ray", "--workers", "2"] if workers == "ray" else ["--workers", str(workers)]
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "tracer", "issue", "--customers", str(customers), *backend, "--json"]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"workers={workers}: exit {r.returncode}\n{r.stderr[-2000:]}")
    cpu = re.search(r"Percent of CPU this job got: (\d+)%", r.stderr)
    doc = json.loads(r.stdout)
    verify = subprocess.run([sys.executable, "-m", "tracer", "ledger", "verify"], env=env, capture_output=True, text=True)
    onnx = [Path(rep["model_path"]).stat().st_size for rep in doc["issued"]]
    n = len(doc["issued"])
    return {"workers": workers, "wall": wall, "n": n, "per_hour": 3600 * n / wall, "cpu": int(cpu.group(1)) if cpu else None,
            "load": (load0, os.getloadavg()[0]), "verify": verify.returncode == 0, "root": root,
            "ledger_per": (_ledger_bytes(root) - before) / n, "entry": _entry_bytes(root), "onnx_per": sum(onnx) / n}


def _records(root: Path) -> dict[str, dict]:
    from tracer.workspace import Workspace

    with Workspace(root).ledger() as ledger:
        out = {}
        for e in ledger.issuances():
            p = dict(e.payload)
            p["embedding"] = {k: v for k, v in p["embedding"].items() if k != "seconds"}
            out[p["customer_id"]] = p
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("example", nargs="?", default="digits")
    ap.add_argument("--customers", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", default="1,2", help='comma-separated worker counts; "ray" adds the Ray backend (local cluster, 2 workers)')
    ap.add_argument("--keep", action="store_true", help="keep the workspaces")
    args = ap.parse_args()
    sides: list[int | str] = [w if w == "ray" else int(w) for w in args.workers.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    fresh, customers = _fresh(folder, args.example, args.customers)
    print(f"{args.example}, {args.customers} customers, {len(os.sched_getaffinity(0))} usable cores, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    runs = []
    for rnd in range(args.rounds):
        for w in sides:
            res = _run(fresh, customers, w, f"r{rnd}-w{w}")
            runs.append(res)
            print(f"  workers {w}: {res['wall']:7.1f} s wall, {res['per_hour']:7.1f} customers/h, CPU {res['cpu']} %, "
                  f"load {res['load'][0]:.2f} -> {res['load'][1]:.2f}, ledger verify {'ok' if res['verify'] else 'FAILED'}", flush=True)
    best = {w: max(r["per_hour"] for r in runs if r["workers"] == w) for w in sides}
    for w in sides[1:]:
        print(f"speed-up workers {w} / workers {sides[0]} (best run each): {best[w] / best[sides[0]]:.2f}x")
    ref = _records(runs[0]["root"])
    for r in runs[1:]:
        other = _records(r["root"])
        diff = sorted(c for c in ref if ref[c] != other.get(c))
        fields = sorted({f"{k}.{j}" if isinstance(ref[c][k], dict) else k for c in diff for k in ref[c] if ref[c][k] != other[c][k]
                         for j in (ref[c][k] if isinstance(ref[c][k], dict) else [None]) if j is None or ref[c][k][j] != other[c][k].get(j)})
        print(f"  records of run workers={r['workers']} {'identical to' if not diff else 'DIFFER from'} the first run's"
              + (f" for {len(diff)} customers, fields {fields}" if diff else " (all fields but durations)"))
    ledger_per = sum(r["ledger_per"] for r in runs) / len(runs)
    onnx_per = sum(r["onnx_per"] for r in runs) / len(runs)
    entry = sum(r["entry"] for r in runs) / len(runs)
    print(f"storage: {ledger_per:,.0f} ledger bytes per issuance on disk ({entry:,.0f} in its row), {onnx_per:,.0f} ONNX bytes per copy")
    for n in (10_000, 100_000):
        print(f"  {n:>7,} customers: ledger {ledger_per * n / 1e6:,.0f} MB, copies {onnx_per * n / 1e9:,.2f} GB")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"kept {folder}")


if __name__ == "__main__":
    main()
