"""Simulated null of the key statistics (issue 12, "An exact null, kept"): P[p <= u] against u.

Key i carries a label set S_i of k_i classes (drawn from C = 10, fixed before any customer); each simulated
customer's label on key i is uniform on S_i, fresh for every simulation. The endpoint is a model NOT derived
from the customer: its answers are independent of the labels by construction.

Endpoints: ``random`` (uniform over the C classes), ``in_set`` (always the first label of S_i: the strongest
null, matching with probability exactly 1/k_i), ``model`` (an independent model's own preference among the
first two labels of S_i), ``outside`` (always a class outside S_i: never matches).

Statistics: ``fixed`` the exact Poisson-binomial tail P[X >= matches] (tracer.fingerprint.stats); ``seq``
the anytime p-value of the e-process min(1, 1 / max_t E_t) (tracer.probing.sequential), i.e. the probe
stopping at the first moment p <= u. Rows ``naive-1/C`` score the same in_set matches as if every key had
p0 = 1/C (the noise-probe statistic): what ignoring the per-key label sets would do. Rows ``trap``: keys
kept from a pool by looking at the customer's label ("where it survives best") vs by a label-agnostic score.

    python bench/bench_null.py                   # 20,000 simulations per row, 128 keys; writes bench/results/null_keys.txt
    python bench/bench_null.py --sims 2000 --out -
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tracer.fingerprint.stats import binomial_tails, poisson_binomial_log10_tails, poisson_binomial_tails  # noqa: E402
from tracer.probing.sequential import EProcess  # noqa: E402

C = 10
U = (0.001, 0.01, 0.05, 0.1, 0.2, 0.5)
SETTINGS = {"k=2": (2,), "k=3": (3,), "k in {2,3,5}": (2, 3, 5)}
ENDPOINTS = ("random", "in_set", "model", "outside")


def label_sets(rng: np.random.Generator, ks: np.ndarray) -> list[np.ndarray]:
    return [rng.choice(C, int(k), replace=False) for k in ks]


def labels(rng: np.random.Generator, sets: list[np.ndarray], sims: int) -> np.ndarray:
    return np.stack([s[rng.integers(0, s.size, sims)] for s in sets], axis=1)


def answers(kind: str, rng: np.random.Generator, sets: list[np.ndarray], sims: int) -> np.ndarray:
    n = len(sets)
    if kind == "random":
        return rng.integers(0, C, (sims, n))
    if kind == "in_set":
        return np.broadcast_to([int(s[0]) for s in sets], (sims, n))
    if kind == "outside":
        return np.broadcast_to([int(np.setdiff1d(np.arange(C), s)[0]) for s in sets], (sims, n))
    first, second = np.array([int(s[0]) for s in sets]), np.array([int(s[1]) for s in sets])
    return np.where(rng.random((sims, n)) < 0.7, first, second)


def sequential_p(matched: np.ndarray, ks: np.ndarray, *, per_key: bool = True) -> np.ndarray:
    """Anytime p-values of the e-process, one customer per simulation (the key schedule is shared)."""
    e = EProcess(C, matched.shape[0], alpha=0.01)
    for t in range(matched.shape[1]):
        e.update(matched[:, t], k=int(ks[t]) if per_key else None)
    return e.p_values()


def row(name: str, p: np.ndarray) -> str:
    return f"{name:<38}" + "".join(f"{np.mean(p <= u):>9.4f}" for u in U)


def calibration(sims: int, keys: int, seed: int) -> list[str]:
    sd = "".join(f"{3 * math.sqrt(u * (1 - u) / sims):>9.4f}" for u in U)
    lines = [f"## simulated null: P[p <= u], {sims} simulations per row, {keys} keys, C = {C}",
             f"{'setting / endpoint / statistic':<38}" + "".join(f"{'u=' + format(u, 'g'):>9}" for u in U),
             f"{'(3 sd of the Monte Carlo error)':<38}{sd}"]
    rng = np.random.default_rng(seed)
    for setting, sizes in SETTINGS.items():
        ks = rng.choice(sizes, keys)
        sets = label_sets(rng, ks)
        tails = poisson_binomial_tails(ks)
        for kind in ENDPOINTS:
            matched = labels(rng, sets, sims) == answers(kind, rng, sets, sims)
            lines.append(row(f"{setting} {kind} fixed", tails[matched.sum(axis=1)]))
            lines.append(row(f"{setting} {kind} seq", sequential_p(matched, ks)))
            if kind == "in_set" and len(sizes) > 1:
                lines.append(row(f"{setting} {kind} naive-1/C fixed", binomial_tails(keys, C)[matched.sum(axis=1)]))
                lines.append(row(f"{setting} {kind} naive-1/C seq", sequential_p(matched, ks, per_key=False)))
    return lines


def trap(sims: int, seed: int, pool: int = 400, keep: int = 100) -> list[str]:
    """Keys kept from a pool of k = 3 keys by the customer's label's survival vs by a label-agnostic score."""
    rng = np.random.default_rng(seed + 1)
    probs = rng.dirichlet([8.0, 8.0, 8.0], (sims, pool))  # how models trained on the task answer each label of S_i
    label = rng.integers(0, 3, (sims, pool))
    scores = {"trap label-aware (own label best)": np.take_along_axis(probs, label[..., None], axis=2)[..., 0],
              "trap label-agnostic (min over S_i)": probs.min(axis=2)}
    tails = binomial_tails(keep, 3)
    lines = [f"## the trap: {keep} of {pool} candidate keys (k = 3) kept per customer, {sims} customers; an independent",
             "## model answers by the task's class probabilities. Columns as above; match rate at the end (null: 1/3).",
             f"{'(3 sd of the Monte Carlo error)':<38}" + "".join(f"{3 * math.sqrt(u * (1 - u) / sims):>9.4f}" for u in U)]
    for name, score in scores.items():
        kept = np.argsort(-score, axis=1, kind="stable")[:, :keep]
        p = np.take_along_axis(probs, kept[..., None], axis=1)
        drawn = np.minimum((rng.random(p.shape[:2])[..., None] > np.cumsum(p, axis=-1)).sum(axis=-1), 2)
        matched = drawn == np.take_along_axis(label, kept, axis=1)
        lines.append(row(name, tails[matched.sum(axis=1)]) + f"   rate {matched.mean():.4f}")
    return lines


def timing() -> list[str]:
    lines = ["## poisson_binomial_log10_tails(ks), 4096 keys: wall seconds (best of 3; exact = integer path)"]
    for name, ks in (("k = 3 (one size: exact)", [3] * 4096), ("k in {2,3}, 2048 each", [2, 3] * 2048),
                     ("k in {2,3,5}, ~1365 each", list(np.repeat([2, 3, 5], [1365, 1365, 1366]))),
                     ("k in {2,3}, 600 keys (exact)", [2, 3] * 300)):
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            logs = poisson_binomial_log10_tails(np.array(ks))
            best = min(best, time.perf_counter() - t0)
        lines.append(f"{name:<38}{best:>9.3f} s   log10 P[all {len(ks)} match] = {logs[-2]:.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=20000)
    ap.add_argument("--keys", type=int, default=128)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "null_keys.txt"), help="'-' for stdout only")
    args = ap.parse_args()
    lines = [f"# python bench/bench_null.py --sims {args.sims} --keys {args.keys} --seed {args.seed}"]
    lines += calibration(args.sims, args.keys, args.seed) + [""] + trap(min(args.sims, 4000), args.seed) + [""] + timing()
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out != "-":
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
