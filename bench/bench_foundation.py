"""Foundation bench: key-derivation cost, workspace unlock time, ledger append throughput.

Run:  python bench/bench_foundation.py  [--appends N] [--writers W] [--rounds R]

1. scrypt with the default parameters (what guessing one passphrase costs an
   attacker, and what every unlock costs you), and the unlock of a workspace
   created with those defaults (two key files: master secret + signing key).
2. Ledger appends per second, one writer process against W concurrent writer
   processes appending the same total number of entries to the same SQLite
   file, measured side by side in one run (alternating rounds, median kept).
   Each append is its own signed, hash-chained, fsynced transaction.

Takes well under a minute on a laptop.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import FAST_SCRYPT, PASSPHRASE


def _writer(root: str, count: int, worker: int, barrier, results) -> None:
    from tracer.workspace import Workspace

    ws = Workspace(Path(root))
    key = ws.unlock(passphrase=PASSPHRASE, master=False).signing_key
    with ws.ledger() as ledger:
        ledger.append("bench-warmup", {"worker": worker}, key=key)  # opens WAL, warms caches
        barrier.wait()
        t0 = time.monotonic()
        for i in range(count):
            ledger.append("bench", {"worker": worker, "i": i, "pad": "x" * 64}, key=key)
        results.put((t0, time.monotonic()))


def _run_writers(template: Path, scratch: Path, writers: int, total: int) -> float:
    """Seconds from the common start to the last writer's finish, on a fresh copy of the workspace."""
    root = scratch / f"ws-{writers}-{time.monotonic_ns()}"
    shutil.copytree(template, root)
    # fork where the OS has it: children start in milliseconds instead of re-importing tracer
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    barrier, results = ctx.Barrier(writers), ctx.Queue()
    per = total // writers
    procs = [ctx.Process(target=_writer, args=(str(root), per, w, barrier, results)) for w in range(writers)]
    for p in procs:
        p.start()
    spans = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"writer failed with exit code {p.exitcode}")
    _check(root, 1 + writers + per * writers)
    shutil.rmtree(root)
    return max(e for _, e in spans) - min(s for s, _ in spans)


def _check(root: Path, expected: int) -> None:
    from tracer.workspace import Workspace

    ws = Workspace(root)
    with ws.ledger() as ledger:
        count, _ = ledger.verify(ws.unlock(passphrase=PASSPHRASE, master=False).public_key)
    if count != expected:
        raise SystemExit(f"ledger has {count} entries, expected {expected}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--appends", type=int, default=400, help="total appends per configuration (default 400)")
    ap.add_argument("--writers", type=int, default=4, help="concurrent writer processes (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median is reported (default 3)")
    args = ap.parse_args()
    total = args.appends - args.appends % args.writers

    from tracer import __version__
    from tracer.keys.keyfile import DEFAULT_SCRYPT, time_kdf
    from tracer.workspace import init_workspace

    print(f"tracer {__version__} foundation bench | Python {platform.python_version()} | "
          f"SQLite {sqlite3.sqlite_version} | {os.cpu_count()} CPUs | {platform.machine()} {platform.system()}")

    # 1. KDF and unlock -----------------------------------------------------------------------------
    kdf = statistics.median(time_kdf().seconds for _ in range(3))
    p = DEFAULT_SCRYPT
    print(f"\nscrypt KDF, default params n={p['n']} r={p['r']} p={p['p']} ({128 * p['n'] * p['r'] // 2**20} MiB): "
          f"{kdf * 1000:.0f} ms per passphrase try (median of 3)")

    with tempfile.TemporaryDirectory(prefix="tracer-bench-") as tmp:
        scratch = Path(tmp)
        ws = init_workspace(scratch / "default-ws", passphrase=PASSPHRASE)  # default scrypt cost
        unlock = []
        for _ in range(3):
            t0 = time.perf_counter()
            ws.unlock(passphrase=PASSPHRASE)
            unlock.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ws.unlock(passphrase=PASSPHRASE, master=False)
        signing_only = time.perf_counter() - t0
        print(f"workspace unlock, default params: {statistics.median(unlock) * 1000:.0f} ms for master + signing key "
              f"(median of 3); {signing_only * 1000:.0f} ms for the signing key alone")

        # 2. ledger appends: 1 writer vs N writers, alternating rounds ---------------------------------
        template = init_workspace(scratch / "ledger-template", passphrase=PASSPHRASE, scrypt=FAST_SCRYPT).root
        configs = [1, args.writers]
        times: dict[int, list[float]] = {w: [] for w in configs}
        for _ in range(args.rounds):
            for w in configs:
                times[w].append(_run_writers(template, scratch, w, total))

    print(f"\nledger appends: {total} signed, fsynced appends per configuration "
          f"(WAL, synchronous=FULL), median of {args.rounds} alternating rounds, every ledger verified afterwards")
    base = total / statistics.median(times[1])
    rows = [("writers", "appends", "seconds", "appends/s", "vs 1 writer")]
    for w in configs:
        sec = statistics.median(times[w])
        rows.append((str(w), f"{w} x {total // w}", f"{sec:.2f}", f"{total / sec:.0f}", f"{total / sec / base:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  " + "  ".join(c.rjust(widths[j]) if j else c.ljust(widths[j]) for j, c in enumerate(r)))
        if i == 0:
            print("  " + "  ".join("-" * wd for wd in widths))


if __name__ == "__main__":
    sys.exit(main())
