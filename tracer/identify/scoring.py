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

from ..fingerprint import ProbeSet, rankcode
from ..fingerprint.cache import codeword_matrix
from ..fingerprint.pool import KeyPool
from ..fingerprint.stats import binomial_tails, bonferroni_pair, holm, log10_tail, poisson_binomial_log10_tails, poisson_binomial_tails
from ..ledger import Ledger
from .rank_channel import RankScores
from .result import HOLM_RULE, IdentificationResult, build_result

__all__ = ["IssuedCustomer", "IssuedCustomers", "Lines", "issued_customers", "refresh_cache", "score_answers", "METHOD"]

METHOD = (
    "exact binomial upper tail under H0 'not derived from this customer' "
    "(each probe matches the customer's secret codeword with probability exactly 1/C, independently); "
    "Holm step-down over all issued customers controls the family-wise error rate at alpha"
)
#: added to METHOD when the rank code was read
RANK_METHOD = (
    "; for copies carrying a rank code, min(1, 2 min(p_keys, p_rank)) (Bonferroni), p_rank the exact tail of the "
    "concordant pairs of wrong classes under H0 (a sum of independent Mahonian counts)"
)

#: the method when the rank code is the only channel read (``tracer probe --rank-code``)
RANK_ONLY_METHOD = (
    "rank code only (no key sent): the exact tail of the concordant pairs of wrong classes under H0 'not derived from "
    "this customer' (a sum of independent Mahonian counts); Holm step-down over all issued customers (those whose "
    "copies carry no code enter with p = 1) controls the family-wise error rate at alpha"
)


def _key_sets(ids: frozenset[str]) -> tuple[str, ...]:
    """The key-set ids among a customer's set ids, sorted: without the rank-code style (a channel, not a key set)."""
    return tuple(sorted(i for i in ids if i != rankcode.RANK_CODE_STYLE))


@dataclass(frozen=True)
class IssuedCustomer:
    customer_id: str
    display_name: str
    probe_sets: tuple[str, ...]  # probe sets embedded in at least one of its copies (key sets only, not the rank code)


class Lines(Sequence):
    """``count`` strings stored newline-joined in ``blob``, decoded one at a time on access.

    The identify customer table's id and name columns: a call that names one customer among
    100,000 must not decode 200,000 strings. Equal to a list with the same items.
    """

    def __init__(self, blob: bytes, count: int) -> None:
        self.blob, self._count = blob, count
        self._starts: np.ndarray | None = None
        self._all: list[str] | None = None

    def __len__(self) -> int:
        return self._count

    def _item(self, i: int) -> str:
        if self._all is not None:
            return self._all[i]
        if self._starts is None:
            cuts = np.flatnonzero(np.frombuffer(self.blob, dtype=np.uint8) == 10)
            self._starts = np.concatenate([[0], cuts + 1, [len(self.blob) + 1]]).astype(np.int64)
        return self.blob[int(self._starts[i]) : int(self._starts[i + 1]) - 1].decode()

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.tolist()[i]
        return self._item(range(self._count)[i])

    def tolist(self) -> list[str]:
        if self._all is None:
            self._all = self.blob.decode().split("\n") if self._count else []
        return self._all

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, bytes)) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and self.tolist() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Lines({self.tolist()!r})"


