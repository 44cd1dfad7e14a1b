"""The `evasion` attack group of `tracer evaluate` on both examples: query filters a leaker fits on its own data.

For each example: an issued workspace (base model trained, acme, globex and
initech issued; built fresh unless ``--workspaces`` holds one), then
``run_suite(attacks="evasion")`` on acme's copy. Each row is one filter (a
detector of :mod:`tracer.evaluate.detectors` fitted on the attacker share,
answering flagged queries with the copy's runner-up or a random class):
identification on the filtered predictor (every key), the detector's AUC
between the key inputs and the validation inputs (the probe's decoys), the
share of keys and of decoys flagged, and `tracer probe` with default options
through a real loopback HTTP server running that filter (label-only
kserve-v1, on a scratch copy of the ledger, so every row probes as the first
probe of that workspace would).

    python bench/bench_evasion.py                            # both examples, print the tables
    python bench/bench_evasion.py --save --suffix _before    # write bench/results/evasion_<example>_before.txt
    python bench/bench_evasion.py --example digits --workspaces /tmp/ws   # reuse (or keep) issued workspaces
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from _common import PASSPHRASE, build_issued_workspace, save_result

from tracer import __version__
from tracer.evaluate import run_suite
from tracer.evaluate.tables import suite_table
from tracer.workspace import Workspace


def run_example(example: str, tmp: Path, attacks: str, keys: str = "noise") -> tuple[str, dict]:
    t0 = time.perf_counter()
    root = tmp / example
    reused = (root / "tracer.toml").exists()
    if not reused:
        root = build_issued_workspace(root, example, keys=keys)
    built = "workspace reused" if reused else f"workspace built in {time.perf_counter() - t0:.0f} s"
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    suite = run_suite(ws, keyring, attacks=attacks, on_attack=lambda n, r: print(f"  {n}: {r.verdict}", file=sys.stderr) if r else None)
    out = io.StringIO()
    with redirect_stdout(out):
        print(f"# tracer evaluate --attacks {attacks}, example {example}, key style {ws.config.fingerprint.style}")
        print(f"# tracer {__version__}, torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
              f"{torch.get_num_threads()} torch threads; {built}, suite {suite.seconds:.0f} s")
        print()
        print(suite_table(suite))
        print()
        print("per row (JSON: evasion figures and the probe):")
        for a in suite.attacks:
            print(f"  {a.name}: {json.dumps(a.evasion, sort_keys=True)}")
    return out.getvalue(), suite.to_json()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=("digits", "tabular", "both"), default="both")
    ap.add_argument("--attacks", default="evasion", help="comma-separated attacks or groups (default: evasion)")
    ap.add_argument("--save", action="store_true", help="write bench/results/evasion_<example><suffix>.txt")
    ap.add_argument("--suffix", default="", help="suffix of the saved file name, e.g. _before")
    ap.add_argument("--keys", choices=("noise", "natural", "natural-mix/v1", "natural-mix/v2", "natural-mix/v3"), default="noise",
                    help="key style of the workspaces built: noise (uniform-grid/v1) or natural (natural-mix/v2, bench/_common.NATURAL_KEYS), or a natural style by name")
    ap.add_argument("--workspaces", type=Path, default=None,
                    help="folder holding (or to receive) issued workspaces named digits/ and tabular/; default: a temporary folder")
    args = ap.parse_args()
    examples = ("digits", "tabular") if args.example == "both" else (args.example,)
    with tempfile.TemporaryDirectory(prefix="tracer-bench-evasion-") as tmp:
        for ex in examples:
            text, _ = run_example(ex, args.workspaces or Path(tmp), args.attacks, args.keys)
            print(text)
            if args.save:
                save_result(f"evasion_{ex}{args.suffix}.txt", text)


if __name__ == "__main__":
    main()
