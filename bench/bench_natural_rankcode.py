"""Do natural-mix keys and the rank code fit in one digits copy? (issue 12: one default for both channels)

The rank code survives soft-label distillation only if the copy is soft on real inputs (eps of its
mass spread over the wrong classes); natural-mix keys lie among real inputs and need the copy to
bend sharply there. This bench measures the trade-off on the digits CNN with a 2048-key pool, one
workspace and master key, single tries through the issuer's own fine-tune (``Issuer._run``, no
retries or polishes) for acme: per try the clean drop on the 359 validation inputs (gate 0.5 points,
one input is 0.28), the trigger accuracy on the pool (gate 0.95), the rank code's log10 p read on
the copy, and after soft-label distillation (T=1, 60 epochs on the attacker share) into the MLP.
Then the issuer itself (gates, retries, polishes) on three customers at the lightest useful code.

    python bench/bench_natural_rankcode.py [--seeds 2,3] [--out natural_rankcode_digits.txt]
    python bench/bench_natural_rankcode.py --model wide --variants 0,1,2 --issuer-eps 0.2 --out natural_rankcode_digits_wide.txt

``--model wide``: the example's CNN with twice the channels and units (``tracer.examples.digits:make_model_wide``,
151k parameters against 38k), to tell capacity from recipe. Through the issuer, each landed copy is also
distilled into the MLP on soft labels at T=3 and on hard labels, and an independent MLP (true labels) is read
against each code: the null.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from _common import FAST_SCRYPT, PASSPHRASE, Said, example_text, rank_log10_p, save_result

from tracer.embedding import Issuer
from tracer.evaluate.attacks import distill, onnx_predictor, torch_predictor
from tracer.examples import digits, prepare_example
from tracer.fingerprint import rankcode
from tracer.training import accuracy, predict, train_classifier
from tracer.workspace import init_workspace

#: (label, rank_code eps, [embedding] overrides) on top of natural-mix/v1's own defaults
VARIANTS: list[tuple[str, float, dict]] = [
    ("no rank code (natural-mix default)", 0.0, {}),
    ("rank code 0.1", 0.1, {}),
    ("rank code 0.2", 0.2, {}),
    ("rank code 0.2, 3000 steps", 0.2, {"steps": 3000}),
    ("rank code 0.2, 192 keys per step", 0.2, {"trigger_batch": 192}),
    ("rank code 0.2, margin 2", 0.2, {"trigger_margin": 2.0}),
    ("rank code 0.2, margin weight 3", 0.2, {"margin_weight": 3.0}),
    ("rank code 0.2, anchor noise 0.05", 0.2, {"anchor_noise": 0.05}),
    ("rank code 0.1, margin weight 1.5", 0.1, {"margin_weight": 1.5}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="2,3")
    ap.add_argument("--out", default="natural_rankcode_digits.txt")
    ap.add_argument("--issuer-eps", type=float, default=0.1, help="rank code of the through-the-issuer run (0: skip it)")
    ap.add_argument("--model", choices=("cnn", "wide"), default="cnn", help="the example's CNN, or the 4x-wide one")
    ap.add_argument("--variants", default="", help="comma-separated indices into VARIANTS (default: all)")
    a = ap.parse_args()
    variants = [VARIANTS[int(i)] for i in a.variants.split(",")] if a.variants else VARIANTS
    factory = {"cnn": "make_model", "wide": "make_model_wide"}[a.model]

    def text_for(embedding: dict | None = None) -> str:
        return re.sub(r'(?m)^factory = "tracer\.examples\.digits:\w+"', f'factory = "tracer.examples.digits:{factory}"',
                      example_text("digits", "natural", embedding))

    torch.set_num_threads(2)
    seeds = [int(s) for s in a.seeds.split(",")]
    say = Said()

    with tempfile.TemporaryDirectory() as tmp:
        ws = init_workspace(Path(tmp) / "w", passphrase=PASSPHRASE, config_text=text_for(), scrypt=FAST_SCRYPT)
        prepare_example(ws, "digits", progress=False)
        iss = Issuer(ws, ws.unlock(passphrase=PASSPHRASE))
        labels = iss.labels_for("acme")
        ranks = rankcode.rank_matrix(iss.keyring.master, ["acme"], 10)
        mass = rankcode.coded_mass(ranks[0])
        d, cfg = iss.data, iss.config
        emb = cfg.embedding

        def read(pred, code=ranks) -> float:
            return rank_log10_p(pred(d.x_val), d.y_val, code, 10)

        say(f"digits ({a.model}: {sum(p.numel() for p in iss.base.parameters())} parameters), {cfg.fingerprint.style}, pool {len(iss.triggers)} keys; [embedding] natural-mix defaults: steps {emb.steps}, "
            f"trigger_batch {emb.trigger_batch}, trigger_noise {emb.trigger_noise}, trigger_margin {emb.trigger_margin}; "
            f"base accuracy {iss.base_accuracy:.4f}; seeds {seeds}; one master key")
        say("per try (final weights): clean drop (points) / trigger accuracy / rank code log10 p on the copy / after soft T=1 -> MLP")
        for name, eps, over in variants:
            iss.config = replace(cfg, embedding=replace(emb, rank_code=eps, **over))
            cells = []
            for seed in seeds:
                run = {"seed": seed, "steps": iss.config.embedding.steps, "learning_rate": emb.learning_rate}
                model = iss._run(labels, run, start=None, on_step=None, rank_mass=mass if eps > 0 else None).model.eval()
                pred = lambda x, m=model: m(torch.as_tensor(x)).detach().numpy()  # noqa: E731
                student = torch_predictor(distill(pred, digits.make_model_alt(), d.x_attack, epochs=60, temperature=1.0, seed=0))
                drop = 100 * (iss.base_accuracy - accuracy(predict(model, d.x_val), d.y_val))
                cells.append(f"{drop:+.2f} / {accuracy(predict(model, iss.triggers), labels):.3f} / {read(pred):6.1f} / {read(student):6.1f}")
            say(f"  {name:36s} " + "   ".join(cells))
        iss.config = cfg
        if a.issuer_eps > 0:
            say(f"\nthrough the issuer (gates, up to {emb.attempts} tries each 50 % longer, polishes), rank code {a.issuer_eps}, "
                "a fresh workspace and master key:")
            text = text_for({"rank_code": str(a.issuer_eps)})
            ws2 = init_workspace(Path(tmp) / "w2", passphrase=PASSPHRASE, config_text=text, scrypt=FAST_SCRYPT)
            prepare_example(ws2, "digits", progress=False)
            kr2 = ws2.unlock(passphrase=PASSPHRASE)
            issuer = Issuer(ws2, kr2)
            null = train_classifier(digits.make_model_alt(), d.x_attack, d.y_attack, epochs=20, lr=3e-3, batch_size=32, seed=5)
            for cid in ("acme", "globex", "initech"):
                t0 = time.process_time()
                try:
                    rep = issuer.issue(cid)
                    copy = onnx_predictor((ws2.root / "models" / "issued" / f"{cid}.onnx").read_bytes())
                    code = rankcode.rank_matrix(kr2.master, [cid], 10)
                    cpu = time.process_time() - t0

                    reads = [f"soft T={t:g} {read(torch_predictor(distill(copy, digits.make_model_alt(), d.x_attack, epochs=60, temperature=t, seed=0)), code):.1f}"
                             for t in (1.0, 3.0)]
                    hard = train_classifier(digits.make_model_alt(), d.x_attack, copy(d.x_attack).argmax(1), epochs=60, lr=1e-3, batch_size=32, seed=0)
                    reads.append(f"hard labels {read(torch_predictor(hard), code):.1f}")
                    say(f"  {cid:8s} landed after {rep.attempts} tries, drop {100 * (rep.base_accuracy - rep.clean_accuracy):+.2f}, "
                        f"trigger {rep.trigger_accuracy:.3f}, {cpu:.0f} CPU-s; rank log10 p: copy {read(copy, code):.1f}, MLP students "
                        + ", ".join(reads) + f"; independent MLP {read(torch_predictor(null), code):.1f}")
                except Exception as exc:  # a gate failure is the measurement here
                    say(f"  {cid:8s} {str(exc).splitlines()[0][:150]} ({time.process_time() - t0:.0f} CPU-s)")
    save_result(a.out, say.text())


if __name__ == "__main__":
    main()