class IssuedCustomers(Sequence):
    """Issued customers, a read-only sequence of :class:`IssuedCustomer`, plus column views for vectorized scoring.

    Stored as columns (ids, names, one probe-set group per customer) because
    10,000 customers must not cost 10,000 objects; items are built on access.
    """

    def __init__(self, ids: Sequence[str], names: Sequence[str], set_groups: list[frozenset[str]], group_of: np.ndarray,
                 *, ids_blob: bytes | None = None) -> None:
        self.ids, self.names, self.set_groups, self.group_of = ids, names, set_groups, group_of
        self.ids_blob = ids_blob  # the ids joined by newlines, where the cache had them: a fast codeword lookup

    def __len__(self) -> int:
        return len(self.ids)

    def _build(self, i: int) -> IssuedCustomer:
        return IssuedCustomer(self.ids[i], self.names[i], _key_sets(self.set_groups[int(self.group_of[i])]))

    @overload
    def __getitem__(self, i: int) -> IssuedCustomer: ...
    @overload
    def __getitem__(self, i: slice) -> list[IssuedCustomer]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._build(k) for k in range(len(self.ids))[i]]
        return self._build(range(len(self.ids))[i])  # negative indices and IndexError as for a list

    def __iter__(self) -> Iterator[IssuedCustomer]:
        ids, names = list(self.ids), list(self.names)  # one decoding of each column, not one per item
        sets = [_key_sets(g) for g in self.set_groups]
        return (IssuedCustomer(ids[i], names[i], sets[int(g)]) for i, g in enumerate(self.group_of))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (str, bytes)) or not isinstance(other, Sequence):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # equal to lists, so not hashable like them

    def __repr__(self) -> str:
        return f"IssuedCustomers({list(self)!r})"

    def copy(self) -> IssuedCustomers:
        return IssuedCustomers(list(self.ids), list(self.names), list(self.set_groups), self.group_of.copy())

    def carried_sets(self) -> list[str]:
        """Ids of every key set at least one issued copy carries, sorted (noise probe sets, pools)."""
        return list(_key_sets(frozenset().union(*self.set_groups)))

    def members(self, set_id: str) -> np.ndarray:
        """Boolean mask of customers whose copies carry ``set_id``."""
        has = np.array([set_id in g for g in self.set_groups], dtype=bool)
        return has[self.group_of] if len(self.ids) else np.zeros(0, bool)

    @classmethod
    def from_list(cls, customers: list[IssuedCustomer]) -> IssuedCustomers:
        groups: dict[frozenset[str], int] = {}
        gi = [groups.setdefault(frozenset(c.probe_sets), len(groups)) for c in customers]
        return cls([c.customer_id for c in customers], [c.display_name for c in customers], list(groups), np.array(gi, dtype=np.int64))


def issued_customers(ledger: Ledger, *, master: bytes | None = None, cache_dir: Path | None = None) -> IssuedCustomers:
    """Every customer with at least one issuance, in order of first issuance, grouped by the probe sets they carry.

    With ``master`` and ``cache_dir``, read from the encrypted customer table there (see
    :mod:`.customer_table`), extended by the issuances appended since; otherwise one query
    over the whole ledger.
    """
    if master is not None and cache_dir is not None:
        from .customer_table import load_customer_table

        cached = load_customer_table(ledger, master, cache_dir)
        if cached is not None:
            return cached
    rows = ledger.issued_customers()
    groups: dict[frozenset[str], int] = {}
    group_of = np.empty(len(rows), dtype=np.int64)
    for k, (_, _, sets) in enumerate(rows):
        group_of[k] = groups.setdefault(sets, len(groups))
    return IssuedCustomers([r[0] for r in rows], [r[1] for r in rows], list(groups), group_of)


def refresh_cache(ledger: Ledger, master: bytes, probe_sets: Sequence[ProbeSet], *, num_classes: int, folder: Path) -> None:
    """Bring the customer table and every probe set's codeword matrix up to the ledger (after an issuance lands)."""
    table = issued_customers(ledger, master=master, cache_dir=folder)
    for ps in probe_sets:
        _set_codewords(master, table, ps, num_classes, folder)


