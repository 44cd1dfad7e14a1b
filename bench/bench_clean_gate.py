"""Why natural-mix copies miss the clean gate, and whether a stronger hold on the base model's answers helps.

For each customer and try index, one fine-tune exactly as `tracer issue` starts it (the try's seed, the
configured steps, no polish), at each ``distill_weight`` given: the validation errors of its final and
averaged weights (the gate allows the base model's errors plus ``max_accuracy_drop``) and their trigger
accuracy (gate 0.95). Customers need not be issued: the codeword comes from the master key alone.

    python bench/bench_clean_gate.py WS --customers globex,initech --distill-weights 12,24 [--tries 3] [--save F]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from pathlib import Path

import torch
from _common import PASSPHRASE, Said, save_result

from tracer.embedding import Issuer
from tracer.embedding.issue import _seed
from tracer.training import accuracy, predict
from tracer.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--customers", required=True)
    ap.add_argument("--distill-weights", default="12,24")
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--save", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    say = Said()
    ws = Workspace(args.workspace)
    iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE), threads=1)
    base_config, y_val = iss.config, iss.data.y_val
    base_errors = int((predict(iss.base, iss.data.x_val) != y_val).sum())
    allowed = base_errors + math.floor(base_config.gates.max_accuracy_drop * len(y_val) + 1e-9)  # for the header only
    say(f"# bench_clean_gate.py on {args.workspace.name}: {len(y_val)} validation inputs, base errors {base_errors}, "
        f"the clean gate allows {allowed}; {base_config.embedding.steps} steps per try, one torch thread")
    for dw in (float(v) for v in args.distill_weights.split(",")):
        iss.config = replace(base_config, embedding=replace(base_config.embedding, distill_weight=dw))
        passed = total = 0
        for cid in args.customers.split(","):
            labels, rank = iss.labels_for(cid), iss.rank_mass_for(cid)
            for attempt in range(args.tries):
                emb = iss.config.embedding
                run = {"seed": _seed(cid, attempt, emb.seed), "steps": emb.steps, "learning_rate": emb.learning_rate}
                res = iss._run(labels, run, start=None, on_step=None, rank_mass=rank)
                cells, ok = [], False
                for weights, model in res.candidates():
                    answers = predict(model, iss.data.x_val)
                    errors, trig = int((answers != y_val).sum()), accuracy(predict(model, iss.triggers), labels)
                    ok = ok or not any(iss._misses(accuracy(answers, y_val), trig))  # the issuer's own gate rule
                    cells.append(f"{weights} {errors} err trig {trig:.4f}")
                passed, total = passed + ok, total + 1
                say(f"dw {dw} {cid} try {attempt}: " + "; ".join(cells))
        say(f"distill_weight {dw:g}: {passed} of {total} tries pass both gates before any polish")
    if args.save:
        save_result(args.save, say.text())


if __name__ == "__main__":
    main()
