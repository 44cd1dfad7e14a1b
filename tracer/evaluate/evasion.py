"""The evasion attacks' measurements: how well each filter tells keys from natural queries, and a real probe through it.

For each detector (:mod:`.detectors`) the suite reports the AUC separating the
fingerprint keys from natural inputs (the vendor's validation inputs, which
are also the probe's decoys), the share of keys and of natural inputs the
filter flags, and what `tracer probe` with default options concludes against
a real loopback HTTP server (:class:`tracer.examples.servers.FilterServer`)
answering through that filter (label-only), and, where the copies carry a rank code,
what `tracer probe --rank-code` concludes when the same filtered copy returns scores
(no key sent: natural inputs only).

The keys are taken as an array and never looked into: :func:`key_inputs` is
the one place that knows how this workspace's keys are made.

The probe runs against a scratch copy of the ledger (a temporary folder,
removed afterwards): a probe journals its session and records which keys it
revealed, and an evaluation must not spend the workspace's keys or add
entries to its ledger beyond its own signed summary. The scratch ledger
starts as the workspace's, so the probe picks its keys exactly as `tracer
probe` would there.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TracerError
from ..identify.identify import carried_key_sets
from ..identify.scoring import issued_customers
from ..keys.keyring import Keyring
from ..workspace import LEDGER_FILE, Workspace
from .detectors import detector_figures

__all__ = ["key_inputs", "detector_figures", "probe_through_filter", "rank_read_through_filter", "ScratchLedgerWorkspace"]


def key_inputs(ws: Workspace, keyring: Keyring) -> np.ndarray:
    """Every key input identification uses on this workspace: the key sets issued copies carry (a natural-mix pool,
    noise probe sets, or both), concatenated."""
    cfg = ws.config
    with ws.ledger() as ledger:
        sets = carried_key_sets(ws, keyring, ledger, issued_customers(ledger, master=keyring.master, cache_dir=ws.cache_dir).carried_sets())
    return np.concatenate([ps.inputs for ps in sets]) if sets else np.zeros((0, *cfg.task.input_shape), dtype=cfg.task.input_dtype)


class ScratchLedgerWorkspace(Workspace):
    """The workspace with its ledger replaced by a copy in ``folder`` (configuration, data, keys and caches are the real ones)."""

    def __init__(self, ws: Workspace, folder: Path) -> None:
        super().__init__(ws.root, ws._config)
        self.scratch = Path(folder)
        with closing(sqlite3.connect(f"file:{ws.ledger_path}?mode=ro", uri=True)) as src, closing(sqlite3.connect(self.scratch / LEDGER_FILE)) as dst:
            src.backup(dst)  # a consistent copy, WAL included

    @property
    def ledger_path(self) -> Path:
        return self.scratch / LEDGER_FILE


def probe_through_filter(ws: Workspace, keyring: Keyring, model: Any, flags: Callable[[np.ndarray], np.ndarray], *, answer: str,
                         seed: int = 0, customer: str | None = None) -> dict[str, Any]:
    """`tracer probe` (default options, kserve-v1, label-only answers) against ``model`` behind the filter, on a scratch ledger.

    ``model`` is the copy as ONNX bytes or a path (or a predictor). Returns the verdict, the named customers,
    the requests and trigger queries sent, how many queries the server flagged, and ``customer``'s log10 p-value;
    a probe that could not run comes back as ``{"verdict": "error", "error": ...}``.
    """
    from ..examples.servers import FilterServer
    from ..probing import make_format, probe_endpoint

    task = ws.config.task
    server = FilterServer(model, task, "kserve-v1", label_only=True, flags=flags, on_flag=answer, seed=seed)
    with tempfile.TemporaryDirectory(prefix="tracer-evasion-probe-") as tmp, server:
        try:
            result = probe_endpoint(ScratchLedgerWorkspace(ws, Path(tmp)), keyring, server.url, make_format("kserve-v1", task))
        except TracerError as exc:
            return {"verdict": "error", "error": exc.message, "requests": server.requests, "flagged": server.flagged}
        x = result.extra
        mine = next((c for c in result.candidates if c.customer == customer), None)
        return {"verdict": result.verdict, "named": list(result.customers), "requests": result.queries,
                "trigger_queries": x.get("trigger_queries"), "decoy_queries": x.get("decoy_queries"),
                "trigger_answers": x.get("trigger_answers"), "stopped": x.get("stopped"), "flagged": server.flagged,
                "log10_p": None if mine is None else round(float(mine.log10_p), 4)}


def rank_read_through_filter(ws: Workspace, keyring: Keyring, model: Any, flags: Callable[[np.ndarray], np.ndarray], *, answer: str,
                             seed: int = 0, customer: str | None = None) -> dict[str, Any]:
    """`tracer probe --rank-code` (default options, kserve-v1 with scores) against ``model`` behind the filter, on a scratch ledger.

    The same fields as :func:`probe_through_filter` (``trigger_queries`` is 0: no key is sent); an error
    (a workspace whose copies carry no rank code, say) comes back as ``{"verdict": "error", "error": ...}``.
    """
    from ..examples.servers import FilterServer
    from ..probing import make_format, probe_rank_code

    task = ws.config.task
    server = FilterServer(model, task, "kserve-v1", flags=flags, on_flag=answer, seed=seed)
    with tempfile.TemporaryDirectory(prefix="tracer-evasion-rank-") as tmp, server:
        try:
            result = probe_rank_code(ws=ScratchLedgerWorkspace(ws, Path(tmp)), keyring=keyring, url=server.url, fmt=make_format("kserve-v1", task))
        except TracerError as exc:
            return {"verdict": "error", "error": exc.message, "requests": server.requests, "flagged": server.flagged}
        mine = next((c for c in result.candidates if c.customer == customer), None)
        return {"verdict": result.verdict, "named": list(result.customers), "requests": result.queries, "trigger_queries": 0,
                "decoy_queries": result.extra.get("decoy_queries"), "stopped": result.extra.get("stopped"), "flagged": server.flagged,
                "log10_p": None if mine is None else round(float(mine.log10_p), 4)}
