"""Why the rank code makes natural-mix keys stand out to a Mahalanobis filter, and what the key targets change (issue 12).

On the digits example's natural-mix variant (the 4x CNN, 2048 keys, rank_code 0.2), a leaker's
Mahalanobis detector on the copy's own penultimate features separates keys from natural inputs with
AUC 0.89 (bench/results/evaluate_digits_natural_wide.txt), against 0.54 for natural-mix copies without
the code. The code holds every natural input to one coded answer of its class, (1 - eps) on it and eps
spread in the customer's order, so the class clusters in the copy's logits tighten; keys, trained to
their label by cross-entropy and a margin, answer unlike any natural input. This bench measures, per
single try through the issuer's own fine-tune (``Issuer._run``, acme, one try per seed of ``--seeds``), the copy's median top
probability on keys and on natural inputs, the Mahalanobis AUC (fitted on the leaker's 479 inputs, on
the copy), and the gates' figures, for: no rank code; the code with the product's key targets (label);
the code with "coded" key targets, the coded answer of the key's label class, at a weight w
(``--weights``) and margin 2; and the code with the product's ``[embedding] feature_match`` at the
weights ``--match-weights`` (keys' features held inside the copy's own class clusters); ``--combos``
runs coded targets and the feature match together. The coded
targets are the product's ``[embedding] coded_keys`` (the digits variant's recipe since
evaluate_digits_natural_coded.txt: coded x6 with feature_match 0.25).

    python bench/bench_rankcode_features.py --workspace WS [--weights 1,6,12,24] [--match-weights 0.25,0.5,1] [--combos 6:0.25] [--seeds 2]
                                            [--out rankcode_features_digits.txt]

WS: an issued natural-mix digits workspace of the wide variant (bench_evaluate.py --keys natural --workspaces DIR).
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import PASSPHRASE, Said, rank_log10_p, save_result

from tracer.embedding import Issuer
from tracer.evaluate.attacks import distill, torch_predictor
from tracer.evaluate.detectors import MahalanobisDetector, auc
from tracer.examples import digits
from tracer.fingerprint import rankcode
from tracer.training import accuracy, predict
from tracer.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--weights", default="1,6,12,24")
    ap.add_argument("--match-weights", default="")
    ap.add_argument("--combos", default="", help="coded-target weight:feature_match weight pairs, both at once (e.g. 6:0.25,12:0.25)")
    ap.add_argument("--seeds", default="2", help="comma-separated seeds of the tries (the customer is acme)")
    ap.add_argument("--out", default="rankcode_features_digits.txt")
    a = ap.parse_args()
    torch.set_num_threads(2)
    ws = Workspace(a.workspace)
    iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    d, cfg, cid = iss.data, iss.config, "acme"
    emb = cfg.embedding
    labels, mass = iss.labels_for(cid), iss.rank_mass_for(cid)
    ranks = rankcode.rank_matrix(iss.keyring.master, [cid], cfg.task.num_classes)
    say = Said()

    def read(pred) -> float:
        return rank_log10_p(pred(d.x_val), d.y_val, ranks, cfg.task.num_classes)

    say(f"digits natural-mix variant ({sum(p.numel() for p in iss.base.parameters())} parameters), pool {len(iss.triggers)} keys, "
        f"rank_code {emb.rank_code}, steps {emb.steps}; {cid}, final weights of one try per seed")
    say("variant                                  seed  top prob keys / natural   Mahalanobis AUC   clean drop   keys    rank log10 p copy / soft T=1 MLP   CPU-s")
    eps0 = emb.rank_code or 0.2
    # (name, rank code eps, margin, [embedding] coded_keys, feature_match)
    variants: list[tuple[str, float, float, float, float]] = [("no rank code", 0.0, emb.trigger_margin, 0.0, 0.0),
                                                              ("rank code, label targets", eps0, emb.trigger_margin, 0.0, 0.0)]
    variants += [(f"rank code, coded targets x{w:g}, margin 2", eps0, 2.0, w, 0.0) for w in map(float, filter(None, a.weights.split(",")))]
    variants += [(f"rank code, feature_match {w:g}", eps0, emb.trigger_margin, 0.0, w) for w in map(float, filter(None, a.match_weights.split(",")))]
    for combo in filter(None, a.combos.split(",")):
        w, m = map(float, combo.split(":"))
        variants.append((f"coded x{w:g}, margin 2, feature_match {m:g}", eps0, 2.0, w, m))
    for (name, eps, margin, coded, match), seed in itertools.product(variants, map(int, a.seeds.split(","))):
        iss.config = replace(cfg, embedding=replace(emb, rank_code=eps, trigger_margin=margin, coded_keys=coded, feature_match=match))
        t0 = time.process_time()
        model = iss._run(labels, {"seed": seed, "steps": emb.steps, "learning_rate": emb.learning_rate}, start=None, on_step=None,
                         rank_mass=mass if eps > 0 else None).model.eval()
        cpu = time.process_time() - t0
        pred = lambda x, m=model: m(torch.as_tensor(x)).detach().numpy()  # noqa: E731

        def top(x, pred=pred) -> float:
            return float(np.median(torch.softmax(torch.as_tensor(pred(x)), 1).max(1).values.numpy()))

        det = MahalanobisDetector(model).fit(d.x_attack, d.y_attack)
        student = torch_predictor(distill(pred, digits.make_model_alt(), d.x_attack, epochs=60, temperature=1.0, seed=0))
        drop = 100 * (iss.base_accuracy - accuracy(predict(model, d.x_val), d.y_val))
        say(f"{name:40s} {seed:4d}  {top(iss.triggers):.3f} / {top(d.x_val):.3f}              {auc(det.score(iss.triggers), det.score(d.x_val)):.3f}"
            f"           {drop:+.2f}      {accuracy(predict(model, iss.triggers), labels):.3f}   {read(pred):6.1f} / {read(student):6.1f}"
            f"                  {cpu:.0f}")
    save_result(a.out, say.text())


if __name__ == "__main__":
    main()
