"""Cost of one embedding fine-tune step (one batch: clean + anchors + triggers, forward and backward) at 1 and 2 torch threads.

    python bench/bench_threads.py [shapes] [digits] [--steps N]

Per example: an untrained model of the example's architecture (the cost of a step does not
depend on the weights), the example's [embedding] settings, N steps (default 20) timed after a
short warm-up run, alternately at 1 and 2 threads, three rounds; the fastest per-step time of
each thread count is printed with the ratio (on an idle 2-core machine the ideal is 0.5).
"""

from __future__ import annotations

import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tracer.config import parse_config
from tracer.embedding.finetune import embed_codeword, use_threads
from tracer.examples import example_config


def _per_step(example: str, threads: int, steps: int) -> float:
    import importlib

    mod = importlib.import_module(f"tracer.examples.{example}")
    cfg = parse_config(tomllib.loads(example_config(example)), Path.cwd())
    task, emb = cfg.task, replace(cfg.embedding, device="cpu")
    use_threads(threads)
    torch.manual_seed(0)
    model = mod.make_model()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (512, *task.input_shape)).astype(np.float32)
    y = rng.integers(0, task.num_classes, 512)
    trig, lab = x[:64], rng.integers(0, task.num_classes, 64)
    kw = dict(x_train=x, y_train=y, triggers=trig, labels=lab, task=task, seed=0)
    embed_codeword(model, params=replace(emb, steps=3), **kw)  # warm-up
    t0 = time.perf_counter()
    embed_codeword(model, params=replace(emb, steps=steps), **kw)
    return (time.perf_counter() - t0) / steps


def main(argv: list[str]) -> None:
    steps = 20
    if "--steps" in argv:
        i = argv.index("--steps")
        steps = int(argv[i + 1])
        del argv[i : i + 2]
    for example in argv or ["shapes"]:
        best = {1: float("inf"), 2: float("inf")}
        for _ in range(3):
            for t in (1, 2):
                best[t] = min(best[t], _per_step(example, t, steps))
        print(f"{example}: one fine-tune step {1000 * best[1]:.1f} ms at 1 thread, {1000 * best[2]:.1f} ms at 2 threads, "
              f"ratio 2/1 = {best[2] / best[1]:.2f}  (fastest of 3 runs of {steps} steps each)")


if __name__ == "__main__":
    main(sys.argv[1:])