def _set_codewords(master: bytes, table: IssuedCustomers, ps: ProbeSet, num_classes: int, folder: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(member mask, codeword rows of the members in table order) for one key set (a pool's: indices into each S_i)."""
    bound = ps.bound(num_classes)
    member = table.members(ps.id)
    if not member.any():
        return member, np.zeros((0, ps.size), dtype=np.int16)
    if member.all():
        sel, blob = table.ids, table.ids_blob
    else:
        sel, blob = [table.ids[int(i)] for i in np.flatnonzero(member)], None
    return member, codeword_matrix(master, sel, ps.id, ps.size, bound, folder=folder, ids_blob=blob)


def _match_counts(cw: np.ndarray, answers: np.ndarray, bound: int) -> np.ndarray:
    """Per row, how many probes the answers match; an answer outside 0..bound-1 matches nothing."""
    a = np.asarray(answers).astype(np.int64, copy=False)
    a = np.where((a >= 0) & (a < bound), a, bound).astype(cw.dtype)  # bound fits the stored dtype, never a codeword
    eq = np.ascontiguousarray(cw == a[None, :])
    n, p = eq.shape
    if p % 8 or p > 8 * 255 or not n:
        return np.count_nonzero(eq, axis=1)
    # 8 probes per 64-bit word: add the words (each byte lane counts <= p/8 <= 255 matches), then the lanes
    words = eq.view(np.uint64).reshape(n, p // 8)
    lanes = words[:, 0].copy()
    for j in range(1, p // 8):
        lanes += words[:, j]
    if p <= 255:
        return ((lanes * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)
    return lanes.view(np.uint8).reshape(n, 8).sum(axis=1, dtype=np.int64)


@lru_cache(maxsize=64)
def _log10_tails(n: int, c: int) -> np.ndarray:
    return np.array([log10_tail(m, n, c) for m in range(n + 1)], dtype=np.float64)


@lru_cache(maxsize=64)
def _tails(n: int, c: int) -> np.ndarray:
    return binomial_tails(n, c)


def _p_values(matches: np.ndarray, trials: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact binomial upper tails and their log10, looked up per number of trials (p = 1 without trials)."""
    if len(trials) and trials.min() == trials.max() > 0:  # the usual case: one table lookup, no masks
        n = int(trials[0])
        return _tails(n, num_classes)[matches], _log10_tails(n, num_classes)[matches]
    p, logp = np.ones(len(trials)), np.zeros(len(trials))
    for n in np.unique(trials):
        if n == 0:
            continue
        rows = trials == n
        p[rows] = _tails(int(n), num_classes)[matches[rows]]
        logp[rows] = _log10_tails(int(n), num_classes)[matches[rows]]
    return p, logp


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
    rank: RankScores | None = None,
) -> IdentificationResult:
    """Matches, exact p-values and Holm decisions for every customer, best first.

    The Holm family is every issued customer (``family_size``): a customer whose
    copies carry none of the probe sets answered enters with p = 1. ``rank``: the
    rank-code channel (:mod:`.rank_channel`), combined per customer by Bonferroni.
    """
    table = customers if isinstance(customers, IssuedCustomers) else IssuedCustomers.from_list(list(customers))
    n_cust = len(table)
    matches = np.zeros(n_cust, dtype=np.int64)
    by_bound: dict[int, np.ndarray] = {}  # label choices per key -> keys scored per customer
    pooled = False
    for ps in probe_sets:
        if ps.id not in answers:
            continue
        member, cw = _set_codewords(master, table, ps, num_classes, cache_dir)
        if not member.any():
            continue
        bound = ps.bound(num_classes)
        ans = np.asarray(answers[ps.id])
        if not isinstance(ps, KeyPool):  # a noise probe set: every answer is a trial
            counts, n_scored = _match_counts(cw, ans, num_classes), ps.size
        else:  # a pool: only answers inside each key's label set are trials (KeyPool.scored)
            pooled = True
            scored = ps.scored(ans)
            counts, n_scored = ((ps.labels(cw) == ans[None, :]) & scored[None, :]).sum(axis=1), int(scored.sum())
        if len(cw) == n_cust:  # every customer carries the set: no mask to apply
            matches += counts
        else:
            matches[member] += counts
        by_bound.setdefault(bound, np.zeros(n_cust, dtype=np.int64))[member] += n_scored
    trials = sum(by_bound.values(), np.zeros(n_cust, dtype=np.int64))
    if not pooled:
        p, logp = _p_values(matches, trials, num_classes)
    else:
        p, logp = null_tails(matches, by_bound)
    bounds = sorted(by_bound)
    key_logp, scored, method = logp, trials > 0, METHOD
    if rank is not None and by_bound:  # both channels read: Bonferroni per customer
        p, logp = bonferroni_pair(p, logp, rank.p, rank.log10_p, rank.carried)
        scored, method = scored | rank.carried, METHOD + RANK_METHOD
    elif rank is not None:  # the rank code alone (`tracer probe --rank-code`, no key sent): its own p-value
        p, logp, scored = np.where(rank.carried, rank.p, 1.0), np.where(rank.carried, rank.log10_p, 0.0), rank.carried
        method = RANK_ONLY_METHOD
    # Holm over all n_cust customers. A p-value above alpha is never rejected, so setting it to 1 changes
    # nothing but the sort, which then meets one long run of ties (linear instead of n log n).
    named = holm(np.where(scored & (p <= alpha), p, 1.0), alpha) if n_cust else np.zeros(0, bool)
    return build_result(
        ids=table.ids, names=table.names, matches=matches, trials=trials, p_values=p, log10_p=logp, named=named,
        alpha=alpha, queries=queries, model_sha256=model_sha256, num_classes=num_classes,
        probe_sets=[ps.id for ps in probe_sets if ps.id in answers],
        method=method + f" ({n_cust} customers)",
        decision_rule=HOLM_RULE, family_size=n_cust, threshold=None, extra=extra,
        label_choices=bounds[0] if len(bounds) == 1 else 0,
        rank=None if rank is None else (rank, key_logp),
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
