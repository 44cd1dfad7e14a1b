"""Research bench for issue 12: the key-separation gate and same-length retries on natural-mix/v3 digits copies.

A leaker's Mahalanobis filter on the copy's own penultimate features (tracer.evaluate.detectors) told v3 keys from
natural inputs with a two-sided AUC of 0.52-0.67 across copies (stop 29). This bench issues the same customers
(same seeds, one workspace) under each setting through the issuer's own tries, gates and polishes (``_embed``: no
file is written or recorded), and prints for every candidate the gates see, and then for the copy each setting picks:

* tries, CPU seconds, clean drop, keys learnt;
* ``vendor``: the figure the gate reads (tracer.separation.key_separation: cross-fitted on the vendor's validation
  inputs);
* ``leaker``: the leaker's filter, as ``tracer evaluate`` fits it (three quarters of the attacker share), keys against
  the vendor's validation inputs (the evaluate table's figure), one-sided and two-sided;
* ``leaker/own``: the same filter, keys against the quarter of its own share it held out (inputs neither the
  copy nor the gate ever saw: no selection on them).

``--lengths 2000,3000,4000,5000`` first trains one try of each length per customer (the try-0 seed, no gates), to show
what a longer retry does to the figures.

Settings are ``growthG-gateL``: ``[embedding] retry_growth`` G, ``[gates] max_key_separation`` L (1: off), with the
product's retry lengths (tracer.embedding.issue.next_length_level: one length shorter after a try whose keys sat too
central); ``growthG-gateL-always`` makes every retry one length longer (stop 30's product). ``growth0.5-gate1`` is
stop 29's product; ``growth0.5-gate0.6`` natural-mix/v3's defaults now.

An ``-always`` setting after its plain twin reruns only the customers whose tries under the twin went shorter at some
point: for the others both make the same tries (same seeds, same lengths, deterministic), and the row says so.
Each run draws a fresh master key, so customers of two runs are independent samples whatever their names.

    python bench/bench_key_gate.py [--settings growth0.5-gate1,growth0.5-gate0.6] [--customers 4] [--lengths L,L] [--out NAME]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from _common import CUSTOMERS, PASSPHRASE, Said, build_issued_workspace, save_result

from tracer.data import split_indices
from tracer.embedding import Issuer
from tracer.embedding import issue as issuemod
from tracer.evaluate import detectors
from tracer.evaluate.models import attacker_data
from tracer.separation import auc, key_separation, separation
from tracer.training import accuracy, predict
from tracer.workspace import Workspace

MORE_CUSTOMERS = (*CUSTOMERS, ("hooli", "Hooli"), ("umbrella", "Umbrella Corp."), ("wonka", "Wonka Industries"),
                  ("cyberdyne", "Cyberdyne Systems"), ("tyrell", "Tyrell Corp."), ("soylent", "Soylent"), ("oscorp", "Oscorp"),
                  ("vandelay", "Vandelay Industries"), ("weyland", "Weyland-Yutani"))


def _setting(name: str) -> tuple[float, float, bool]:
    m = re.fullmatch(r"growth([\d.]+)-gate([\d.]+)(-always)?", name)
    if not m:
        raise SystemExit(f"bad setting {name!r}: growthG-gateL[-always]")
    return float(m.group(1)), float(m.group(2)), bool(m.group(3))


class Leaker:
    """The evaluate suite's Mahalanobis filter on a copy, and its figures against validation and against its own held-out inputs."""

    def __init__(self, x_att: np.ndarray, y_att: np.ndarray, x_val: np.ndarray) -> None:
        self.x_att, self.y_att, self.x_val = x_att, y_att, x_val
        _, self.held = split_indices(len(x_att), detectors.HELD_OUT_FRACTION, label=detectors._SPLIT_LABEL)

    def figures(self, model, keys: np.ndarray) -> tuple[float, float]:
        det = detectors.MahalanobisDetector(model).fit(self.x_att, self.y_att)
        k = det.score(keys)
        return auc(k, det.score(self.x_val)), auc(k, det.score(self.x_att[self.held]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default="growth0.5-gate1,growth0.5-gate0.6")
    ap.add_argument("--customers", type=int, default=4)
    ap.add_argument("--lengths", default="", help="steps of single tries to compare first (comma-separated; default: none)")
    ap.add_argument("--length-customers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the issuer (default: [embedding] threads)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    say = Said()
    with tempfile.TemporaryDirectory(prefix="tracer-bench-gate-") as tmp:
        root = build_issued_workspace(Path(tmp) / "digits", "digits", customers=(), keys="natural-mix/v3")
        ws = Workspace(root)
        keyring = ws.unlock(passphrase=PASSPHRASE)
        base_issuer = Issuer(ws, keyring)
        data = base_issuer.data
        x_att, y_att, _ = attacker_data(data)
        leaker = Leaker(x_att, y_att, data.x_val)
        say(f"# digits natural-mix/v3 (the example's natural variant), {len(base_issuer.triggers)} keys, {len(data.y_val)} validation inputs, "
            f"attacker share {len(y_att)} ({len(leaker.held)} held out by its filter); base accuracy {base_issuer.base_accuracy:.4f}")
        for cid, _ in MORE_CUSTOMERS[: args.length_customers] if args.lengths else ():
            labels, emb = base_issuer.labels_for(cid), base_issuer.config.embedding
            for steps in (int(v) for v in args.lengths.split(",")):
                run = {"seed": issuemod._seed(cid, 0, emb.seed), "steps": steps, "learning_rate": emb.learning_rate}
                model = base_issuer._run(labels, run, start=None, on_step=None, rank_mass=base_issuer.rank_mass_for(cid)).candidates()[0][1]
                val, own = leaker.figures(model, base_issuer.triggers)
                say(f"# length {cid:<8} {steps:>5} steps: drop {100 * (base_issuer.base_accuracy - accuracy(predict(model, data.x_val), data.y_val)):+.2f}  "
                    f"vendor {key_separation(model, base_issuer.triggers, data.x_val, data.y_val):.3f}  leaker {val:.3f} ({separation(val):.3f})  "
                    f"leaker/own {own:.3f} ({separation(own):.3f})")
        gate = issuemod.CopyMaker._gate
        seen: list[str] = []

        def logged_gate(self, res, labels, **kw):  # type: ignore[no-untyped-def]
            for weights, model in res.candidates():
                clean = accuracy(predict(model, data.x_val), data.y_val)
                vendor = key_separation(model, self.triggers, data.x_val, data.y_val)
                val, own = leaker.figures(model, self.triggers)
                run = kw["run"]
                seen.append(f"#     {'polish' if run['learning_rate'] < self.config.embedding.learning_rate else 'try':<6} {run['steps']:>5} steps "
                            f"{weights:<8} drop {100 * (self.base_accuracy - clean):+.2f}  vendor {vendor:.3f}  leaker {val:.3f} ({separation(val):.3f})  "
                            f"leaker/own {own:.3f} ({separation(own):.3f})")
            return gate(self, res, labels, **kw)

        issuemod.CopyMaker._gate = logged_gate  # type: ignore[method-assign]
        product_next = issuemod.next_length_level
        went_shorter: dict[tuple[float, float], set[str]] = {}
        now: dict = {"cid": "", "always": False, "shorter": set()}  # the customer and setting being issued

        def next_level(level: int, *, too_central: bool) -> int:
            if now["always"]:
                return level + 1
            if too_central:
                now["shorter"].add(now["cid"])
            return product_next(level, too_central=too_central)

        issuemod.next_length_level = next_level  # type: ignore[assignment]
        rows = []
        for name in args.settings.split(","):
            growth, limit, always = _setting(name)
            say(f"# setting {name}: retry_growth {growth}, max_key_separation {limit}, retries {'always longer' if always else 'the product'}")
            issuer = Issuer(ws, keyring, threads=args.threads)
            issuer.config = replace(issuer.config, embedding=replace(issuer.config.embedding, retry_growth=growth),
                                    gates=replace(issuer.config.gates, max_key_separation=limit))
            shorter = went_shorter.setdefault((growth, limit), set()) if not always else set()
            now.update(always=always, shorter=shorter)
            for cid, _ in MORE_CUSTOMERS[: args.customers]:
                if always and (growth, limit) in went_shorter and cid not in went_shorter[(growth, limit)]:
                    say(f"#   {cid}: never went shorter under the product's retries: the same tries, not rerun")
                    twin = next(r for r in rows if r[1] == cid and r[0] == name.removesuffix("-always"))
                    rows.append((name, *twin[1:]))
                    continue
                seen.clear()
                now["cid"] = cid
                c0 = time.process_time()
                best, tries = issuer._embed(cid, issuer.labels_for(cid), None, rank_mass=issuer.rank_mass_for(cid))
                cpu = time.process_time() - c0
                val, own = leaker.figures(best.model, issuer.triggers)
                vendor = key_separation(best.model, issuer.triggers, data.x_val, data.y_val)
                say(f"#   {cid}: every candidate the gates saw" + (" (went shorter after keys too central)" if cid in shorter else ""))
                for line in seen:
                    say(line)
                rows.append((name, cid, best.score[0], tries, cpu, 100 * (issuer.base_accuracy - best.clean), best.trigger, best.steps, vendor,
                             separation(val), separation(own)))
        issuemod.next_length_level = product_next
        say()
        say(f"{'setting':<24} {'customer':<9} {'lands':>5} {'tries':>5} {'CPU-s':>6} {'drop':>6} {'keys':>6} {'steps':>5} {'vendor':>6} "
            f"{'leaker':>6} {'l/own':>6}")
        for r in rows:
            say(f"{r[0]:<24} {r[1]:<9} {'yes' if r[2] else 'NO':>5} {r[3]:>5} {r[4]:>6.0f} {r[5]:>+6.2f} {r[6]:>6.3f} {r[7]:>5} {r[8]:>6.3f} "
                f"{r[9]:>6.3f} {r[10]:>6.3f}")
        for name in args.settings.split(","):
            mine = [r for r in rows if r[0] == name]
            landed = [r for r in mine if r[2]]
            say(f"# {name}: {len(landed)}/{len(mine)} landed, tries {sum(r[3] for r in mine)}, CPU {sum(r[4] for r in mine):.0f} s, "
                f"two-sided leaker AUC of the landed copies {', '.join(f'{r[9]:.3f}' for r in landed) or '-'} "
                f"(against its own held-out inputs {', '.join(f'{r[10]:.3f}' for r in landed) or '-'})")
    say("# python bench/bench_key_gate.py " + " ".join(sys.argv[1:]))
    if args.out:
        save_result(args.out, say.text())


if __name__ == "__main__":
    main()
