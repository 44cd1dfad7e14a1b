"""Helpers shared by the bench scripts (not part of the package)."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fixtures_issued import FAST_SCRYPT, PASSPHRASE, build_issued_workspace  # noqa: E402

__all__ = ["PASSPHRASE", "FAST_SCRYPT", "build_issued_workspace", "add_paper_customers", "timed"]


def add_paper_customers(ws, keyring, count: int, *, prefix: str = "bench") -> None:
    """Ledger records for ``count`` extra customers without fine-tuning (codewords are all they need)."""
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
        for start in range(0, len(items), 2000):
            ledger.append_many(items[start : start + 2000], key=keyring.signing_key)


def timed(fn, *, repeat: int = 3) -> float:
    """Best of ``repeat`` wall-clock runs (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
