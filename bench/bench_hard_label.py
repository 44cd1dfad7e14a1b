"""Why hard-label distillation carries no fingerprint here: what the leaker's student can learn of the customer at all.

A label-only leaker trains a fresh student on its own inputs (the attacker share) labelled by the copy's answers.
Everything the student knows of the customer comes through those labels, so the customer-specific part of its
training set is the labels on which the customer's copy answers differently from a model that knows no customer.
This bench measures that part and the ceiling it puts on identification, on an issued natural-mix workspace:

* per copy, on the leaker's inputs: how many answers differ from the base model's (the customer-free reference),
  and from each other copy's;
* per student architecture (the workspace's own, and ``make_model_alt`` where the example has one): a reference
  student trained on the base model's answers, and one student per copy trained on that copy's answers, with the
  same seed and settings (bench_extraction.py's: 60 epochs, Adam 1e-3, batch 32). Where a copy's answers equal
  the base's, its student *is* the reference student, bit for bit (one torch thread), so only the differing
  labels can move it. Counted over the keys whose answer falls in the label set (the statistic tracer.fingerprint.stats
  tests, Binomial(n_in, 1/2) under H0): the customer's matches by the student and by the reference student, the keys
  on which they answer differently, how many of those moved *to* the customer's label and how many away, and the
  matches ``tracer identify`` needs to name the customer (first step of Holm over the issued customers at the
  workspace's alpha).

What it would cost to carry the codeword anyway (``--oracle-flips 10,20,40``): an oracle that knows the leaker's very
inputs relabels F of them where it helps the first customer most, and a student trains on those labels. For each
leaker input x (labelled y by the copy) and each other class c, the gain is the customer's keys among x's ``NEAR_KEYS``
nearest keys (input space) whose label set is {y, c}, labelled c minus labelled y: relabelling x as c pulls those keys
towards c. The F inputs of largest gain are relabelled (one class each). A real embedding reaches the student only
through such labels and picks them knowing less (not the leaker's inputs), so the F that names the customer estimates
the clean accuracy a hard-label-proof copy gives up on the leaker's data (an estimate: a better rule than nearest keys
in input space might need fewer).

    python bench/bench_hard_label.py WS [--oracle-flips 10,20,40,80] [--save hard_label_digits_natural_v3.txt]
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from _common import PASSPHRASE, Said, save_result
from scipy import stats as sps

from tracer.embedding import Issuer
from tracer.evaluate.models import factories, load_copy
from tracer.training import accuracy, predict, train_classifier
from tracer.workspace import Workspace

STUDENT = {"epochs": 60, "lr": 1e-3, "batch_size": 32, "seed": 0}  # bench_extraction.py's hard-label student
NEAR_KEYS = 16  # keys an oracle relabelling counts around each leaker input


def fresh(make):
    """A fresh student, initialised from torch seed 0 (as bench_extraction.py does): every student starts from the same weights."""
    torch.manual_seed(0)
    return make()


def in_set_matches(got: np.ndarray, sets: np.ndarray, labels: np.ndarray) -> tuple[int, int]:
    """(matches, trials): answers inside each key's label set, and those equal to the customer's label (tracer.fingerprint.stats)."""
    ins = (got[:, None] == sets).any(1)
    return int((got == labels)[ins].sum()), int(ins.sum())


def needed_matches(n: int, k: int, alpha: float) -> int:
    """The fewest matches out of ``n`` in-set answers (chance 1/k each) whose exact binomial tail is at most ``alpha``."""
    return int(sps.binom.isf(alpha, n, 1 / k)) + 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--oracle-flips", default="", help="comma-separated F: relabel F leaker inputs where they pull the most keys (see above)")
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # students trained twice on the same labels come out bit for bit the same
    say = Said()
    ws = Workspace(args.workspace)
    iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    pool = iss.probe_sets[0]
    sets, keys, k = pool.label_sets, iss.triggers, pool.label_set_size
    xa, ya, xv, yv = iss.data.x_attack, iss.data.y_attack, iss.data.x_val, iss.data.y_val
    with ws.ledger() as ledger:
        customers = sorted({e.payload["customer_id"] for e in ledger.issuances()})
    alpha = ws.config.alpha / len(customers)  # Holm's first step over the issued customers
    make_model, make_alt = factories(ws.config)
    base_answers = predict(iss.base, xa)
    copies = {c: load_copy(ws, c, make_model, xv[:8]).model for c in customers}
    answers = {c: predict(m, xa) for c, m in copies.items()}
    labels = {c: iss.labels_for(c) for c in customers}

    say(f"# bench_hard_label.py on {args.workspace.name}: style {ws.config.fingerprint.style}, {len(keys)} keys (k = {k}), "
        f"leaker's share {len(xa)} inputs, customers {', '.join(customers)}; naming at alpha {ws.config.alpha:g} / {len(customers)} (Holm)")
    say("copies' answers on the leaker's inputs: differing from the base model's, and from the true labels")
    say(f"  base model: {int((base_answers != ya).sum())} of {len(xa)} wrong")
    for c in customers:
        say(f"  {c:10s} differs from the base on {int((answers[c] != base_answers).sum()):3d} of {len(xa)}; wrong on {int((answers[c] != ya).sum())}")
    for a, b in itertools.combinations(customers, 2):
        say(f"  {a} vs {b}: {int((answers[a] != answers[b]).sum())} of {len(xa)} answers differ")

    archs = [("same architecture", make_model)] + ([("alternative architecture", make_alt)] if make_alt else [])
    for arch, make in archs:
        say(f"\nhard-label students, {arch} ({STUDENT['epochs']} epochs on the {len(xa)} inputs):")
        reference = train_classifier(fresh(make), xa, base_answers, **STUDENT)
        ref_keys = predict(reference, keys)
        say(f"  reference student (base model's answers): clean {accuracy(predict(reference, xv), yv):.4f}")
        for c in customers:
            student = train_classifier(fresh(make), xa, answers[c], **STUDENT)
            got = predict(student, keys)
            (m, n), (ref_m, ref_n) = in_set_matches(got, sets, labels[c]), in_set_matches(ref_keys, sets, labels[c])
            mine, ref_mine, moved = got == labels[c], ref_keys == labels[c], got != ref_keys
            say(f"  {c:10s} clean {accuracy(predict(student, xv), yv):.4f}  matches {m}/{n} (p {sps.binom.sf(m - 1, n, 1 / k):.2g}; "
                f"to name: {needed_matches(n, k, alpha)})  reference student {ref_m}/{ref_n}  "
                f"keys answered differently {int(moved.sum())}: to the customer's label {int((moved & mine).sum())}, "
                f"away {int((moved & ref_mine).sum())}")
    if args.oracle_flips:
        oracle(say, [int(f) for f in args.oracle_flips.split(",")], customers[0], answers[customers[0]], labels[customers[0]],
               xa=xa, ya=ya, xv=xv, yv=yv, keys=keys, sets=sets, k=k, alpha=alpha, make=make_model)
    text = say.text()
    if args.save:
        save_result(args.save, text)


def flip_plan(xa: np.ndarray, answers: np.ndarray, keys: np.ndarray, sets: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(gain, best class) per leaker input: how many of its nearest keys relabelling it as that class pulls to the customer's label, net."""
    flat_a, flat_k = xa.reshape(len(xa), -1).astype(np.float64), keys.reshape(len(keys), -1).astype(np.float64)
    dist = (flat_a**2).sum(1)[:, None] - 2 * flat_a @ flat_k.T + (flat_k**2).sum(1)[None, :]
    near = np.argsort(dist, axis=1, kind="stable")[:, :NEAR_KEYS]
    gain, best = np.zeros(len(xa), dtype=np.int64), answers.copy()
    for j, y in enumerate(answers):
        net: dict[int, int] = {}
        for i in near[j]:
            if y in sets[i]:
                other = int(sets[i][0] if sets[i][1] == y else sets[i][1])
                net[other] = net.get(other, 0) + (1 if labels[i] == other else -1)
        if net:
            c, g = max(net.items(), key=lambda kv: (kv[1], -kv[0]))
            gain[j], best[j] = g, c
    return gain, best


