"""The outcome of an identification, shared by `identify` (model file), `probe` (API) and `evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, overload

import numpy as np

__all__ = ["Candidate", "CandidateTable", "IdentificationResult", "build_result", "HOLM_RULE", "EPROCESS_RULE", "RANK_MODE"]

#: ``IdentificationResult.decision_rule`` of a fixed-size test (identify, evaluate): exact binomial tails, Holm.
HOLM_RULE = "holm-binomial"
#: ``extra["mode"]`` of a `tracer probe --rank-code` read (the rank code alone, no key sent); key sessions have none
RANK_MODE = "rank-code"
#: ``decision_rule`` of a probe: anytime-valid e-process, Bonferroni (threshold family_size / alpha).
EPROCESS_RULE = "e-process-bonferroni"


@dataclass(frozen=True)
class Candidate:
    """One issued customer scored against the suspect."""

    customer: str
    display_name: str
    matches: int  # probes answered with this customer's codeword label
    trials: int  # probes scored
    p_value: float  # P[matches this high | suspect not derived from this customer]; may underflow to 0.0
    log10_p: float  # exact log10 of p_value, finite where p_value underflows
    named: bool  # rejected by the family-wise procedure at alpha
    #: the rank code, where it was read and this customer's copies carry one (else None): the keys' own log10 p,
    #: the concordant pairs of the rank code out of ``rank_pairs``, its exact log10 p; p_value then combines both
    key_log10_p: float | None = None
    rank_concordant: int | None = None
    rank_pairs: int | None = None
    rank_log10_p: float | None = None


class CandidateTable(Sequence):
    """All scored customers, best first, as arrays; :class:`Candidate` objects are built on access.

    With 10,000 customers, building every object would cost more than the
    identification itself, and most callers only look at the top few.
    """

    def __init__(self, ids: Sequence[str], names: Sequence[str], matches: np.ndarray, trials: np.ndarray,
                 p_values: np.ndarray, log10_p: np.ndarray, named: np.ndarray, order: np.ndarray,
                 rank: tuple[Any, np.ndarray] | None = None) -> None:
        self.ids, self.names = ids, names
        self.matches, self.trials, self.p_values, self.log10_p, self.named = matches, trials, p_values, log10_p, named
        self.order = order
        self.rank = rank  # (RankScores, the keys' own log10 p) where the rank code was read

    def __len__(self) -> int:
        return len(self.order)

    def _build(self, i: int) -> Candidate:
        extra: dict[str, Any] = {}
        if self.rank is not None and self.rank[0].carried[i]:
            rs, key_logp = self.rank
            extra = {"key_log10_p": round(float(key_logp[i]), 4), "rank_concordant": int(rs.concordant[i]),
                     "rank_pairs": int(rs.pairs), "rank_log10_p": round(float(rs.log10_p[i]), 4)}
        return Candidate(customer=self.ids[i], display_name=self.names[i], matches=int(self.matches[i]),
                         trials=int(self.trials[i]), p_value=float(self.p_values[i]),
                         log10_p=round(float(self.log10_p[i]), 4), named=bool(self.named[i]), **extra)

    @overload
    def __getitem__(self, k: int) -> Candidate: ...
    @overload
    def __getitem__(self, k: slice) -> list[Candidate]: ...
    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self._build(int(i)) for i in self.order[k]]
        return self._build(int(self.order[k]))


@dataclass
class IdentificationResult:
    verdict: str  # "match" | "no_match"
    customers: list[str]  # the named customers
    alpha: float
    queries: int  # inputs sent to the suspect
    model_sha256: str | None
    candidates: Sequence[Candidate]  # every issued customer, best (smallest p) first; named ones lead
    num_classes: int
    probe_sets: list[str]
    method: str  # e.g. "exact binomial tail, Holm step-down over N customers"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. probe: endpoint, trigger_queries
    ledger_entry: int | None = None  # seq of the ledger entry recording it
    decision_rule: str = HOLM_RULE  # HOLM_RULE or EPROCESS_RULE: which test decided
    family_size: int = 0  # hypotheses the error rate is controlled over (Holm: issued customers; probe: carriers of the set)
    threshold: float | None = None  # probe: the e-value a customer must reach (family_size / alpha); Holm: None
    #: answers each key's secret label is drawn from, so chance matches a key w.p. 1/label_choices: num_classes for
    #: noise probe sets (uniform-grid), the label-set size (2) for a natural-mix pool; 0 when the scored sets differ
    label_choices: int = 0

    @property
    def choices(self) -> int:
        """The chance denominator of a match (``label_choices``, else the classes)."""
        return self.label_choices or self.num_classes

    @property
    def matched(self) -> bool:
        return self.verdict == "match"

    def to_json(self, *, top: int = 5) -> dict[str, Any]:
        """The documented --json document: candidates best first, at least the top ``top``."""
        shown = list(self.candidates[: max(top, len(self.customers))])
        doc: dict[str, Any] = {
            "verdict": self.verdict,
            "customers": list(self.customers),
            "alpha": self.alpha,
            "queries": self.queries,
            "model_sha256": self.model_sha256,
            "candidates": [_candidate_json(c) for c in shown],
            "num_classes": self.num_classes,
            "label_choices": self.choices,
            "probe_sets": list(self.probe_sets),
            "method": self.method,
            "decision_rule": self.decision_rule,
            "family_size": self.family_size,
            "threshold": self.threshold,
            "issued_customers": len(self.candidates),
            "ledger_entry": self.ledger_entry,
        }
        doc.update(self.extra)
        return doc

    def full(self) -> dict[str, Any]:
        return {**self.to_json(top=len(self.candidates)), "candidates_all": [asdict(c) for c in self.candidates[:]]}


def _candidate_json(c: Candidate) -> dict[str, Any]:
    doc: dict[str, Any] = {"customer": c.customer, "matches": c.matches, "trials": c.trials, "p_value": c.p_value, "log10_p": c.log10_p}
    if c.rank_pairs is not None:
        doc.update(key_log10_p=c.key_log10_p, rank_concordant=c.rank_concordant, rank_pairs=c.rank_pairs, rank_log10_p=c.rank_log10_p)
    return doc


def build_result(
    *,
    ids: Sequence[str],
    names: Sequence[str],
    matches: np.ndarray,
    trials: np.ndarray,
    p_values: np.ndarray,
    log10_p: np.ndarray,
    named: np.ndarray,
    alpha: float,
    queries: int,
    model_sha256: str | None,
    num_classes: int,
    probe_sets: list[str],
    method: str,
    decision_rule: str,
    family_size: int,
    threshold: float | None = None,
    extra: dict[str, Any] | None = None,
    label_choices: int = 0,
    rank: tuple[Any, np.ndarray] | None = None,
) -> IdentificationResult:
    """The one way to turn per-customer scores into a result: order best first, name the rejected ones.

    Ordered by the exact log10 p-value (float p-values underflow to 0 for strong
    matches), then by more matches; ties keep the input order (the sort is stable).
    """
    matches, trials = np.asarray(matches, dtype=np.int64), np.asarray(trials, dtype=np.int64)
    named = np.asarray(named, dtype=bool)
    order = np.lexsort((-matches, np.asarray(log10_p, dtype=np.float64))) if len(ids) else np.zeros(0, np.int64)
    cands = CandidateTable(ids, names, matches, trials, np.asarray(p_values, dtype=np.float64),
                           np.asarray(log10_p, dtype=np.float64), named, order, rank)
    chosen = [ids[int(i)] for i in order[named[order]]]  # no Python loop over every customer
    return IdentificationResult(
        verdict="match" if chosen else "no_match", customers=chosen, alpha=alpha, queries=int(queries),
        model_sha256=model_sha256, candidates=cands, num_classes=num_classes, probe_sets=list(probe_sets),
        method=method, extra=dict(extra or {}), decision_rule=decision_rule, family_size=int(family_size),
        threshold=threshold, label_choices=label_choices,
    )
