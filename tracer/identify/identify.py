"""`tracer identify`: name the customer behind a recovered ONNX file."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..data import Dataset, load_dataset
from ..fingerprint import ProbeSet, probe_set_ids
from ..fingerprint.keysets import is_pool, key_set, style_pool_id
from ..fingerprint.pool import KeyPool, pool_path
from ..fingerprint.revelation import pool_usage
from ..keys.keyring import Keyring
from ..ledger import Ledger
from ..workspace import Workspace
from .rank_channel import read_rank_code
from .result import IdentificationResult
from .scoring import issued_customers, score_answers
from .suspect import SuspectModel

__all__ = ["identify_model", "identify_predictor", "record_identification", "carried_key_sets"]


def identify_predictor(
    ws: Workspace, keyring: Keyring, predict, *, alpha: float | None = None, model_sha256: str | None = None,
    probe_sets: list[str] | None = None, extra: dict | None = None,
    scores: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> IdentificationResult:
    """Score any ``predict(x) -> class indices`` callable (an ONNX session, a torch model, an attack).

    ``scores(x)``, where the suspect has them, returns its raw outputs (logits or probabilities; None for
    class indices): copies carrying a rank code are then also read on the vendor's validation inputs
    (:mod:`.rank_channel`).
    """
    cfg = ws.config
    dataset = functools.cache(lambda: load_dataset(cfg))  # loaded at most once, and only if a pool or the rank code needs it
    with ws.ledger() as ledger:
        customers = issued_customers(ledger, master=keyring.master, cache_dir=ws.cache_dir)
        sets = carried_key_sets(ws, keyring, ledger, probe_sets or customers.carried_sets(), dataset=dataset)
        pools = [pool_usage(ledger, ps.id, ps.size, cfg.fingerprint.keys_per_probe)[0].to_json() for ps in sets if isinstance(ps, KeyPool)]
    rank, rank_doc = read_rank_code(keyring.master, customers, num_classes=cfg.task.num_classes, scores=scores,
                                    validation=lambda: (dataset().x_val, dataset().y_val), cache_dir=ws.cache_dir)
    answers = {ps.id: predict(ps.inputs) for ps in sets}
    if pools:
        extra = {**(extra or {}), "key_pool": pools[0]}
    if rank_doc is not None:
        extra = {**(extra or {}), "rank_code": rank_doc}
    return score_answers(
        keyring.master, customers, sets, answers, num_classes=cfg.task.num_classes,
        alpha=cfg.alpha if alpha is None else alpha, queries=sum(ps.size for ps in sets) + (rank.inputs if rank else 0),
        model_sha256=model_sha256, extra=extra, cache_dir=ws.cache_dir, rank=rank,
    )


def carried_key_sets(ws: Workspace, keyring: Keyring, ledger: Ledger, set_ids: list[str], *,
                     dataset: Callable[[], Dataset] | None = None) -> list[ProbeSet]:
    """The key sets ``set_ids`` (those issued copies carry; every key of a pool), or the configured ones before any issuance.

    ``dataset``: the vendor's data, loaded on demand (a lost pool is rebuilt from it); default: load it here.
    """
    cfg = ws.config
    if not set_ids:
        pool_id = style_pool_id(cfg.fingerprint.style)
        set_ids = [pool_id] if pool_id is not None and pool_path(ws.keys_dir, pool_id).exists() else probe_set_ids(cfg.fingerprint.probe_sets)

    def data() -> tuple[np.ndarray, np.ndarray, str]:
        d = dataset() if dataset is not None else load_dataset(cfg)
        return d.x_train, d.y_train, d.fingerprint()

    return [key_set(cfg, keyring.master, ws.keys_dir, sid, **({"data": data, "recorded_digests": ledger.recorded_key_set_digests(sid)}
                                                               if is_pool(sid) else {})) for sid in set_ids]


def record_identification(ws: Workspace, keyring: Keyring, result: IdentificationResult, *, kind: str = "identification",
                          subject: str, details: dict | None = None) -> int:
    """Append the outcome to the ledger (top candidates and every named one); returns the entry seq."""
    doc = result.to_json(top=10)
    payload = {
        "subject": subject,
        "suspect_sha256": result.model_sha256,
        "verdict": result.verdict,
        "customers": result.customers,
        "alpha": result.alpha,
        "queries": result.queries,
        "probe_sets": result.probe_sets,
        "candidates": doc["candidates"],
        "issued_customers": len(result.candidates),
        "method": result.method,
        "tracer_version": __version__,
        **(details or {}),
    }
    with ws.ledger() as ledger:
        entry = ledger.append(kind, payload, key=keyring.signing_key)
    result.ledger_entry = entry.seq
    return entry.seq


def identify_model(
    ws: Workspace, keyring: Keyring, model: Path | SuspectModel, *, alpha: float | None = None, record: bool = True
) -> IdentificationResult:
    """Identify a model file (or an already loaded :class:`SuspectModel`) and record the outcome."""
    suspect = model if isinstance(model, SuspectModel) else SuspectModel(Path(model), ws.config.task)
    result = identify_predictor(ws, keyring, suspect.predict, alpha=alpha, model_sha256=suspect.sha256,
                                extra={"model_path": str(suspect.path.resolve())}, scores=suspect.scores)
    if record:
        record_identification(ws, keyring, result, subject=f"model file {suspect.path.name}", details={"model_file": suspect.path.name})
    return result
