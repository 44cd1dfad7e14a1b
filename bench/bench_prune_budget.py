"""How much clean accuracy magnitude pruning costs fresh tabular copies: is prune-N a valid attack (within 5 points)?

Each round builds a fresh tabular workspace as the test fixture does (a new master key, so new codewords and new
copies: uniform-grid/v1 keys, acme, globex and initech issued) and runs prune-30 and prune-50 on every copy.
The tests treat an attack as benign (always valid) only where no copy seen here came near the budget.

    python bench/bench_prune_budget.py --rounds 40 [--save]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import CUSTOMERS, PASSPHRASE, Said, build_issued_workspace, save_result

from tracer.evaluate import run_suite
from tracer.evaluate.attacks import ACCURACY_BUDGET
from tracer.workspace import Workspace

ATTACKS = ("prune-30", "prune-50")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    say = Said()
    say(f"# bench_prune_budget.py: {args.rounds} fresh tabular workspaces x {len(CUSTOMERS)} copies; "
        f"drop = copy's clean accuracy - pruned copy's, on the validation inputs; budget {100 * ACCURACY_BUDGET:.0f} points")
    drops: dict[str, list[float]] = {a: [] for a in ATTACKS}
    named_right = {a: 0 for a in ATTACKS}
    for r in range(args.rounds):
        tmp = Path(tempfile.mkdtemp(prefix="tracer-bench-prune-"))
        try:
            ws = Workspace(build_issued_workspace(tmp / "ws", "tabular"))
            keyring = ws.unlock(passphrase=PASSPHRASE)
            for cid, _ in CUSTOMERS:
                suite = run_suite(ws, keyring, customer=cid, attacks=",".join(ATTACKS), probe_evasion=False)
                cells = []
                for a in suite.attacks:
                    drops[a.name].append(a.accuracy_drop)
                    named_right[a.name] += a.named == [cid]
                    cells.append(f"{a.name} {100 * a.accuracy_drop:+.2f} pts {'valid' if a.valid else 'NOT VALID'} named {a.named}")
                say(f"round {r} {cid}: " + "; ".join(cells))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    say()
    for a in ATTACKS:
        d = sorted(drops[a])
        over = sum(x > ACCURACY_BUDGET + 1e-12 for x in d)
        say(f"{a}: {len(d)} copies, drop {100 * d[0]:+.2f} to {100 * d[-1]:+.2f} points (median {100 * d[len(d) // 2]:+.2f}), "
            f"{over} over the budget, the right customer alone named on {named_right[a]}")
    if args.save:
        save_result("prune_budget_tabular.txt", say.text())


if __name__ == "__main__":
    main()
