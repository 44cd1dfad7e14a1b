"""Research bench for issue 12: do tabular natural-mix keys look *too typical* to a leaker's detectors, and what fixes it.

natural-mix/v1 tabular keys are the plain mixture ``(1 - w) a + w b`` of two alike vendor inputs of different
classes. A mixture sits between its sources, nearer the data's centre and inside its principal subspace, so
a leaker's kNN distance and autoencoder error score keys *lower* than real queries (wine quickstart: AUC
0.22-0.38, two-sided 0.62-0.78, evasion_wine_quickstart_probe64.txt). A leaker flagging the low tail
separates them as well as one flagging the high tail.

Candidates, each built from the same keyed ``a``, ``b`` and ``w`` (tracer.fingerprint.pool's own streams):

* ``mix``: v1, the plain mixture;
* ``v2``: natural-mix/v2 as tracer builds it (``pool2``: the crossover below, from the pool's own streams);
* ``cross``: a keyed coordinate crossover, feature j taken from ``b`` with probability ``w`` and from ``a``
  otherwise: every value is one a real input has, and per feature the key keeps the spread
  ``w (1 - w) (b_j - a_j)^2`` around the mixture that the plain mixture loses;
* ``cross-half``: the same with ``w`` = 1/2 (the most spread a crossover can have);
* ``cross-far``: the crossover with the partner any keyed input of another class (not one of ``a``'s nearest);
* ``real``: the floor, the keys' first sources themselves (real vendor inputs: what a perfect key would score);
* ``xoverL@N``: tabular, v3's crossover (pool3's streams) at weights in [L, L + 0.2] with the partner one of the N nearest;
* ``v3``: natural-mix/v3 as tracer builds it (``pool3``; images: v1's rank matching in the order of the
  mixture's deviation from the mean input, scaled by ``s**-0.75``, weights in [0.25, 0.45]); ``spreadG@L``: that
  construction at exponent G and weights in [L, L + 0.2] (``spread0.75@0.25`` is v3, ``spread0@0.3`` v2);
* images, ``cut`` / ``blocks``: composites of real regions (a keyed straight cut, keyed 2x2 blocks); ``sharpL``:
  v1's rank matching in the rank order of the mixture unsharp-masked with weight L (3x3 box blur), which
  restores the texture an autoencoder misses in a mixture.

For each, on the README quickstart's data (wine, its attacker share and validation inputs, as `tracer
evaluate` takes them): the AUC of keys against the validation inputs for the four evasion detectors
(Mahalanobis on the base model's features; the copy's differ, measured by `tracer evaluate`), over
several master keys, and how often the base model answers a class of the key's label set.

    python bench/bench_keystyle.py [--masters 5] [--size 128] [--out keystyle_wine.txt]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import FAST_SCRYPT, PASSPHRASE, save_result
from bench_pool_size import _config, _readme_quickstart

from tracer.data import load_dataset
from tracer.embedding.basemodel import load_base_model
from tracer.evaluate.detectors import auc, make_detector
from tracer.evaluate.models import attacker_data
from tracer.fingerprint import pool as poolmod
from tracer.keys.derive import hkdf_key, uniform_ints
from tracer.workspace import init_workspace


def _keys(master: bytes, task, x: np.ndarray, y: np.ndarray, size: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """``size`` keys of ``variant`` and their label sets, from the v1 pool's own sources."""
    v1 = poolmod.build_pool(master, task, x, y, size=size, dataset_fingerprint="bench")
    if variant == "mix":
        return v1.inputs, v1.label_sets
    if variant == "v2":  # what tracer builds for natural-mix/v2 (pool2: the crossover, from its own streams)
        v2 = poolmod.build_pool(master, task, x, y, size=size, dataset_fingerprint="bench", pool_id="pool2")
        return v2.inputs, v2.label_sets
    if variant == "v3":  # what tracer builds for natural-mix/v3 (pool3: images with the spread restored, from its own streams)
        v3 = poolmod.build_pool(master, task, x, y, size=size, dataset_fingerprint="bench", pool_id="pool3")
        return v3.inputs, v3.label_sets
    if variant.startswith("spread"):  # v3's construction at another exponent G and weight range [L, L + 0.2]: spreadG@L
        return _spread(master, task, x, y, size, variant)
    if variant.startswith("xover"):  # tabular: v3's crossover at weights in [L, L + 0.2], the partner one of the N nearest: xoverL@N
        return _xover(master, task, x, y, size, variant)
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    a, b, sets = flat[v1.sources[:, 0]], flat[v1.sources[:, 1]], v1.label_sets
    if variant == "real":  # the floor: the first sources themselves, real vendor inputs
        return a.reshape(v1.inputs.shape).astype(v1.inputs.dtype), v1.label_sets
    if variant == "cross-far":  # the partner any keyed input of another class, not one of a's nearest
        yy = np.asarray(y)
        pick = uniform_ints(hkdf_key(master, "key-pool/bench"), "far", size, 2**32)
        second = np.array([np.flatnonzero(yy != yy[i])[p % int((yy != yy[i]).sum())] for i, p in zip(v1.sources[:, 0], pick)])
        b, sets = flat[second], np.stack([yy[v1.sources[:, 0]], yy[second]], axis=1)
    if variant.startswith("sharp"):  # images: v1's rank matching, in the rank order of an unsharp-masked mixture
        lam = float(variant[5:] or 1)
        c, h, wd = task.input_shape
        mixed = ((1 - v1.weights)[:, None] * a + v1.weights[:, None] * b).reshape(len(a), c, h, wd)
        pad = np.pad(mixed, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        blur = sum(pad[:, :, i:i + h, j:j + wd] for i in range(3) for j in range(3)) / 9
        order_of = (mixed + lam * (mixed - blur)).reshape(len(a), -1)
        tie = uniform_ints(hkdf_key(master, "key-pool/bench"), "ties", order_of.size, 2**32).reshape(order_of.shape)
        keys = poolmod._rank_matched(order_of, a, b, v1.weights, tie, poolmod._snap_values(x))
        return keys.reshape(v1.inputs.shape).astype(v1.inputs.dtype), sets
    if variant in ("cut", "blocks"):  # images: composites of real regions (every pixel one of a's or b's, in place)
        return _composite(master, a, b, v1.weights, task, variant).reshape(v1.inputs.shape).astype(v1.inputs.dtype), sets
    w = np.full(size, 0.5) if variant == "cross-half" else v1.weights
    u = uniform_ints(hkdf_key(master, "key-pool/bench"), "cross", size * flat.shape[1], 2**32).reshape(size, -1) / 2**32
    keys = np.where(u < w[:, None], b, a)
    return keys.reshape(v1.inputs.shape).astype(v1.inputs.dtype), sets


def _xover(master: bytes, task, x: np.ndarray, y: np.ndarray, size: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """v3's tabular construction (pool3's streams) with the crossover weight in [L, L + 0.2] and the partner among the N nearest."""
    low_s, _, near_s = variant[5:].partition("@")
    low, near = float(low_s), int(near_s or poolmod.NEAR)
    key = hkdf_key(master, "key-pool/pool3")
    yy = np.asarray(y, dtype=np.int64)
    first = uniform_ints(key, "source/a", size, len(yy))
    second = poolmod._near_partners(key, first, yy, poolmod._grid_ints(x, task), near=near)
    w = low + 0.2 * (uniform_ints(key, "weight", size, 65536).astype(np.float64) / 65535.0)
    flat = np.asarray(x, dtype=np.float64).reshape(len(yy), -1)
    keys = poolmod._crossover(key, flat[first], flat[second], w)
    return keys.reshape((size, *task.input_shape)).astype(task.input_dtype), np.stack([yy[first], yy[second]], axis=1)


def spread_order(exponent: float):
    """v3's rank order (:func:`tracer.fingerprint.pool._spread_order`) at any exponent (``pow``: research only)."""
    def order(mixed: np.ndarray, w: np.ndarray, centre: np.ndarray) -> np.ndarray:
        return centre[None, :] + (mixed - centre[None, :]) / (np.sqrt((1 - w) ** 2 + w**2) ** exponent)[:, None]
    return order


def _spread(master: bytes, task, x: np.ndarray, y: np.ndarray, size: int, variant: str) -> tuple[np.ndarray, np.ndarray]:
    """``spreadG@L``: v3 image keys (pool3's sources and streams) with exponent G and weights in [L, L + 0.2] (v3: spread0.75@0.25)."""
    g, _, low = variant[6:].partition("@")
    p = poolmod.build_pool(master, task, x, y, size=size, dataset_fingerprint="bench", pool_id="pool3")
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    a, b = flat[p.sources[:, 0]], flat[p.sources[:, 1]]
    w = float(low or poolmod.IMAGE_MIX_LOW) + (p.weights - poolmod.IMAGE_MIX_LOW)  # the same keyed draws, shifted
    centre = poolmod._grid_mean(poolmod._grid_ints(x, task), task)
    mixed = (1 - w)[:, None] * a + w[:, None] * b
    order = spread_order(float(g or 1))(mixed, w, centre)
    tie = uniform_ints(hkdf_key(master, "key-pool/pool3"), "rank-ties", size * flat.shape[1], 2**32).reshape(size, -1)
    keys = poolmod._rank_matched(order, a, b, w, tie, poolmod._snap_values(x))
    return keys.reshape(p.inputs.shape).astype(p.inputs.dtype), p.label_sets


def _composite(master: bytes, a: np.ndarray, b: np.ndarray, w: np.ndarray, task, variant: str) -> np.ndarray:
    """``cut``: a keyed straight cut, the share ``w`` of rows or columns (keyed axis and side) from ``b``;
    ``blocks``: each 2x2 block from ``b`` with probability ``w``."""
    c, h, wd = task.input_shape
    a4, b4 = a.reshape(len(a), c, h, wd), b.reshape(len(b), c, h, wd)
    key = hkdf_key(master, "key-pool/bench")
    mask = np.zeros((len(a), 1, h, wd), dtype=bool)
    if variant == "cut":
        axis, side = uniform_ints(key, "cut-axis", len(a), 2), uniform_ints(key, "cut-side", len(a), 2)
        for i in range(len(a)):
            n = h if axis[i] == 0 else wd
            m = max(1, int(round(w[i] * n)))
            sl = slice(0, m) if side[i] == 0 else slice(n - m, n)
            if axis[i] == 0:
                mask[i, :, sl, :] = True
            else:
                mask[i, :, :, sl] = True
    else:
        bh, bw = (h + 1) // 2, (wd + 1) // 2
        u = uniform_ints(key, "blocks", len(a) * bh * bw, 2**32).reshape(len(a), 1, bh, bw) / 2**32
        mask = np.repeat(np.repeat(u < w[:, None, None, None], 2, axis=2), 2, axis=3)[:, :, :h, :wd]
    return np.where(mask, b4, a4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--masters", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--variants", default="real,mix,v2,cross,cross-half,cross-far")
    ap.add_argument("--example", choices=("wine", "digits"), default="wine",
                    help="wine: the README quickstart; digits: the bundled example (image variants: real,mix,v2,cut,blocks,cross)")
    ap.add_argument("--natural", choices=("val", "train"), default="val",
                    help="the natural side: the validation inputs (what `tracer evaluate` uses) or the vendor's training inputs, "
                         "the population the keys are built from (wine: 95 rows against 36; the base model has seen them)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        if args.example == "digits":
            from tracer.examples import example_config, prepare_example

            ws = init_workspace(root, passphrase=PASSPHRASE, scrypt=FAST_SCRYPT, config_text=example_config("digits"))
            prepare_example(ws, "digits", progress=False)
        else:
            code, tables = _readme_quickstart()
            ws = init_workspace(root, passphrase=PASSPHRASE, scrypt=FAST_SCRYPT, config_text=_config(tables, "natural-mix/v1", args.size), starter=True)
            (root / "mymodel.py").write_text(code, encoding="utf-8")
            subprocess.run([sys.executable, "mymodel.py"], cwd=root, capture_output=True, check=True)
        cfg = ws.config
        data = load_dataset(cfg)
        x_att, y_att, _ = attacker_data(data)
        base = load_base_model(cfg).eval()
        detectors = {name: make_detector(name, task=cfg.task, model=base, seed=0).fit(x_att, y_att)
                     for name in ("knn", "stats", "mahalanobis", "autoencoder")}
        natural_x = data.x_val if args.natural == "val" else data.x_train
        natural = {name: d.score(natural_x) for name, d in detectors.items()}
        rows: list[str] = []
        head = (f"{'variant':<16} {'master':>6}  " + "  ".join(f"{n:>11}" for n in detectors) + "  base in S  base=a")
        rows.append(head)
        summary: dict[str, list[list[float]]] = {}
        for variant in args.variants.split(","):
            for m in range(args.masters):
                master = bytes([m + 1]) * 32
                keys, sets = _keys(master, cfg.task, data.x_train, data.y_train, args.size, variant)
                aucs = [auc(d.score(keys), natural[n]) for n, d in detectors.items()]
                with torch.no_grad():
                    ans = base(torch.as_tensor(keys, dtype=torch.float32)).argmax(1).numpy()
                in_s = float(np.mean((ans[:, None] == sets).any(1)))
                is_a = float(np.mean(ans == sets[:, 0]))
                summary.setdefault(variant, []).append(aucs)
                rows.append(f"{variant:<16} {m:>6}  " + "  ".join(f"{a:>11.3f}" for a in aucs) + f"  {in_s:>9.3f}  {is_a:>6.3f}")
        rows.append("")
        rows.append("two-sided max(AUC, 1 - AUC), mean (worst) over master keys:")
        rows.append(f"{'variant':<16}         " + "  ".join(f"{n:>11}" for n in detectors))
        for variant, vals in summary.items():
            arr = np.array(vals)
            two = np.maximum(arr, 1 - arr)
            rows.append(f"{variant:<16}         " + "  ".join(f"{two[:, j].mean():>5.3f} ({two[:, j].max():.3f})" for j in range(arr.shape[1])))
        header = (f"# bench_keystyle.py: {'README quickstart (wine)' if args.example == 'wine' else 'digits example'}, {len(data.y_train)} vendor training rows, {len(y_att)} attacker rows, "
                  + (f"{len(data.y_val)} validation rows (the natural side)" if args.natural == "val" else f"{len(data.y_val)} validation rows, the natural side the {len(data.y_train)} training rows")
                  + f", pool {args.size}, {args.masters} master keys;\n"
                  "# AUC keys vs natural (keys positive; below 0.5 = keys look more typical). Mahalanobis on the base model's features.")
        text = header + "\n" + "\n".join(rows) + "\n"
        print(text)
        if args.out:
            save_result(args.out, text)


if __name__ == "__main__":
    main()
