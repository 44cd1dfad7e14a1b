"""Which [embedding] settings keep the wine quickstart's natural-mix/v3 copies through fine-tuning, fine-prune and noise.

With uniform-grid noise probe sets the README quickstart's copies survived fine-prune, weight-noise and input-noise
(evaluate_wine_quickstart_before.txt); with natural-mix/v3 keys they do not (evaluate_wine_quickstart_v3.txt). Keys
that sit among the vendor's rows are where those attacks move the function, so this bench sweeps the embedding
knobs that could hold them: each variant builds fresh README-quickstart workspaces (its mymodel.py and tracer.toml
lines from README.md, a fresh master key each), issues acme through the issuer (gates, retries, polishes) and runs the attacks
that regressed plus two evasion rows on the issued copy.

    python bench/bench_wine_embedding.py t01='{"anchor_noise": "0.1"}' an003='{"anchor_noise": "0.03"}' [--workspaces 3] [--full] [--out FILE]

A variant's settings go over the quickstart as README.md writes it, which since this bench sets anchor_noise 0.03
(wine_embedding_sweep.txt's "base" rows were the template's 0.1: pass it to reproduce them).

Row: try count, clean drop in points (one of 36 validation rows is 2.78; the gate allows 3.0), trigger accuracy,
issuance CPU seconds; per attack S (survives), X (erased) or n (not a valid attack: over 5 points) with the
agreement, and for evasion rows the filter's AUC (keys against natural inputs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import PASSPHRASE, Said, _set_embedding, save_result
from bench_pool_size import _config, _readme_quickstart, quickstart_workspace

from tracer.embedding import Issuer
from tracer.errors import GateError
from tracer.evaluate import run_suite
from tracer.evaluate.false_accusation import false_accusation_study

ATTACKS = "ft-last,ft-all-1e-2,ft-reinit,fine-prune,weight-noise,input-noise,evade-mahalanobis,evade-stats"
MARK = {"survives": "S", "erased": "X"}


def _row(label: str, i: int, root: Path, code: str, tables: dict, settings: dict[str, str], *, full: bool) -> tuple[str, dict[str, str]]:
    """One workspace: its summary line, and per attack the cell ("S0.91"; evasion rows add AUC and probe keys)."""
    pool = int(settings.get("pool_size", 0))
    text = _set_embedding(_config(tables, "natural-mix/v3", pool), {k: v for k, v in settings.items() if k != "pool_size"})
    ws, _ = quickstart_workspace(root, code, text)
    keyring = ws.unlock(passphrase=PASSPHRASE)
    start = time.process_time()
    try:
        rep = Issuer(ws, keyring).issue("acme")
    except GateError as exc:
        return f"{label} {i} REFUSED {str(exc).split(';')[0]}", {}
    cpu = time.process_time() - start
    suite = run_suite(ws, keyring, customer="acme", attacks="all" if full else ATTACKS, probe_evasion=full)
    cells: dict[str, str] = {}
    for a in suite.attacks:
        if a.agreement is None:
            continue  # skipped (needs images, more copies or an alternative architecture)
        cell = f"{MARK.get(a.verdict, 'n')}{a.agreement:.2f}"
        ev = a.evasion
        if ev:
            cell += f"/auc{ev['separation']:.3f}" if ev.get("separation") is not None else ""
            probe = ev.get("probe") or {}
            cell += f"/probe {probe['verdict']} {probe.get('trigger_queries')}k" if probe.get("verdict") else ""
        cells[a.name] = cell
    tail = ""
    if full:
        fa = false_accusation_study(ws, keyring, models=8)
        tail = f" independent-named {fa.named_count}/{len(fa.models)}"
    return (f"{label} {i} tries {rep.attempts} drop {100 * (rep.base_accuracy - rep.clean_accuracy):+.2f} "
            f"trig {rep.trigger_accuracy:.3f} cpu {cpu:.0f}{tail} " + " ".join(f"{k}={v}" for k, v in cells.items())), cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("variants", nargs="+", help='LABEL=JSON of [embedding] settings ("pool_size" sets [fingerprint])')
    ap.add_argument("--workspaces", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="every attack, the probes through the evasion filters, 8 independent models")
    ap.add_argument("--out", default=None, help="save under bench/results/ as this name")
    args = ap.parse_args()
    code, tables = _readme_quickstart()
    say = Said()
    say(f"# bench_wine_embedding.py --workspaces {args.workspaces} {' '.join(args.variants)}; attacks "
        + ("all, probes through the evasion filters, 8 independent models" if args.full else ATTACKS))
    for variant in args.variants:
        label, _, given = variant.partition("=")
        settings = {k: str(v) for k, v in json.loads(given or "{}").items()}
        columns = []
        for i in range(args.workspaces):
            tmp = Path(tempfile.mkdtemp(prefix="tracer-bench-wine-"))
            try:
                line, cells = _row(label, i, tmp / "ws", code, tables, settings, full=args.full)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            say(line)
            columns.append(cells)
        names = list(dict.fromkeys(n for c in columns for n in c))
        for n in names:
            survived = sum(c.get(n, "").startswith("S") for c in columns)
            valid = sum(c.get(n, "")[:1] in ("S", "X") for c in columns)
            say(f"  {label} {n:<20} survives {survived} of {valid} valid   " + "  ".join(f"{c.get(n, '-'):<14}" for c in columns))
    if args.out:
        save_result(args.out, say.text())


if __name__ == "__main__":
    main()
