"""The rank code as shipped (rank-code/v1, issue 12): what `tracer identify` decides after each attack, per channel.

Builds a digits workspace with the example's defaults (noise keys, ``[embedding] rank_code`` at its
default), issues ``--customers`` customers, and for each attacks its copy and scores the result with
:func:`tracer.identify.identify_predictor` (scores given, as `tracer identify` does for a file):
the keys' own log10 p, the rank code's (concordant pairs of 360), the Bonferroni-combined log10 p that
Holm decides on, and who is named at alpha 1e-6. Rows: the copy; soft-label distillation at T=1 and
T=3 and hard-label distillation, into the same CNN and into the MLP (60 epochs on the attacker share);
fine-tuning all layers 5 and 20 epochs; 50 % magnitude pruning; the average of two customers' copies
and their ensemble (collusion); and the nulls (independent CNN and MLP, the base model). Then a
simulated null of the statistic on 2000 other customer ids' codes read on each null model, and the
issuance cost of the example's settings against those before the rank code (:data:`_common.BEFORE_RANK_CODE`), same run.

    python bench/bench_rankcode.py [--customers 4] [--out rankcode_digits.txt]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import BEFORE_RANK_CODE, FAST_SCRYPT, PASSPHRASE, Said, example_text, save_result

from tracer.data import load_dataset
from tracer.embedding import Issuer
from tracer.embedding.basemodel import load_base_model
from tracer.evaluate.attacks import average_weights, distill, ensemble, finetune, magnitude_prune, onnx_predictor, torch_predictor
from tracer.evaluate.models import load_copy
from tracer.examples import digits, prepare_example
from tracer.fingerprint import rankcode
from tracer.identify import identify_predictor
from tracer.training import accuracy, train_classifier
from tracer.workspace import Workspace, init_workspace

IDS = ("acme", "globex", "initech", "umbrella", "hooli", "vandelay", "stark", "wayne")


def build(root: Path, customers: list[str], before: bool) -> tuple[Workspace, float, list[dict]]:
    text = example_text("digits", embedding=BEFORE_RANK_CODE if before else None)
    ws = init_workspace(root, passphrase=PASSPHRASE, config_text=text, scrypt=FAST_SCRYPT)
    prepare_example(ws, "digits", progress=False)
    t0 = time.process_time()
    Issuer(ws, ws.unlock(passphrase=PASSPHRASE)).issue_many([(c, None) for c in customers])
    cpu = time.process_time() - t0
    with ws.ledger() as ledger:
        recs = [e.payload for e in ledger.issuances()]
    return ws, cpu, recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=4)
    ap.add_argument("--out", default="rankcode_digits.txt")
    a = ap.parse_args()
    torch.set_num_threads(2)
    say = Said()

    customers = list(IDS[: max(2, a.customers)])
    with tempfile.TemporaryDirectory() as tmp:
        ws, cpu_on, recs_on = build(Path(tmp) / "on", customers, False)
        _, cpu_off, recs_off = build(Path(tmp) / "off", customers, True)
        keyring = ws.unlock(passphrase=PASSPHRASE)
        cfg = ws.config
        d = load_dataset(cfg)
        xa, ya = d.x_attack, d.y_attack
        base = load_base_model(cfg)
        say(f"digits workspace, example defaults: noise keys (2 x 64), [embedding] rank_code = {cfg.embedding.rank_code} "
            f"(decay {rankcode.DECAY}/rank); alpha {cfg.alpha:g}; {len(customers)} customers; attacker share {len(xa)}, "
            f"validation {len(d.x_val)} (the rank code is read there)")
        say("\nissuance (same run, same customers; each workspace its own master key):")
        for name, recs, cpu in (("rank code (example now)", recs_on, cpu_on), ("before: " + ", ".join(f"{k} {v}" for k, v in BEFORE_RANK_CODE.items()), recs_off, cpu_off)):
            steps = [r["embedding"]["steps"] for r in recs]
            tries = [r["embedding"]["attempts"] for r in recs]
            drops = [100 * (r["metrics"]["base_accuracy"] - r["metrics"]["clean_accuracy"]) for r in recs]
            say(f"  {name}: first-try landings {sum(t == 1 for t in tries)}/{len(tries)}, tries {tries}, steps {steps}, "
                f"clean drop (pts) {[round(x, 2) for x in drops]}, issuance CPU {cpu:.1f} s")
        say(f"  issuance CPU ratio now/before: {cpu_on / cpu_off:.2f}")

        def row(name: str, pred, right: list[str]) -> None:
            r = identify_predictor(ws, keyring, lambda x: pred(x).argmax(1), scores=pred)
            by = {c.customer: c for c in r.candidates}
            acc = accuracy(pred(d.x_val).argmax(1), d.y_val)
            if right:
                cells = "  ".join(f"{c}: keys {by[c].key_log10_p:7.1f} rank {by[c].rank_concordant:3d} {by[c].rank_log10_p:6.1f} -> {by[c].log10_p:7.1f}"
                                  for c in right)
            else:
                worst = min(r.candidates, key=lambda c: c.log10_p)
                cells = f"smallest: {worst.customer} keys {worst.key_log10_p:.1f} rank {worst.rank_concordant} {worst.rank_log10_p:.1f}"
            verdict = "named " + ",".join(r.customers) if r.customers else "no match"
            wrong = [c for c in r.customers if c not in right]
            say(f"  {name:26s} acc {acc:.4f}  {cells}  [{verdict}{'  FALSE ACCUSATION' if wrong else ''}]")

        say("\nper attack (log10 p: keys, rank code concordant/360 and log10 p, -> combined; Holm at alpha over the customers):")
        cp = {c: onnx_predictor((ws.root / r["model_path"]).read_bytes()) for c, r in zip(customers, recs_on)}
        target = customers[0]
        copy_model = load_copy(ws, target, digits.make_model, d.x_val[:8]).model
        row("copy", cp[target], [target])
        for arch, make in (("CNN", digits.make_model), ("MLP", digits.make_model_alt)):
            for t in (1.0, 3.0):
                row(f"soft T={t:g} -> {arch}", torch_predictor(distill(cp[target], make(), xa, epochs=60, temperature=t, seed=0)), [target])
            row(f"hard labels -> {arch}", torch_predictor(train_classifier(make(), xa, cp[target](xa).argmax(1), epochs=60, lr=1e-3,
                                                                          batch_size=32, seed=0)), [target])
        for ep in (5, 20):
            row(f"fine-tune all {ep} ep", torch_predictor(finetune(copy_model, xa, ya, epochs=ep)), [target])
        row("prune 50 %", torch_predictor(magnitude_prune(copy_model, 0.5)[0]), [target])
        two = customers[:2]
        models = [load_copy(ws, c, digits.make_model, d.x_val[:8]).model for c in two]
        row("average of 2 copies", torch_predictor(average_weights(models)), two)
        row("ensemble of 2 copies", ensemble([cp[c] for c in two]), two)
        nulls = [("NULL independent CNN", train_classifier(digits.make_model(), xa, ya, epochs=60, lr=1e-3, batch_size=32, seed=1)),
                 ("NULL independent MLP", train_classifier(digits.make_model_alt(), xa, ya, epochs=60, lr=1e-3, batch_size=32, seed=1)),
                 ("NULL base model", base)]
        for name, m in nulls:
            row(name, torch_predictor(m), [])

        say("\nsimulated null: the rank p-value of 2000 other customer ids' codes read on each null model, P[p <= u]:")
        ids = [f"null-{i}" for i in range(2000)]
        ranks = rankcode.rank_matrix(keyring.master, ids, 10)
        for name, m in nulls:
            logs = rankcode.log_scores(torch_predictor(m)(d.x_val))
            prof, read = rankcode.class_profiles(logs, d.y_val, 10)
            p, _ = rankcode.rank_p_values(rankcode.concordant_pairs(prof, read, ranks), num_classes=10, classes_read=int(read.sum()))
            say(f"  {name:26s} " + "  ".join(f"u={u:g}: {float(np.mean(p <= u)):.4f}" for u in (0.5, 0.1, 0.01, 0.001)))
    save_result(a.out, say.text())


if __name__ == "__main__":
    main()
