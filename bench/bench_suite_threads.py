"""The test suite's wall time with each xdist worker's torch on its share of the cores (tests/conftest.py) or on all of them.

torch takes every core of the machine in each process by default, so 2 workers on 2 cores run 4 busy threads
that contend (spin-waiting counts as user time). tests/conftest.py sets OMP_NUM_THREADS to cores // workers in
each worker unless it is set already; "all cores" below sets it to the core count, which is what the suite did
before. Both runs in one go, in alternating order, same tests, same worker count.

    python bench/bench_suite_threads.py [--tests "tests/test_probe_rank.py tests/test_evasion.py"] [--workers 2] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import time

from _common import ROOT, save_result


def _run(tests: list[str], workers: int, omp: str | None) -> tuple[float, float, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", str(workers), "-p", "no:cacheprovider", *tests],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    tail = (out.stdout.strip().splitlines() or ["?"])[-1]
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), tail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", default="tests/test_probe_rank.py tests/test_evasion.py")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    tests = shlex.split(args.tests)
    settings = {"share (conftest)": None, f"all cores (OMP_NUM_THREADS={cores})": str(cores)}
    got: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
    for r in range(args.rounds):
        for name in (list(settings) if r % 2 == 0 else list(settings)[::-1]):
            wall, cpu, tail = _run(tests, args.workers, settings[name])
            got[name].append((wall, cpu))
            print(f"round {r}: {name}: {wall:.0f} s wall, {cpu:.0f} CPU-s; {tail}", flush=True)
    lines = [f"# python bench/bench_suite_threads.py --tests {shlex.quote(args.tests)} --workers {args.workers} --rounds {args.rounds} "
             f"({time.strftime('%Y-%m-%d')}, {cores} cores)"]
    share, full = (min(w for w, _ in v) for v in got.values())
    for name, runs in got.items():
        lines.append(f"{name:<28} best wall {min(w for w, _ in runs):7.0f} s   CPU {min(c for _, c in runs):7.0f} s")
    lines.append(f"all cores / share, wall: {full / share:.2f}x")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        save_result(args.out, text)


if __name__ == "__main__":
    main()
