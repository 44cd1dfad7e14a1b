"""Score every issued customer at once from a suspect's answers on the probe sets.

See :mod:`tracer.fingerprint.stats` for the null hypothesis and the test. Cost:
one codeword derivation per customer and probe set (HKDF + SHAKE, microseconds)
and a vectorized comparison; the suspect is queried once per probe, whatever the
number of customers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import overload

import numpy as np

from ..fingerprint import ProbeSet
from ..fingerprint.cache import cached_codewords
from ..fingerprint.stats import holm, poisson_binomial_log10_tails, poisson_binomial_tails
from ..ledger import Ledger
from .result import HOLM_RULE, IdentificationResult, build_result

__all__ = ["IssuedCustomer", "IssuedCustomers", "issued_customers", "score_answers", "METHOD"]

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


class IssuedCustomers(Sequence):
    """Issued customers, a read-only sequence of :class:`IssuedCustomer`, plus column views for vectorized scoring.

    Stored as columns (ids, names, one probe-set group per customer) because
    10,000 customers must not cost 10,000 objects; items are built on access.
    """

    def __init__(self, ids: list[str], names: list[str], set_groups: list[frozenset[str]], group_of: np.ndarray) -> None:
        self.ids, self.names, self.set_groups, self.group_of = ids, names, set_groups, group_of

    def __len__(self) -> int:
        return len(self.ids)

    def _build(self, i: int) -> IssuedCustomer:
        return IssuedCustomer(self.ids[i], self.names[i], tuple(sorted(self.set_groups[int(self.group_of[i])])))

    @overload
    def __getitem__(self, i: int) -> IssuedCustomer: ...
    @overload
    def __getitem__(self, i: slice) -> list[IssuedCustomer]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._build(k) for k in range(len(self.ids))[i]]
        return self._build(range(len(self.ids))[i])  # negative indices and IndexError as for a list

    def __iter__(self) -> Iterator[IssuedCustomer]:
        return (self._build(i) for i in range(len(self.ids)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, bytes)) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so not hashable like them

    def __repr__(self) -> str:
        return f"IssuedCustomers({list(self)!r})"

    def copy(self) -> IssuedCustomers:
        return IssuedCustomers(list(self.ids), list(self.names), list(self.set_groups), self.group_of.copy())

    def members(self, set_id: str) -> np.ndarray:
        """Boolean mask of customers whose copies carry ``set_id``."""
        has = np.array([set_id in g for g in self.set_groups], dtype=bool)
        return has[self.group_of] if len(self.ids) else np.zeros(0, bool)

    @classmethod
    def from_list(cls, customers: list[IssuedCustomer]) -> IssuedCustomers:
        groups: dict[frozenset[str], int] = {}
        gi = [groups.setdefault(frozenset(c.probe_sets), len(groups)) for c in customers]
        return cls([c.customer_id for c in customers], [c.display_name for c in customers], list(groups), np.array(gi, dtype=np.int64))


def issued_customers(ledger: Ledger) -> IssuedCustomers:
    """Every customer with at least one issuance, in order of first issuance, grouped by the probe sets they carry."""
    rows = ledger.issued_customers()
    groups: dict[frozenset[str], int] = {}
    group_of = np.empty(len(rows), dtype=np.int64)
    for k, (_, _, sets) in enumerate(rows):
        group_of[k] = groups.setdefault(sets, len(groups))
    return IssuedCustomers([r[0] for r in rows], [r[1] for r in rows], list(groups), group_of)


def score_answers(
    master: bytes,
    customers: IssuedCustomers | list[IssuedCustomer],
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
    """Matches, exact p-values and Holm decisions for every customer, best first.

    The Holm family is every issued customer (``family_size``): a customer whose
    copies carry none of the probe sets answered enters with p = 1.
    """
    table = customers if isinstance(customers, IssuedCustomers) else IssuedCustomers.from_list(list(customers))
    n_cust = len(table)
    matches = np.zeros(n_cust, dtype=np.int64)
    by_bound: dict[int, np.ndarray] = {}  # label choices per key -> keys scored per customer
    for ps in probe_sets:
        if ps.id not in answers:
            continue
        member = table.members(ps.id)
        if not member.any():
            continue
        sel = table.ids if member.all() else [cid for cid, m in zip(table.ids, member) if m]
        bound = ps.bound(num_classes)
        ans = np.asarray(answers[ps.id])
        scored = ps.scored(ans)  # a pool: only answers inside each key's label set are trials
        labels = ps.labels(cached_codewords(master, sel, ps.id, ps.size, bound, folder=cache_dir))
        matches[member] += ((labels == ans[None, :]) & scored[None, :]).sum(axis=1)
        by_bound.setdefault(bound, np.zeros(n_cust, dtype=np.int64))[member] += int(scored.sum())
    bounds = sorted(by_bound)
    trials = sum(by_bound.values(), np.zeros(n_cust, dtype=np.int64))
    p, logp = null_tails(matches, {b: by_bound[b] for b in bounds})
    named = holm(np.where(trials > 0, p, 1.0), alpha) if n_cust else np.zeros(0, bool)
    return build_result(
        ids=table.ids, names=table.names, matches=matches, trials=trials, p_values=p, log10_p=logp, named=named,
        alpha=alpha, queries=queries, model_sha256=model_sha256, num_classes=num_classes,
        probe_sets=[ps.id for ps in probe_sets if ps.id in answers], method=METHOD + f" ({n_cust} customers)",
        decision_rule=HOLM_RULE, family_size=n_cust, threshold=None, extra=extra,
        label_choices=bounds[0] if len(bounds) == 1 else 0,
    )


def null_tails(matches: np.ndarray, by_bound: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(p, log10 p) per customer: P[X >= matches] where X sums Binomial(n_b, 1/b) over the label-choice counts b.

    Customers with the same keys (the usual case: one profile) share one exact tail table.
    """
    n_cust = len(matches)
    p, logp = np.ones(n_cust), np.zeros(n_cust)
    if not by_bound or n_cust == 0:
        return p, logp
    bounds = sorted(by_bound)
    profiles = np.stack([by_bound[b] for b in bounds], axis=1)  # [customers, bounds]
    uniq, inverse = np.unique(profiles, axis=0, return_inverse=True)
    for g, prof in enumerate(uniq):
        if not prof.any():
            continue
        rows = inverse.reshape(-1) == g
        groups = {b: int(n) for b, n in zip(bounds, prof) if n}
        tails, log_tails = _group_tails(tuple(sorted(groups.items())))
        p[rows] = tails[matches[rows]]
        logp[rows] = log_tails[matches[rows]]
    return p, logp


@lru_cache(maxsize=64)
def _group_tails(groups: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, np.ndarray]:
    """Exact tails (and their log10) of a sum of Binomial(n, 1/b) over ``groups`` ((b, n) pairs)."""
    ks = np.concatenate([np.full(n, b, dtype=np.int64) for b, n in groups])
    return poisson_binomial_tails(ks), poisson_binomial_log10_tails(ks)
