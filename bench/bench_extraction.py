"""Extraction of issued natural-mix digits copies: soft labels (T=1, T=3) and hard labels, into the same CNN and an MLP.

Each student trains 60 epochs on the copy's answers to the leaker's share (x_attack, 479 inputs); the
null row is the same architecture trained on the true labels of that share. Agreement counts the
student's answers inside each key's label set that match the customer's label (the statistic of
tracer.fingerprint.stats: Binomial(n_in, 1/2) under H0), p is its exact one-sided tail.

    python bench/bench_extraction.py /tmp/ws/digits      # an issued natural-mix digits workspace (acme, globex)

The same CNN is the workspace's own architecture (model.factory: the 4x CNN in the example's natural-mix
variant). Where copies carry the rank code, each row also gives its exact log10 p read from the student's
scores on the validation inputs (the channel `tracer identify` adds with Bonferroni).
"""

import sys
from pathlib import Path

import torch
from _common import PASSPHRASE, rank_log10_p
from scipy import stats as sps

from tracer.embedding import Issuer
from tracer.evaluate.attacks import distill, torch_predictor
from tracer.evaluate.models import factories, load_copy
from tracer.examples import digits
from tracer.fingerprint import rankcode
from tracer.training import accuracy, predict, train_classifier
from tracer.workspace import Workspace

ws = Workspace(Path(sys.argv[1]))
iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
S, keys = iss.probe_sets[0].label_sets, iss.triggers
xa, ya, xv, yv = iss.data.x_attack, iss.data.y_attack, iss.data.x_val, iss.data.y_val
make_model = factories(ws.config)[0]
RANKS: dict = {}  # the customer's rank code where copies carry one


def rank_read(model) -> str:
    if not RANKS:
        return ""
    return f"  rank log10 p {rank_log10_p(torch_predictor(model)(xv), yv, RANKS['code'], 10):.1f}"


def row(name, model, labels):
    pk = predict(model, keys)
    ins = (pk[:, None] == S).any(1)
    m, n = int((pk[ins] == labels[ins]).sum()), int(ins.sum())
    print(f"  {name:34s} clean {accuracy(predict(model, xv), yv):.4f}  agreement {m}/{n} ({m/n:.3f})  p {sps.binom.sf(m - 1, n, 0.5):.2g}{rank_read(model)}", flush=True)
for cust in ("acme", "globex"):
    labels = iss.labels_for(cust)
    if iss.rank_coded:
        RANKS["code"] = rankcode.rank_matrix(iss.keyring.master, [cust], 10)
    cp = load_copy(ws, cust, make_model, xv[:8]).model
    print(f"{cust}:", flush=True)
    row("copy", cp, labels)
    teacher = torch_predictor(cp)
    for arch, mk in (("same CNN", make_model), ("MLP", digits.make_model_alt)):
        for T in (1.0, 3.0):
            torch.manual_seed(0)
            row(f"soft T={T:g}, {arch}", distill(teacher, mk(), xa, epochs=60, temperature=T, seed=0), labels)
        torch.manual_seed(0)
        hard = predict(cp, xa)  # what a label-only API answers
        row(f"hard labels, {arch}", train_classifier(mk(), xa, hard, epochs=60, lr=1e-3, batch_size=32, seed=0), labels)
        torch.manual_seed(0)
        row(f"NULL: independent {arch}", train_classifier(mk(), xa, ya, epochs=60, lr=1e-3, batch_size=32, seed=0), labels)
