"""`tracer probe --rank-code` through evasive and extracted APIs (issue 12, item 1 for APIs that return scores).

Builds a digits workspace with the example's defaults (noise probe sets with the rank code), issues
``--customers`` customers, and serves acme's copy over real loopback HTTP (kserve-v1, scores):
unmodified; behind each of the leaker's query filters of `tracer evaluate --attacks evasion` (fitted on
its own share, flagged queries answered with the runner-up or a random class); and soft-label
students of it (60 epochs on the attacker share, T=1 and T=3, into the MLP; T=1 behind the kNN
filter), a hard-label student, and the nulls (independent CNN and MLP, the base model). Each row is
one `probe_rank_code` read with default options: the verdict, who is named, the HTTP requests, the
share of queries the filter flagged, acme's log10 p and the smallest other customer's.

    python bench/bench_probe_rank.py [--customers 3] [--out probe_rank_digits.txt]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _common import CUSTOMERS, PASSPHRASE, Said, build_issued_workspace, save_result

from tracer.data import load_dataset
from tracer.embedding.basemodel import load_base_model
from tracer.evaluate.attacks import distill, onnx_predictor, torch_predictor
from tracer.evaluate.detectors import DETECTORS, make_detector
from tracer.evaluate.models import load_copy
from tracer.examples import digits
from tracer.examples.servers import FilterServer, ModelServer
from tracer.probing import ProbeOptions, make_format, probe_rank_code
from tracer.training import train_classifier
from tracer.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=3)
    ap.add_argument("--out", default="probe_rank_digits.txt")
    a = ap.parse_args()
    torch.set_num_threads(2)
    say = Said()

    with tempfile.TemporaryDirectory() as tmp:
        customers = list(CUSTOMERS)[: max(2, a.customers)]
        ws = Workspace(build_issued_workspace(Path(tmp) / "w", "digits", customers))
        keyring = ws.unlock(passphrase=PASSPHRASE)
        cfg, d = ws.config, load_dataset(ws.config)
        target = customers[0][0] if isinstance(customers[0], tuple) else customers[0]
        onnx = (ws.root / "models" / "issued" / f"{target}.onnx").read_bytes()
        copy = onnx_predictor(onnx)
        wire = make_format("kserve-v1", cfg.task)
        say(f"digits, example defaults (noise probe sets, rank code {cfg.embedding.rank_code}); {len(customers)} customers; "
            f"alpha {cfg.alpha:g}; `tracer probe --rank-code` with default options over loopback kserve-v1 (scores); "
            f"read set: the {len(d.x_val)} validation inputs; no key sent")
        say(f"{'endpoint':46s} {'verdict':8s} {'named':10s} {'requests':>8s} {'flagged':>8s} {target + ' log10 p':>13s} {'others':>8s}")

        def row(name: str, server: ModelServer) -> None:
            with server as srv:
                r = probe_rank_code(ws, keyring, srv.url, wire, ProbeOptions())
            by = {c.customer: c for c in r.candidates}
            others = min(c.log10_p for c in r.candidates if c.customer != target)
            flagged = f"{getattr(server, 'flagged', 0) / max(1, r.queries):.1%}" if isinstance(server, FilterServer) else "-"
            say(f"{name:46s} {r.verdict:8s} {','.join(r.customers) or '-':10s} {r.queries:8d} {flagged:>8s} "
                f"{by[target].log10_p:13.1f} {others:8.1f}")

        row(f"{target}'s copy", ModelServer(onnx, cfg.task, "kserve-v1"))
        model = load_copy(ws, target, digits.make_model, d.x_val[:8]).model
        for det_name in DETECTORS:
            det = make_detector(det_name, task=cfg.task, model=model).fit(d.x_attack, d.y_attack)
            for answer in ("runner-up", "random"):
                row(f"{target}'s copy behind {det_name} ({answer})", FilterServer(onnx, cfg.task, "kserve-v1", flags=det.flags, on_flag=answer))
        mlp = {t: torch_predictor(distill(copy, digits.make_model_alt(), d.x_attack, epochs=60, temperature=t, seed=0)) for t in (1.0, 3.0)}
        for t, student in mlp.items():
            row(f"soft-label student (MLP, T={t:g})", ModelServer(student, cfg.task, "kserve-v1"))
        knn = make_detector("knn", task=cfg.task).fit(d.x_attack, d.y_attack)
        row("soft-label student (MLP, T=1) behind knn", FilterServer(mlp[1.0], cfg.task, "kserve-v1", flags=knn.flags))
        hard = train_classifier(digits.make_model_alt(), d.x_attack, copy(d.x_attack).argmax(1), epochs=60, lr=1e-3, batch_size=32, seed=0)
        row("hard-label student (MLP)", ModelServer(torch_predictor(hard), cfg.task, "kserve-v1"))
        for name, make in (("NULL independent CNN", digits.make_model), ("NULL independent MLP", digits.make_model_alt)):
            m = train_classifier(make(), d.x_attack, d.y_attack, epochs=60, lr=1e-3, batch_size=32, seed=1)
            row(name, ModelServer(torch_predictor(m), cfg.task, "kserve-v1"))
        row("NULL base model", ModelServer(torch_predictor(load_base_model(cfg)), cfg.task, "kserve-v1"))
    save_result(a.out, say.text())


if __name__ == "__main__":
    main()
