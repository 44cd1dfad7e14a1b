"""How many keys one probe session may send (``[fingerprint] keys_per_probe``), simulated (issue 12).

A natural-mix key carries a label set of k = 2 classes, so one answer is worth at most one bit, and
an endpoint behind a query filter answers some keys with something else: its agreement with the
customer's labels drops below 1. The probe stops as soon as a customer is named (E >= N / alpha) or
nobody can be named within the budget (futility). The budget therefore sets two things:

* the weakest agreement a guilty endpoint may have and still be named within it;
* how many keys an innocent endpoint burns before futility stops the probe. Keys a session draws
  but does not send go back to the pool (tracer.fingerprint.revelation), so the pool pays only
  for keys sent.

Key-pool sessions also stop early for futility ("Early futility" in tracer.probing.sequential): once the
plain rule with 64 answers would have stopped and the Wilson upper bound at z on every customer's match rate so
far could not name anyone within the budget. The rows with a z show what that buys against the plain rule:
the budget's power for guilty endpoints at about the plain 64-key cost for innocent ones (at a budget of 64
it is the plain rule exactly).

This bench runs the probe's own e-process and stopping rule (``EProcess.run``, the rule `tracer probe`
applies) on simulated answers: a guilty endpoint matches its customer with probability ``agreement``
on each key and every other customer with probability 1/2 (their labels are independent coin flips
on the same label set); an innocent endpoint matches every customer with probability 1/2. N customers
share the pool (Bonferroni over N), alpha 1e-6.

    python bench/bench_probe_budget.py [--sims 2000] [--customers 3] [--out probe_budget.txt]
"""

from __future__ import annotations

import argparse

import numpy as np
from _common import Said, save_result

from tracer.probing.sequential import EProcess

BUDGETS = (40, 48, 64, 96, 128)
#: (budget, z) rows with the early-futility rule; z = FUTILITY_Z at 128 is what new sessions of a default workspace use.
EARLY = ((64, 2.5), (96, 2.5), (128, 1.5), (128, 2.0), (128, 2.5), (128, 3.0), (192, 2.5))
AGREEMENTS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)
ALPHA = 1e-6
K = 2


def simulate(budget: int, agreement: float | None, customers: int, sims: int, rng: np.random.Generator,
             z: float | None = None) -> tuple[float, float, float]:
    """(share named right, share naming someone else, mean keys sent) over ``sims`` probe sessions."""
    right = wrong = sent = 0
    for _ in range(sims):
        matches = rng.random((budget, customers)) < 0.5
        if agreement is not None:
            matches[:, 0] = rng.random(budget) < agreement
        test = EProcess(num_classes=K, customers=customers, alpha=ALPHA, futility_z=z)
        _, used = test.run(matches, np.full(budget, K))
        named = test.named
        right += int(agreement is not None and bool(named[0]))
        wrong += int(bool(named[1:].any()) or (agreement is None and bool(named[0])))
        sent += used
    return right / sims, wrong / sims, sent / sims


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--customers", type=int, default=3)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--out", default="probe_budget.txt")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    say = Said()
    say(f"# python bench/bench_probe_budget.py --sims {a.sims} --customers {a.customers}: keys of label-set size {K}, alpha {ALPHA:g}, "
        f"Bonferroni over {a.customers} customers; EProcess.run (the probe's stopping rule)")
    say("# each cell: share of guilty endpoints named right / mean keys sent; last columns: innocent endpoints")
    say("# rule: plain (stop when even a perfect run cannot name anyone) or z (key pools: also once the plain rule at 64 answers "
        "would have stopped and the Wilson upper bound at z cannot name anyone)")
    head = "budget  rule   " + "  ".join(f"agree {g:.2f}     " for g in AGREEMENTS) + "  innocent: keys sent  named"
    say(head)
    for budget, z in [(b, None) for b in BUDGETS] + list(EARLY):
        cells = []
        for g in AGREEMENTS:
            right, wrong, sent = simulate(budget, g, a.customers, a.sims, rng, z)
            assert wrong == 0.0, (budget, g, wrong)
            cells.append(f"{right:5.3f} / {sent:5.1f}")
        _, wrong, sent = simulate(budget, None, a.customers, a.sims, rng, z)
        rule = "plain" if z is None else f"z {z:.1f}"
        say(f"{budget:6d}  {rule:5s}  " + "  ".join(f"{c:16s}" for c in cells) + f"  {sent:19.1f}  {wrong:5.3f}")
    save_result(a.out, say.text())


if __name__ == "__main__":
    main()
