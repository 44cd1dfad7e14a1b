"""Identification cost with 10 vs 10,000 issued customers (target ratio <= 1.5).

Both workspaces share the same keys-derived probes and the same suspect file;
the only difference is the number of customer records to score. Timed: the
whole `identify_model` call (load ONNX, query probes, derive codewords, score,
Holm, append to the ledger), best of 3, measured alternately in one run.

    python bench/bench_identify.py
"""

from __future__ import annotations

import shutil
import tempfile
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
                t = timed(lambda: identify_model(ws, keyring, suspect), repeat=3)
                results[label] = min(results.get(label, t), t)
        r = identify_model(*spaces["10,000"], suspect)
        print("identification time vs number of issued customers (digits, acme's copy)")
        print(f"{'customers':>10} {'seconds':>9}")
        for label, t in results.items():
            print(f"{label:>10} {t:9.3f}")
        print(f"ratio 10,000 / 10: {results['10,000'] / results['10']:.2f} (target <= 1.5)")
        print(f"verdict with 10,000 customers: {r.verdict} {r.customers}, p = {r.candidates[0].p_value:.3g}, "
              f"next best p = {r.candidates[1].p_value:.3g}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
