"""Research (issue 12): a "dark-knowledge" rank code that a soft-label student inherits.

The keys of today's codeword are inputs a distiller never sends, so a student trained on the copy's answers
to natural inputs never learns them (bench/results/extraction_digits_natural.txt). This script measures a
second channel that lives *on* the natural inputs: for each class y, customer c gets a keyed order pi_c,y of
the 9 wrong classes, and the copy is trained so that on inputs of class y its small wrong-class mass
(eps = 5 % at T=1) falls off along that order (weights exp(-d * rank)). The argmax is untouched, so the clean
gate is not at stake; a student distilled on soft labels copies the order, because the order *is* the
dark knowledge that distillation transfers.

Identification reads it from scores (a file, or an API that returns them): for each class y, the suspect's
mean centred logits over the vendor's validation inputs of class y rank the 9 wrong classes; count the pairs
it orders as pi_c,y does (concordant pairs, ties counted as discordant). Exact null: pi_c,y is a uniform
permutation drawn independently of every model not derived from c, so the concordant count of one class has
the distribution of the inversion count of a uniform permutation of 9 (Mahonian numbers) and the 10 classes
are independent: P[sum >= observed] is a convolution, exact, checked here by simulation.

This is a bench loop of its own (Adam on the clean data with the coded soft targets plus the workspace's
keys with the customer's labels, from the base model), not the product's embedding; ranks come from
numpy's default_rng as a stand-in for the master secret's streams. The read and its exact null are the
product's own (tracer.fingerprint.rankcode, since the rank code shipped as rank-code/v1: see
bench/bench_rankcode.py for the product's embedding and figures); the recorded output is unchanged by that.

    python bench/bench_darkcode.py /tmp/ws/digits [--customers 2] [--steps 2000]
        # a digits workspace (noise keys, v1, or natural-mix); prints the table recorded in
        # bench/results/darkcode_digits.txt
"""

from __future__ import annotations

import argparse
import copy
import functools
from pathlib import Path

import numpy as np
import torch
from _common import PASSPHRASE
from scipy import stats as sps

from tracer.embedding import Issuer
from tracer.embedding.basemodel import load_base_model
from tracer.evaluate.attacks import distill, finetune, magnitude_prune, torch_predictor
from tracer.examples import digits
from tracer.fingerprint import rankcode
from tracer.training import accuracy, predict, train_classifier
from tracer.workspace import Workspace

C = 10
PAIRS = (C - 1) * (C - 2) // 2  # 36 unordered pairs of wrong classes per class; C * PAIRS = 360 in all


def ranks_for(seed: int) -> np.ndarray:
    """[C, C]: rank of wrong class j for inputs of class y (0 = most likely wrong class); diagonal -1 (numpy's stream, research only)."""
    g = np.random.default_rng(seed)
    R = np.full((C, C), -1, np.int16)
    for y in range(C):
        others = [j for j in range(C) if j != y]
        R[y, others] = g.permutation(C - 1)
    return R


def concordant(z: np.ndarray, y: np.ndarray, R: np.ndarray) -> int:
    """Pairs of wrong classes the suspect's mean centred logits order as R does, summed over classes (the product's read)."""
    prof, read = rankcode.class_profiles(np.asarray(z, dtype=np.float64), y, C)
    return int(rankcode.concordant_pairs(prof, read, R[None])[0])


def p_value(conc: int) -> float:
    """The exact Mahonian tail over all C classes (tracer.fingerprint.stats.rank_code_tails)."""
    return float(rankcode.rank_p_values(np.array([conc]), num_classes=C, classes_read=C)[0][0])


