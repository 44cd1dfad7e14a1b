"""Share of imports in one `tracer issue` and one `tracer identify` (issue 15), from ``python -X importtime``.

    python bench/bench_startup.py WORKSPACE MODEL.onnx CUSTOMER [--tree PATH]

Runs ``python -X importtime -m tracer issue -c CUSTOMER`` and ``tracer identify MODEL.onnx`` in
WORKSPACE (TRACER_PASSPHRASE must be set) with the code at PATH (PYTHONPATH, default: this tree),
and prints each command's wall time, the summed top-level import time and the largest imports.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)")


def _run(tree: Path, ws: str, args: list[str]) -> tuple[float, float, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "TRACER_WORKSPACE": ws}
    # Run in the workspace, not here: `python -m` puts the working folder first on sys.path, so run from a
    # checkout it would import that checkout's tracer whatever PYTHONPATH says (the first record's "before" did).
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "tracer", *args], env=env, capture_output=True, text=True, cwd=ws)
    wall = time.perf_counter() - t0
    top, total = {}, 0.0
    for m in LINE.finditer(proc.stderr):
        if not m.group(3):  # a top-level import (not nested in another)
            top[m.group(4)] = top.get(m.group(4), 0.0) + int(m.group(2)) / 1e6
            total += int(m.group(2)) / 1e6
    if proc.returncode not in (0, 1):
        raise SystemExit(f"tracer {' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    check = subprocess.run([sys.executable, "-c", "import tracer; print(tracer.__file__)"], env=env, capture_output=True, text=True, cwd=ws)
    if not check.stdout.strip().startswith(str(tree.resolve())):
        raise SystemExit(f"imported {check.stdout.strip()}, not the tree {tree}")
    return wall, total, top


def main(argv: list[str]) -> None:
    tree = Path(argv[argv.index("--tree") + 1]) if "--tree" in argv else Path(__file__).resolve().parents[1]
    ws, model, customer = argv[:3]
    for args in (["issue", "-c", customer], ["identify", model]):
        wall, imports, top = _run(tree, ws, args)
        big = sorted(top.items(), key=lambda kv: -kv[1])[:5]
        print(f"tracer {args[0]:<8} wall {wall:6.2f} s, imports {imports:6.2f} s ({100 * imports / wall:4.1f} %); "
              + ", ".join(f"{k} {v:.2f}" for k, v in big))


if __name__ == "__main__":
    main(sys.argv[1:])
