"""Identification cost vs the number of issued customers: 10 / 1,000 / 10,000 / 100,000 (issue 16).

Target: the library call at 100,000 customers costs at most 2x its cost at 10, and the
first identification after a fresh issuance at 100,000 takes at most 2 s.

Every workspace is a copy of one issued digits workspace (same keys, same suspect file: acme's
copy); the extra customers are real signed issuance records without a model (bench/_common.py,
``add_paper_customers``). Timings, all in one run so that the ratios compare like with like:

* library warm: ``identify_model`` with keys unlocked (load ONNX, query probes, read the
  customers, codewords, score, Holm, append the identification to the ledger), codeword cache
  current; best of 3, in two rounds alternating across sizes;
* library cold: the same call right after the cache folder was deleted (a full rebuild);
* library fresh: the first call after a real issuance of one more customer (``Issuer.issue``:
  fine-tune, gates, landing), which is the "cold start after a fresh issuance";
* command warm / cold: ``tracer identify FILE --json`` as a process (imports, scrypt unlock of the
  key file at the bench's low cost, identification), cache current / cache deleted; best of 3 / one run.

    python bench/bench_identify.py [--sizes 10,1000,10000,100000] [--out bench/results/identify_scale.txt]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PASSPHRASE, ROOT, add_paper_customers, build_issued_workspace, timed

from tracer.embedding import Issuer
from tracer.identify import identify_model
from tracer.workspace import Workspace


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def _command(ws: Workspace, suspect: Path) -> float:
    env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracer", "--workspace", str(ws.root), "identify", str(suspect), "--json"],
                          env=env, capture_output=True, check=False)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"tracer identify exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
    return took


def _cold(ws: Workspace, fn) -> float:
    shutil.rmtree(ws.cache_dir, ignore_errors=True)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _build(tmp: Path, sizes: list[int], out) -> tuple[dict, Path]:
    src = build_issued_workspace(tmp / "base", "digits")
    spaces = {}
    for n in sizes:
        root = tmp / f"ws{n}"
        shutil.copytree(src, root)
        ws = Workspace(root)
        keyring = ws.unlock(passphrase=PASSPHRASE)
        t0 = time.perf_counter()
        add_paper_customers(ws, keyring, n - 3, batch=10_000)
        out(f"# {n:>7} customers: {n - 3} signed issuance records appended in {time.perf_counter() - t0:.1f} s")
        spaces[n] = (ws, keyring)
    return spaces, src / "models" / "issued" / "acme.onnx"


def _measure(spaces: dict, suspect: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {n: {} for n in spaces}
    for ws, keyring in spaces.values():  # warm-up: imports, onnxruntime, fills the cache
        identify_model(ws, keyring, suspect)
    for _ in range(2):
        for n, (ws, keyring) in spaces.items():
            t = timed(lambda ws=ws, keyring=keyring: identify_model(ws, keyring, suspect), repeat=3)
            rows[n]["lib_warm"] = min(rows[n].get("lib_warm", t), t)
    for n, (ws, keyring) in spaces.items():
        rows[n]["lib_cold"] = _cold(ws, lambda ws=ws, keyring=keyring: identify_model(ws, keyring, suspect))
        rows[n]["cache_bytes"] = _tree_bytes(ws.cache_dir)
    for n, (ws, keyring) in spaces.items():
        t0 = time.perf_counter()
        Issuer(ws, keyring).issue(f"fresh{n}", name="Fresh customer")
        rows[n]["issue"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        identify_model(ws, keyring, suspect)
        rows[n]["lib_fresh"] = time.perf_counter() - t0
    for _ in range(3):
        for n, (ws, _) in spaces.items():
            t = _command(ws, suspect)
            rows[n]["cmd_warm"] = min(rows[n].get("cmd_warm", t), t)
    for n, (ws, _) in spaces.items():
        rows[n]["cmd_cold"] = _cold(ws, lambda ws=ws: _command(ws, suspect))
    return rows


def _table(rows: dict[int, dict[str, float]], out) -> None:
    cols = ("lib_warm", "lib_cold", "lib_fresh", "cmd_warm", "cmd_cold")
    out(f"{'customers':>10} " + " ".join(f"{c + ' s':>12}" for c in cols) + f" {'cache MB':>9} {'issue s':>8}")
    for n, r in rows.items():
        out(f"{n:>10,} " + " ".join(f"{r[c]:12.3f}" for c in cols) + f" {r['cache_bytes'] / 1e6:9.2f} {r['issue']:8.1f}")
    base = rows[min(rows)]
    for n, r in rows.items():
        if n != min(rows):
            out(f"ratio {n:,} / {min(rows):,}: " + ", ".join(f"{c} {r[c] / base[c]:.2f}" for c in cols))


def _verify(ws: Workspace, out) -> None:
    env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tracer", "--workspace", str(ws.root), "ledger", "verify"],
                          env=env, capture_output=True, text=True, check=False)
    last = (proc.stdout.strip().splitlines() or [proc.stderr.strip()])[-1]
    out(f"# tracer ledger verify ({ws.root.name}): exit {proc.returncode} in {time.perf_counter() - t0:.1f} s: {last[:160]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,1000,10000,100000")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "identify_scale.txt")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    lines: list[str] = []

    def out(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    tmp = Path(tempfile.mkdtemp(prefix="tracer-bench-identify-"))
    try:
        out(f"# identification vs issued customers (digits, acme's copy), {time.strftime('%Y-%m-%d %H:%M')}, "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        spaces, suspect = _build(tmp, sizes, out)
        rows = _measure(spaces, suspect)
        _table(rows, out)
        for n, (ws, keyring) in spaces.items():
            r = identify_model(ws, keyring, suspect, record=False)
            out(f"# {n:>7}: verdict {r.verdict} {r.customers}, family {r.family_size}, p = {r.candidates[0].p_value:.3g}, "
                f"next best p = {r.candidates[1].p_value:.3g}")
        _verify(spaces[max(spaces)][0], out)
        out(f"# load after {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
