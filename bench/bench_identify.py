"""Identification cost with 10 vs 10,000 issued customers (target ratio <= 1.5).

Both workspaces share the same keys and the same suspect file; the only
difference is the number of customer records to score. Two timings, each best
of 3, measured alternately in one run:

* library: the whole `identify_model` call (load ONNX, query probes, read the
  customers, codewords from the encrypted cache, score, Holm, append to the ledger);
* command: `tracer identify FILE --json` as a user runs it (a process: imports,
  scrypt unlock of the key file at default cost, identification).

    python bench/bench_identify.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PASSPHRASE, add_paper_customers, build_issued_workspace, timed

from tracer.identify import identify_model
from tracer.workspace import Workspace


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tracer-bench-identify-"))
    try:
        src = build_issued_workspace(tmp / "base", "digits")
        small, large = tmp / "small", tmp / "large"
        shutil.copytree(src, small)
        shutil.copytree(src, large)
        results = {}
        spaces = {}
        for label, root, extra in (("10", small, 7), ("10,000", large, 9997)):
            ws = Workspace(root)
            keyring = ws.unlock(passphrase=PASSPHRASE)
            add_paper_customers(ws, keyring, extra)
            spaces[label] = (ws, keyring)
        suspect = src / "models" / "issued" / "acme.onnx"
        for label in spaces:  # warm-up (imports, onnxruntime init)
            ws, keyring = spaces[label]
            identify_model(ws, keyring, suspect)
        for _ in range(2):
            for label, (ws, keyring) in spaces.items():
                t = timed(lambda ws=ws, keyring=keyring: identify_model(ws, keyring, suspect), repeat=3)
                results[label] = min(results.get(label, t), t)
        cli: dict[str, float] = {}
        env = {**os.environ, "TRACER_PASSPHRASE": PASSPHRASE}
        for _ in range(3):
            for label, (ws, _) in spaces.items():
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "tracer", "--workspace", str(ws.root), "identify", str(suspect), "--json"],
                               env=env, capture_output=True, check=False)
                cli[label] = min(cli.get(label, 1e9), time.perf_counter() - t0)
        r = identify_model(*spaces["10,000"], suspect)
        print("identification time vs number of issued customers (digits, acme's copy)")
        print(f"{'customers':>10} {'library s':>10} {'command s':>10}")
        for label in results:
            print(f"{label:>10} {results[label]:10.3f} {cli[label]:10.3f}")
        print(f"ratio 10,000 / 10: library {results['10,000'] / results['10']:.2f}, command {cli['10,000'] / cli['10']:.2f} (target <= 1.5)")
        print(f"verdict with 10,000 customers: {r.verdict} {r.customers}, p = {r.candidates[0].p_value:.3g}, "
              f"next best p = {r.candidates[1].p_value:.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
