"""One natural-mix workspace probes 50 different endpoints with default options (issue 12's "pool outlasts 50 endpoints").

Set-up: an issued digits workspace with natural-mix keys (bench/_common NATURAL_KEYS: a pool of 2048
keys, 64 drawn per probe as it was written out then; acme, globex and initech issued), copied so the original is never modified.
Its real ledger accumulates every probe's revelations, as a vendor watching a market would.

Endpoints, in a fixed rotation of ten kinds (five rounds for 50), each a real HTTP server on loopback
(label-only kserve-v1, `tracer probe` default options):
  the three unmodified copies; acme behind the kNN filter (runner-up answers), globex behind the
  pixel-statistics filter (random answers), initech behind the Mahalanobis filter (runner-up), acme
  behind the autoencoder filter (random) -- each filter fitted on the leaker's share, as in
  `tracer evaluate --attacks evasion`; an independent CNN and an independent MLP trained on the
  leaker's share (a fresh seed each round), and the vendor's base model. The last three must never
  be named.

Reports per endpoint: verdict, named customer, keys sent, the pool left; then whether any key was
shown to two endpoints (from the ledger's per-key probe-sent entries), refusals, and false accusations.

    python bench/bench_endpoints.py --workspace /tmp/ws/digits      # reuse an issued natural-mix digits workspace
    python bench/bench_endpoints.py --keep /tmp/ws/digits --save endpoints_digits_natural_v2.txt  # build, keep, record
    python bench/bench_endpoints.py --workspace /tmp/ws/digits --keys-per-probe 64,0  # side by side: 64, then automatic

``--keys-per-probe`` rewrites the workspace copy's ``[fingerprint] keys_per_probe`` (issued copies do not depend on
it) and runs the 50 endpoints once per value, each on a fresh copy of the same issued workspace.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import torch
from _common import PASSPHRASE, ROOT, build_issued_workspace

from tracer.embedding.basemodel import load_base_model
from tracer.embedding.export import export_onnx
from tracer.errors import TracerError
from tracer.evaluate.detectors import make_detector
from tracer.evaluate.models import factories, load_copy
from tracer.examples.digits import load_data, make_model_alt
from tracer.examples.servers import FilterServer, ModelServer
from tracer.fingerprint.keysets import style_pool_id
from tracer.probing import make_format, probe_endpoint
from tracer.training import train_classifier
from tracer.workspace import Workspace

GUILTY = ("acme", "globex", "initech")
FILTERED = (("acme", "knn", "runner-up"), ("globex", "stats", "random"), ("initech", "mahalanobis", "runner-up"), ("acme", "autoencoder", "random"))
KINDS = [*(("copy", c, None, None) for c in GUILTY), *(("filtered", c, d, a) for c, d, a in FILTERED),
         ("independent-cnn", None, None, None), ("independent-mlp", None, None, None), ("base", None, None, None)]


def _independent(make, data: dict, seed: int, task) -> bytes:
    torch.manual_seed(seed)
    model = make()
    train_classifier(model, data["x_attack"], data["y_attack"], epochs=30, lr=1e-3, batch_size=32, seed=seed)
    return export_onnx(model, task)


def run(ws: Workspace, endpoints: int) -> str:
    keyring = ws.unlock(passphrase=PASSPHRASE)
    task = ws.config.task
    data = load_data()
    sample = data["x_val"][:8]
    make_model = factories(ws.config)[0]  # the workspace's own architecture (the natural-mix variant: the 4x CNN)
    copies = {c: load_copy(ws, c, make_model, sample) for c in GUILTY}
    detectors: dict[tuple[str, str], object] = {}
    base_onnx = export_onnx(load_base_model(ws.config), task)
    fmt = make_format("kserve-v1", task)
    rows, sessions, refused = [], [], 0
    t_all = time.perf_counter()
    for i in range(endpoints):
        kind, customer, det_name, answer = KINDS[i % len(KINDS)]
        rnd = i // len(KINDS)
        if kind == "copy":
            server = ModelServer(copies[customer].onnx, task, "kserve-v1", label_only=True)
            what = f"{customer}'s copy"
        elif kind == "filtered":
            key = (customer, det_name)
            if key not in detectors:
                detectors[key] = make_detector(det_name, task=task, model=copies[customer].model, seed=0).fit(data["x_attack"], data["y_attack"])
            server = FilterServer(copies[customer].onnx, task, "kserve-v1", label_only=True, flags=detectors[key].flags, on_flag=answer, seed=i)
            what = f"{customer}'s copy behind {det_name} ({answer})"
        elif kind == "base":
            server = ModelServer(base_onnx, task, "kserve-v1", label_only=True)
            what = "vendor's base model"
        else:
            make = make_model if kind == "independent-cnn" else make_model_alt
            server = ModelServer(_independent(make, data, 100 + rnd, task), task, "kserve-v1", label_only=True)
            what = f"{kind} (seed {100 + rnd})"
        t0 = time.perf_counter()
        with server:
            try:
                result = probe_endpoint(ws, keyring, server.url, fmt)
            except TracerError as exc:
                refused += 1
                rows.append((i + 1, what, customer, "REFUSED", "-", 0, "-", exc.message))
                continue
        x = result.extra
        session = x["session"]
        with ws.ledger() as ledger:
            keys = {int(p["key"]) for p in ledger.session_entries(session, "probe-sent") if "key" in p}
        sessions.append(keys)
        usage = x.get("key_pool") or {}
        named = ",".join(result.customers) or "-"
        unrevealed = usage["size"] - usage["revealed"] if usage else "?"
        rows.append((i + 1, what, customer, result.verdict, named, len(keys), unrevealed, f"{time.perf_counter() - t0:.1f} s"))
    with ws.ledger() as ledger:
        sent = ledger.sent_keys(style_pool_id(ws.config.fingerprint.style) or "")
    union = set().union(*sessions) if sessions else set()
    reused = sum(len(s) for s in sessions) - len(union)
    out = io.StringIO()
    with redirect_stdout(out):
        print(f"{'#':>3}  {'endpoint':46s} {'verdict':9s} {'named':8s} {'keys sent':>9s}  {'unrevealed*':>11s}  time")
        for n, what, _, verdict, named, k, left, note in rows:
            print(f"{n:3d}  {what:46s} {verdict:9s} {named:8s} {k:9d}  {left!s:>11s}  {note}")
        print("  * keys of the pool no endpoint had seen when that probe began")
        guilty = [r for r in rows if r[2] is not None]
        innocent = [r for r in rows if r[2] is None]
        right = sum(1 for r in guilty if r[3] == "match" and r[4] == r[2])
        wrong = sum(1 for r in rows if r[3] == "match" and r[4] != r[2])
        per = [r[5] for r in rows if r[3] != "REFUSED"]
        print()
        print(f"endpoints probed: {len(rows)}; refused: {refused}; keys shown to two endpoints: {reused} "
              f"(ledger: {len(sent)} keys revealed, per-session union {len(union)})")
        print(f"guilty endpoints named right: {right} of {len(guilty)}; innocent endpoints named: "
              f"{sum(1 for r in innocent if r[3] == 'match')} of {len(innocent)}; wrong customer named: {wrong}")
        def mean(xs: list[int]) -> str:
            return f"{np.mean(xs):.1f}" if xs else "-"

        if per:
            print(f"keys sent per probe: mean {mean(per)}, max {max(per)}; guilty endpoints mean {mean([r[5] for r in guilty if r[3] != 'REFUSED'])}, "
                  f"innocent endpoints mean {mean([r[5] for r in innocent if r[3] != 'REFUSED'])}")
        print(f"pool: {ws.config.fingerprint.pool_size} keys, {len(sent)} revealed after {len(rows)} endpoints "
              f"({ws.config.fingerprint.pool_size - len(sent)} left); total {time.perf_counter() - t_all:.0f} s")
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="an issued natural-mix digits workspace to copy (else one is built)")
    ap.add_argument("--endpoints", type=int, default=50)
    ap.add_argument("--keep", type=Path, help="build the workspace here and keep it (reuse it with --workspace)")
    ap.add_argument("--save", default=None, metavar="NAME", help="write bench/results/NAME (e.g. endpoints_digits_natural.txt)")
    ap.add_argument("--keys-per-probe", default=None, metavar="N[,N...]",
                    help="run once per value, each on a fresh copy (0: automatic); default: the workspace's own")
    args = ap.parse_args()
    texts = []
    with tempfile.TemporaryDirectory(prefix="tracer-endpoints-") as tmp:
        source = args.workspace
        if source is None:
            source = build_issued_workspace(args.keep or Path(tmp) / "built", "digits", keys="natural")
        for n, value in enumerate(args.keys_per_probe.split(",") if args.keys_per_probe else [None]):
            root = Path(tmp) / f"ws{n}"
            shutil.copytree(source, root)
            if value is not None:
                toml = root / "tracer.toml"
                toml.write_text(re.sub(r"(?m)^keys_per_probe = \d+", f"keys_per_probe = {int(value)}", toml.read_text()))
            ws = Workspace(root)
            if style_pool_id(ws.config.fingerprint.style) is None:
                print(f"{source} is not a natural-mix workspace", file=sys.stderr)
                return 2
            head = (f"# python bench/bench_endpoints.py --endpoints {args.endpoints} ({time.strftime('%Y-%m-%d %H:%M')}); workspace: digits, "
                    f"{ws.config.fingerprint.style}, pool {ws.config.fingerprint.pool_size}, keys_per_probe {ws.config.fingerprint.keys_per_probe}, "
                    f"alpha {ws.config.alpha:g}; real loopback HTTP, label-only kserve-v1, `tracer probe` default options\n")
            texts.append(head + run(ws, args.endpoints))
            print(texts[-1], flush=True)
    text = "\n".join(texts)
    if args.save:
        (ROOT / "bench" / "results" / args.save).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
