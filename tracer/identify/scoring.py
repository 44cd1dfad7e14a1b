"""Score every issued customer at once from a suspect's answers on the probe sets.

See :mod:`tracer.fingerprint.stats` for the null hypothesis and the test. Cost:
one codeword derivation per customer and probe set (HKDF + SHAKE, microseconds)
and a vectorized comparison; the suspect is queried once per probe, whatever the
number of customers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from pathlib import Path

from ..fingerprint import ProbeSet
from ..fingerprint.cache import cached_codewords
from ..fingerprint.stats import binomial_tails, holm, log10_tail
from ..ledger import Ledger
from .result import Candidate, IdentificationResult

__all__ = ["IssuedCustomer", "issued_customers", "score_answers", "METHOD"]

METHOD = (
    "exact binomial upper tail under H0 'not derived from this customer' "
    "(each probe matches the customer's secret codeword with probability exactly 1/C, independently); "
    "Holm step-down over all issued customers controls the family-wise error rate at alpha"
)


@dataclass(frozen=True)
class IssuedCustomer:
    customer_id: str
    display_name: str
    probe_sets: tuple[str, ...]  # probe sets embedded in at least one of its copies


def issued_customers(ledger: Ledger) -> list[IssuedCustomer]:
    """Every customer with at least one issuance, in order of first issuance."""
    names = {r["customer_id"]: r["display_name"] for r in ledger.customers()}
    sets: dict[str, set[str]] = {}
    parsed: dict[str, list[str]] = {}  # most issuances share one probe_sets document: parse each once
    for cid, doc in ledger.db.execute("SELECT customer_id, probe_sets FROM issuances ORDER BY entry").fetchall():
        if doc not in parsed:
            parsed[doc] = [ps["id"] for ps in json.loads(doc)]
        sets.setdefault(cid, set()).update(parsed[doc])
    return [IssuedCustomer(cid, names.get(cid, cid), tuple(sorted(s))) for cid, s in sets.items()]


def _log10_tails(n: int, c: int) -> np.ndarray:
    return np.array([log10_tail(m, n, c) for m in range(n + 1)], dtype=np.float64)


def score_answers(
    master: bytes,
    customers: list[IssuedCustomer],
    probe_sets: list[ProbeSet],
    answers: dict[str, np.ndarray],
    *,
    num_classes: int,
    alpha: float,
    queries: int,
    model_sha256: str | None,
    extra: dict | None = None,
    cache_dir: Path | None = None,
) -> IdentificationResult:
    """Matches, exact p-values and Holm decisions for every customer, best first."""
    n_cust = len(customers)
    matches = np.zeros(n_cust, dtype=np.int64)
    trials = np.zeros(n_cust, dtype=np.int64)
    ids = [c.customer_id for c in customers]
    for ps in probe_sets:
        if ps.id not in answers:
            continue
        member = np.array([ps.id in c.probe_sets for c in customers], dtype=bool)
        if not member.any():
            continue
        sel = [cid for cid, m in zip(ids, member) if m]
        cw = cached_codewords(master, sel, ps.id, ps.size, num_classes, folder=cache_dir)
        matches[member] += (cw == np.asarray(answers[ps.id])[None, :]).sum(axis=1)
        trials[member] += ps.size
    p = np.ones(n_cust)
    logp = np.zeros(n_cust)
    for n in np.unique(trials):
        if n == 0:
            continue
        rows = trials == n
        p[rows] = binomial_tails(int(n), num_classes)[matches[rows]]
        logp[rows] = _log10_tails(int(n), num_classes)[matches[rows]]
    named = holm(np.where(trials > 0, p, 1.0), alpha) if n_cust else np.zeros(0, bool)
    # float p-values may underflow to 0 for very strong matches: the exact log10 breaks ties.
    order = np.lexsort((-matches, logp))
    cands = [
        Candidate(customer=customers[i].customer_id, display_name=customers[i].display_name, matches=int(matches[i]),
                  trials=int(trials[i]), p_value=float(p[i]), log10_p=round(float(logp[i]), 4), named=bool(named[i]))
        for i in order
    ]
    chosen = [c.customer for c in cands if c.named]
    return IdentificationResult(
        verdict="match" if chosen else "no_match", customers=chosen, alpha=alpha, queries=queries,
        model_sha256=model_sha256, candidates=cands, num_classes=num_classes,
        probe_sets=[ps.id for ps in probe_sets if ps.id in answers], method=METHOD + f" ({n_cust} customers)",
        extra=dict(extra or {}),
    )
