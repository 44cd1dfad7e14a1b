"""Helpers shared by the bench scripts (not part of the package)."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

__all__ = ["BEFORE_RANK_CODE", "CUSTOMERS", "FAST_SCRYPT", "PASSPHRASE", "add_paper_customers", "build_issued_workspace", "rank_log10_p", "save_result", "timed"]

#: The passphrase of every bench workspace (the bench never imports tests/: it has its own).
PASSPHRASE = "bench-passphrase"
#: scrypt cost for bench workspaces: 2**12 x 8 x 128 B = 4 MiB, a few milliseconds per unlock.
FAST_SCRYPT = {"n": 2**12, "r": 8, "p": 1}
CUSTOMERS = (("acme", "ACME Corp."), ("globex", "Globex Corporation"), ("initech", "Initech"))


#: ``--keys natural``: the example's tracer.toml with natural-mix keys and the embedding they need (issue 12); v2, as the
#: recorded `--keys natural` results were built (`--keys natural-mix/v3` builds the template's style)
NATURAL_KEYS = {"style": '"natural-mix/v2"', "pool_size": "2048", "keys_per_probe": "64"}
#: The natural-mix [embedding] recipe that recorded results call NATURAL_EMBEDDING (steps 2000, trigger_batch 128,
#: trigger_noise 0, trigger_margin 3: keys_pool2048.txt) is now the style's own default, tracer.config.STYLE_DEFAULTS.


class Said(list):
    """Lines printed as they come (flushed: long benches show progress) and kept for :func:`save_result`."""

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.append(text)

    def text(self) -> str:
        return "\n".join(self) + "\n"


def rank_log10_p(outputs, y, ranks, num_classes: int) -> float:
    """log10 p of the rank code ``ranks`` ([1, C, C], one customer) read from ``outputs`` (scores on inputs of classes ``y``)."""
    from tracer.fingerprint import rankcode

    prof, seen = rankcode.class_profiles(rankcode.log_scores(outputs), y, num_classes)
    _, lg = rankcode.rank_p_values(rankcode.concordant_pairs(prof, seen, ranks), num_classes=num_classes, classes_read=int(seen.sum()))
    return float(lg[0])


def save_result(name: str, text: str) -> Path:
    """Write a bench's output to bench/results/NAME (the recorded figures), saying where on stderr."""
    path = ROOT / "bench" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"saved {path.relative_to(ROOT)}", file=sys.stderr)
    return path


#: ``embedding=BEFORE_RANK_CODE``: the [embedding] settings before the rank code (issue 12): none, 200 steps, 32 triggers
BEFORE_RANK_CODE = {"rank_code": "0.0", "steps": "200", "trigger_batch": "32"}


def _set_embedding(text: str, settings: dict[str, str]) -> str:
    """``text`` with each ``[embedding]`` key set to its value (replacing the example's line, or added)."""
    import re

    for k, v in settings.items():
        text, found = re.subn(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
        if not found:
            text = re.sub(r"(?m)^\[embedding\]\n", f"[embedding]\n{k} = {v}\n", text)
    return text


def example_text(example: str, keys: str = "noise", embedding: dict[str, str] | None = None) -> str:
    """The example's tracer.toml; ``keys="natural"`` switches it to natural-mix keys (:data:`NATURAL_KEYS`), and
    ``keys="natural-mix/v3"`` (a natural style's full name) to that style with the same pool settings.

    ``embedding``: ``[embedding]`` settings to apply last (e.g. :data:`BEFORE_RANK_CODE`).
    """
    import re

    from tracer.examples import example_config

    style = "uniform-grid/v1" if keys == "noise" else keys if keys.startswith("natural-mix/") else NATURAL_KEYS["style"].strip('"')
    text = example_config(example, key_style=style)
    if keys != "noise":  # the style's own [embedding] defaults apply; the pool settings are set explicitly
        for k, v in {**NATURAL_KEYS, "style": f'"{style}"'}.items():
            text, found = re.subn(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
            if not found:
                text = re.sub(r"(?m)^\[fingerprint\]\n", f"[fingerprint]\n{k} = {v}\n", text)
    return _set_embedding(text, embedding or {})


def build_issued_workspace(root: Path, example: str, customers=CUSTOMERS, *, keys: str = "noise",
                           embedding: dict[str, str] | None = None) -> Path:
    """init --example, train the base model, issue each customer; return the workspace folder."""
    from tracer.embedding import Issuer
    from tracer.examples import prepare_example
    from tracer.workspace import init_workspace

    ws = init_workspace(root, passphrase=PASSPHRASE, config_text=example_text(example, keys, embedding), scrypt=FAST_SCRYPT)
    prepare_example(ws, example, progress=False)
    Issuer(ws, ws.unlock(passphrase=PASSPHRASE)).issue_many(list(customers))
    return ws.root


def add_paper_customers(ws, keyring, count: int, *, prefix: str = "bench", batch: int = 2000) -> None:
    """Ledger records for ``count`` extra customers without fine-tuning (codewords are all they need).

    Real signed issuance entries (``tracer ledger verify`` accepts them), appended ``batch`` per
    transaction: 100,000 take about as long as signing them (tens of microseconds each).
    """
    from tracer.fingerprint import make_probe_set, probe_set_ids

    cfg = ws.config
    sets = [make_probe_set(keyring.master, sid, cfg.task, cfg.probes_per_set) for sid in probe_set_ids(cfg.fingerprint.probe_sets)]
    ps_meta = [{"id": ps.id, "size": ps.size, "digest": ps.digest()} for ps in sets]
    items = []
    for i in range(count):
        cid = f"{prefix}-{i:06d}"
        items.append(("issuance", {
            "customer_id": cid, "display_name": f"Bench customer {i}", "new_customer": True, "issuance_number": 1,
            "model_sha256": hashlib.sha256(cid.encode()).hexdigest(), "model_path": f"paper/{cid}.onnx",
            "probe_sets": ps_meta, "note": "bench record without a model",
        }))
    with ws.ledger() as ledger:
        for start in range(0, len(items), batch):
            ledger.append_many(items[start : start + batch], key=keyring.signing_key)


def timed(fn, *, repeat: int = 3) -> float:
    """Best of ``repeat`` wall-clock runs (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
