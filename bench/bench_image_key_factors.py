"""Research bench for issue 12: which part of natural-mix/v3's image keys costs fine-tuning robustness.

natural-mix/v3 changes two things in image keys against v2: the pixels are ranked by the mixture with its
spread about the mean input restored (exponent ``SPREAD``), and the second source's weight ``w`` is drawn
lower than v2's [0.3, 0.5]. As first built, with [0.2, 0.4], its keys looked as real digits do to all four
evasion detectors (two-sided AUC at most 0.57), but its copies lost ft-all-1e-2 and ft-reinit-1e-2, which
every v2 copy survives (natural_v3w020_vs_v2_copies.txt). This bench issues copies with each factor alone,
or another weight range, by patching the v3 recipe in this process only (``tracer.fingerprint.pool``'s
IMAGE_MIX_LOW/HIGH and its spread order), and runs the attack groups on each copy:

``--band LO,HI`` also patches ``[embedding] feature_match``: keys pay beyond the HI quantile of the
reference inputs' own distances to their class mean (the product: 0.9 alone) and, new, below the LO
quantile, so a copy cannot hold its keys *nearer* the class means than natural inputs.

* ``G@L``: exponent G (0 = v2's order) and weights in [L, L + 0.2]; ``0.75@0.25`` is v3, ``0.75@0.2`` v3 as
  first built, ``0@0.3`` v2's keys (on pool3's streams).

    python bench/bench_image_key_factors.py --recipes 0@0.2,0.75@0.3 [--customers 2] [--out NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from _common import PASSPHRASE, build_issued_workspace, save_result
from bench_keystyle import spread_order

from tracer.embedding import Issuer
from tracer.errors import GateError
from tracer.evaluate.suite import run_suite
from tracer.fingerprint import pool as poolmod
from tracer.ledger import Ledger
from tracer.workspace import Workspace

ATTACKS = "fine-tuning,evasion,extraction,pruning,quantization,input"


def _patch(recipe: str) -> None:
    """The v3 image recipe of this process: exponent G, weights in [L, L + 0.2]."""
    g, _, low = recipe.partition("@")
    poolmod.IMAGE_MIX_LOW, poolmod.IMAGE_MIX_HIGH = float(low), float(low) + 0.2
    poolmod._spread_order = spread_order(float(g))


def _patch_band(band: str) -> None:
    """feature_match pays outside the [LO, HI] quantiles of the reference inputs' distances (this process only)."""
    from tracer.embedding import finetune

    lo, hi = (float(v) for v in band.split(","))
    clusters = finetune._KeyClusters
    clusters.QUANTILE = hi
    refresh = clusters.refresh

    def refresh_band(self, student, head, channels_last):  # type: ignore[no-untyped-def]
        refresh(self, student, head, channels_last)
        f = head.value.double()
        centred = (f.to(self.whiten.dtype) - self.means[self.y]) @ self.whiten.T
        self.radius_lo = torch.quantile(centred.pow(2).sum(1), lo).clamp(min=1e-12)

    def loss_band(self, features, labels):  # type: ignore[no-untyped-def]
        d = ((features - self.means[labels]) @ self.whiten.T).pow(2).sum(1)
        outside = torch.nn.functional.relu(d - self.radius) / self.radius + torch.nn.functional.relu(self.radius_lo - d) / self.radius_lo
        return torch.log1p(outside).mean()

    clusters.refresh, clusters.loss = refresh_band, loss_band


def _issuance_lines(root: Path) -> list[str]:
    out = []
    for entry in Ledger(root / "tracer.db", readonly=True).entries(kind="issuance"):
        p = entry.payload
        m = p["metrics"]
        out.append(f"#   {p['customer_id']}: {p['embedding']['attempts']} tries, {p['issuance_cpu_seconds']:.0f} CPU-s, "
                   f"clean drop {100 * (m['base_accuracy'] - m['clean_accuracy']):+.2f} points, keys {m['trigger_accuracy']:.4f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="0@0.2,0.75@0.3")
    ap.add_argument("--customers", type=int, default=2)
    ap.add_argument("--band", default=None, metavar="LO,HI", help="feature_match pays outside these quantiles (default: the product's)")
    ap.add_argument("--attacks", default=ATTACKS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.band:
        _patch_band(args.band)
    from _common import CUSTOMERS

    lines: list[str] = []
    for recipe in args.recipes.split(","):
        _patch(recipe)
        with tempfile.TemporaryDirectory(prefix="tracer-bench-factors-") as tmp:
            root = build_issued_workspace(Path(tmp) / "digits", "digits", customers=(), keys="natural-mix/v3")
            ws = Workspace(root)
            keyring = ws.unlock(passphrase=PASSPHRASE)
            landed = []
            lines.append(f"# recipe {recipe} (exponent, lowest weight), feature_match band {args.band or 'product (0.9)'}: issuance")
            for customer in CUSTOMERS[: args.customers]:
                try:
                    Issuer(ws, keyring).issue_many([customer])
                    landed.append(customer)
                except GateError as exc:  # a recipe whose copies do not land is a result too
                    lines.append(f"#   {customer[0]}: did not land: {exc}")
            lines.extend(_issuance_lines(root))
            lines.append(f"{'recipe':<9} {'customer':<9} {'attack':<25} {'agreement':>9} {'log10 p':>9} {'two-sided AUC':>13}  verdict")
            for customer, _ in landed:
                suite = run_suite(ws, keyring, customer=customer, attacks=args.attacks, probe_evasion=False)
                for r in suite.attacks:
                    if r.name == "none":
                        continue
                    two = "" if not r.evasion or r.evasion.get("auc") is None else f"{max(r.evasion['auc'], 1 - r.evasion['auc']):.3f}"
                    lines.append(f"{recipe:<9} {customer:<9} {r.name:<25} {r.agreement or 0:>9.3f} {r.log10_p or 0:>9.1f} {two:>13}  {r.verdict}")
            print("\n".join(lines), flush=True)
    text = "\n".join(lines) + "\n# python bench/bench_image_key_factors.py " + " ".join(sys.argv[1:]) + "\n"
    print(text)
    if args.out:
        save_result(args.out, text)


if __name__ == "__main__":
    main()
