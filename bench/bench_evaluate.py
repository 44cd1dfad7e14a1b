"""The full `tracer evaluate` suite on the bundled examples, with the full tables, plus the embedding cost ratio.

For each example: a fresh workspace (base model trained, acme, globex and
initech issued), every attack on acme's copy, and the false-accusation study
with M independent models. The embedding cost ratio (digits) is measured side
by side in the same process: base-model training and one embedding, alternated,
best of ``--repeat`` each.

    python bench/bench_evaluate.py                      # both examples, M = 8, print everything
    python bench/bench_evaluate.py --save               # also write bench/results/evaluate_<example>.txt
    python bench/bench_evaluate.py --example digits --independent 12
    python bench/bench_evaluate.py --example shapes --save   # tens of minutes on 2 cores
    python bench/bench_evaluate.py --cost-only          # just the embedding cost ratio
    python bench/bench_evaluate.py --example digits --before-rank-code --save --suffix _before_rankcode
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch
from _common import BEFORE_RANK_CODE, PASSPHRASE, build_issued_workspace, save_result

from tracer import __version__
from tracer.evaluate import Evaluation, false_accusation_study, run_suite
from tracer.evaluate.tables import false_accusation_table, suite_table
from tracer.workspace import Workspace


def cost_ratio(repeat: int = 2) -> str:
    """Embedding time / base-model training time on digits, same data, same process, alternated."""
    import tomllib

    import numpy as np

    from tracer.config import parse_config
    from tracer.embedding.finetune import embed_codeword
    from tracer.examples import digits, example_config
    from tracer.examples.base import train_base

    cfg = parse_config(tomllib.loads(example_config("digits")), Path("."))
    data = digits.load_data()
    base, _ = train_base("digits")  # warm-up, and the model to embed into
    rng = np.random.default_rng(0)
    triggers = rng.integers(0, 256, (128, 1, 8, 8)).astype(np.float32) / 255.0
    labels = rng.integers(0, 10, 128)
    t_base, t_embed, steps = [], [], cfg.embedding.steps
    for i in range(repeat):
        t0 = time.perf_counter()
        train_base("digits", seed=i + 1)
        t_base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        embed_codeword(base, x_train=data["x_train"], y_train=data["y_train"], triggers=triggers, labels=labels,
                       task=cfg.task, params=cfg.embedding, seed=i)
        t_embed.append(time.perf_counter() - t0)
    return (f"embedding cost (digits): base training {min(t_base):.1f} s (best of {repeat}: {', '.join(f'{t:.1f}' for t in t_base)}), "
            f"embedding {min(t_embed):.1f} s ({', '.join(f'{t:.1f}' for t in t_embed)}), {steps} steps; "
            f"ratio {min(t_embed) / min(t_base):.3f} (best/best)")


def run_example(example: str, tmp: Path, independent: int, attacks: str | None, keys: str = "noise",
                embedding: dict[str, str] | None = None) -> str:
    t0 = time.perf_counter()
    root = tmp / example
    if not (root / "tracer.toml").exists():
        root = build_issued_workspace(root, example, keys=keys, embedding=embedding)
    built = time.perf_counter() - t0
    ws = Workspace(root)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    suite = run_suite(ws, keyring, attacks=attacks, on_attack=lambda n, r: print(f"  {n}: {r.verdict}", file=sys.stderr) if r else None)
    fa = false_accusation_study(ws, keyring, models=independent) if independent else None
    ev = Evaluation(suite, fa)
    out = io.StringIO()
    with redirect_stdout(out):
        print(f"# tracer evaluate, example {example}, key style {ws.config.fingerprint.style}")
        print(f"# tracer {__version__}, torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
              f"{torch.get_num_threads()} torch threads; workspace built in {built:.0f} s, suite {suite.seconds:.0f} s"
              + (f", false-accusation study {fa.seconds:.0f} s" if fa else ""))
        print()
        print(suite_table(suite))
        if fa is not None:
            print()
            print(false_accusation_table(fa))
        print()
        print(ev.verdict())
    return out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--example", choices=("digits", "tabular", "shapes", "both"), default="both",
                    help="both: digits and tabular; shapes (a BatchNorm ResNet, its base trains for minutes) only when asked")
    ap.add_argument("--independent", type=int, default=8, help="independent models for the false-accusation study")
    ap.add_argument("--attacks", default=None, help="comma-separated attacks or groups (default: all)")
    ap.add_argument("--save", action="store_true", help="write bench/results/evaluate_<example>.txt")
    ap.add_argument("--suffix", default="", help="suffix of the saved file name, e.g. _before")
    ap.add_argument("--cost-only", action="store_true", help="only measure the embedding cost ratio")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions of the cost measurement")
    ap.add_argument("--keys", choices=("noise", "natural", "natural-mix/v1", "natural-mix/v2", "natural-mix/v3"), default="noise",
                    help="key style of the workspaces built: noise (uniform-grid/v1) or natural (natural-mix/v2, bench/_common.NATURAL_KEYS), or a natural style by name")
    ap.add_argument("--before-rank-code", action="store_true",
                    help="issue with the [embedding] settings before the rank code (bench/_common.BEFORE_RANK_CODE)")
    ap.add_argument("--embedding", default="", metavar="K=V,...",
                    help="[embedding] settings to issue with, e.g. coded_keys=6,feature_match=0.25,trigger_margin=2.0")
    ap.add_argument("--workspaces", type=Path, default=None,
                    help="folder holding (or to receive) issued workspaces named after the examples; default: a temporary folder")
    args = ap.parse_args()
    if args.cost_only:
        print(cost_ratio(args.repeat))
        return
    examples = ("digits", "tabular") if args.example == "both" else (args.example,)
    embedding = dict(BEFORE_RANK_CODE) if args.before_rank_code else {}
    embedding.update(kv.split("=", 1) for kv in filter(None, args.embedding.split(",")))
    with tempfile.TemporaryDirectory(prefix="tracer-bench-evaluate-") as tmp:
        for ex in examples:
            text = run_example(ex, args.workspaces or Path(tmp), args.independent, args.attacks, args.keys, embedding or None)
            print(text)
            if args.save:
                save_result(f"evaluate_{ex}{args.suffix}.txt", text)


if __name__ == "__main__":
    main()