def simulated_null(n: int = 20000, seed: int = 7) -> list[tuple[float, float]]:
    """P[p <= u] for a fixed suspect and uniform customer orders: must be <= u."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((C * 5, C))
    y = np.repeat(np.arange(C), 5)
    ps = np.array([p_value(concordant(z, y, ranks_for(int(s)))) for s in g.integers(0, 2**63, n)])
    return [(u, float((ps <= u).mean())) for u in (0.5, 0.1, 0.01, 0.001)]


def embed(base: torch.nn.Module, xt, yt, keys, key_labels, R, *, eps: float, decay: float, steps: int) -> torch.nn.Module:
    """From the base: coded soft targets on the clean data, and the customer's key labels (both eps-smoothed)."""
    m = copy.deepcopy(base).train()
    w = np.exp(-decay * np.maximum(R[yt], 0).astype(float))
    w[np.arange(len(xt)), yt] = 0
    w /= w.sum(1, keepdims=True)
    tgt = torch.tensor(((1 - eps) * np.eye(C)[yt] + eps * w).astype(np.float32))
    kq = np.full((len(keys), C), eps / (C - 1))
    kq[np.arange(len(keys)), key_labels] = 1 - eps
    kq = torch.tensor(kq.astype(np.float32))
    X, KX = torch.tensor(xt), torch.tensor(keys)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(X), (64,), generator=g)
        k = torch.randint(0, len(KX), (64,), generator=g)
        loss = -(tgt[i] * torch.log_softmax(m(X[i]), 1)).sum(1).mean() - (kq[k] * torch.log_softmax(m(KX[k]), 1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def key_figure(model, keys, S, labels) -> str:
    """The workspace codeword's agreement: noise keys score any class (chance 1/C), natural-mix keys answers inside S_i (1/2)."""
    pk = predict(model, keys)
    if S is None:
        m, n, p0 = int((pk == labels).sum()), len(pk), 1 / C
    else:
        ins = (pk[:, None] == S).any(1)
        m, n, p0 = int((pk[ins] == labels[ins]).sum()), int(ins.sum()), 0.5
    return f"keys {m:4d}/{n:<4d} p {sps.binom.sf(m - 1, n, p0):8.2g}"


def row(name, model, *, xv, yv, keys, S, labels, R, R_other) -> None:
    z = torch_predictor(model)(xv)
    c1, c2 = concordant(z, yv, R), concordant(z, yv, R_other)
    print(f"  {name:25s} clean {accuracy(predict(model, xv), yv):.4f}  {key_figure(model, keys, S, labels)}  "
          f"rank {c1:3d}/{C * PAIRS} p {p_value(c1):8.2g}   other {c2:3d}/{C * PAIRS} p {p_value(c2):6.2g}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--customers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--decay", type=float, default=0.5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    ws = Workspace(a.workspace)
    iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
    pool = iss.probe_sets[0]
    S = getattr(pool, "label_sets", None)
    keys = iss.triggers
    d = iss.data
    xt, yt, xa, ya, xv, yv = d.x_train, d.y_train, d.x_attack, d.y_attack, d.x_val, d.y_val
    base = load_base_model(ws.config).eval()

    print(f"workspace {a.workspace} ({'noise keys' if S is None else 'natural-mix keys'}, {len(keys)} keys); "
          f"eps {a.eps}, decay {a.decay}/rank, {a.steps} steps x (64 clean + 64 keys); base val acc "
          f"{accuracy(predict(base, xv), yv):.4f}; {len(xa)} leaker inputs, {len(xv)} validation inputs read")
    print(f"rank code: {C} classes x {PAIRS} pairs = {C * PAIRS}; chance {C * PAIRS // 2}; p exact (Mahonian convolution)")
    print("simulated null (20000 uniform orders vs one fixed suspect), P[p <= u]:",
          ", ".join(f"u={u:g}: {f:.4f}" for u, f in simulated_null()))
    for cust, seed, other in (("acme", 1, 2), ("globex", 2, 3), ("initech", 3, 1))[: a.customers]:
        labels, R, R_other = iss.labels_for(cust), ranks_for(seed), ranks_for(other)
        print(f"\n{cust} (its rank code; 'other' = another customer's code read on the same model: a null)")

        show = functools.partial(row, xv=xv, yv=yv, keys=keys, S=S, labels=labels, R=R, R_other=R_other)
        coded = embed(base, xt, yt, keys, labels, R, eps=a.eps, decay=a.decay, steps=a.steps)
        show("copy (rank code + keys)", coded)
        teacher = torch_predictor(coded)
        for arch, make in (("same CNN", digits.make_model), ("MLP", digits.make_model_alt)):
            for T in (1.0, 3.0):
                show(f"soft T={T:g}, {arch}", distill(teacher, make(), xa, epochs=60, temperature=T, seed=0))
            show(f"hard labels, {arch}", train_classifier(make(), xa, predict(coded, xa), epochs=60, lr=1e-3, batch_size=32, seed=0))
            show(f"NULL independent {arch}", train_classifier(make(), xa, ya, epochs=60, lr=1e-3, batch_size=32, seed=0))
        show("fine-tune all, 5 ep", finetune(coded, xa, ya, epochs=5))
        show("fine-tune all, 20 ep", finetune(coded, xa, ya, epochs=20))
        show("prune 50 %", magnitude_prune(coded, 0.5)[0])
        show("NULL: the base model", base)


if __name__ == "__main__":
    main()