def oracle(say: Said, flips: list[int], customer: str, answers: np.ndarray, labels: np.ndarray, *, xa, ya, xv, yv, keys, sets, k, alpha, make) -> None:
    """Students trained on the copy's answers with the F most useful leaker inputs relabelled (see the module docstring)."""
    gain, best = flip_plan(xa, answers, keys, sets, labels)
    order = np.argsort(-gain, kind="stable")
    say(f"\noracle relabelling for {customer} (same architecture; gain of the F-th input relabelled: "
        + ", ".join(f"F={f}: {int(gain[order[f - 1]])}" for f in flips if 0 < f <= len(order)) + f", of {NEAR_KEYS} keys):")
    for f in flips:
        y = answers.copy()
        y[order[:f]] = best[order[:f]]
        student = train_classifier(fresh(make), xa, y, **STUDENT)
        m, n = in_set_matches(predict(student, keys), sets, labels)
        wrong = int((y != ya).sum())
        say(f"  F={f:3d}: the leaker's labels wrong on {wrong} of {len(xa)} ({100 * wrong / len(xa):.1f} %); student clean {accuracy(predict(student, xv), yv):.4f}, "
            f"matches {m}/{n} (p {sps.binom.sf(m - 1, n, 1 / k):.2g}; to name: {needed_matches(n, k, alpha)})")


if __name__ == "__main__":
    sys.exit(main())
