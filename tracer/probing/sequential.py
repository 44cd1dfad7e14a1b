"""The sequential test behind `tracer probe`: valid at whatever moment the probe stops.

Null hypothesis, per issued customer c
    H0(c): "the endpoint's model is not derived from customer c's copy".
    Noise probe sets: c's codeword is exactly uniform over the C classes and
    independent of everything the endpoint knows, so whatever the endpoint
    answers (even adaptively, even after seeing earlier triggers and answers),
    each new trigger answer agrees with c's codeword label with probability
    exactly p0 = 1/C given the past. An answer that is no class at all agrees
    with probability 0, which only helps.

Keys with a label set per key (in-distribution keys)
    Key t carries a label set S_t of k_t >= 2 classes, fixed before any
    codeword exists and independently of every codeword; c's label on it is
    uniform on S_t, from c's own stream. Given everything before the t-th
    trigger answer (earlier keys, answers, matches, the schedule's choice of
    key t, which comes from a stream independent of the labels), c's label on
    key t is still uniform on S_t and independent of the answer a_t (the
    endpoint never sees labels, only inputs), so
    P[match_t | past, a_t] = |{a_t} ∩ S_t| / k_t <= p0_t = 1/k_t. Each trigger
    answer is scored against its own p0_t. See :mod:`tracer.fingerprint.stats`
    for the fixed-size version.

Test statistic: an e-process (a test martingale), not a fixed-size p-value
    For one alternative, a fraction f in (0, 1] of the way from chance to a
    perfect copy, q_t = p0_t + f (1 - p0_t), the likelihood ratio after the
    trigger answers t = 1..T with matches m_t is

        L_f = prod_t (q_t / p0_t) ** m_t * ((1 - q_t) / (1 - p0_t)) ** (1 - m_t).

    Given the past, one factor has mean p' q/p0 + (1 - p') (1-q)/(1-p0) for the
    true match probability p' <= p0: equal to 1 at p' = p0 and increasing in p'
    (q/p0 > 1 > (1-q)/(1-p0)), so at most 1. L_f is a nonnegative
    (super)martingale with mean <= 1 under H0(c). With one C for every probe it
    is (q/p0)^k ((1-q)/(1-p0))^(t-k) for k matches in t answers. We do not know
    how strongly a copy keeps its watermark (an unmodified copy answers almost
    every trigger with its codeword, a fine-tuned one fewer), so the statistic
    is the uniform mixture over a fixed grid of f, E_c(t) = mean_j L_{f_j}:
    still a test supermartingale. Ville's inequality gives
    P_H0[ sup_t E_c(t) >= 1/a ] <= a for every a, so the test stays valid
    under optional stopping: the probe may look after every answer and stop
    whenever it likes. (The sufficient statistic kept per customer is the
    count of matches on keys of each size k: exact integers, the same after a
    journal replay; the [N, J] log-likelihoods are computed from it.)

Correction over customers: Bonferroni
    With N customers in the family (those whose copies embed the probe set
    being used), customer c is named when E_c(t) >= N / alpha. By Ville and a
    union bound, the chance of ever naming any innocent customer, at any
    stopping time, is at most alpha.

Reported p-value
    p_c = min(1, 1 / max_{s <= t} E_c(s)), the anytime-valid p-value of H0(c)
    *before* the correction: P_H0[p_c <= a] <= a at any stopping time.
    Customer c is named exactly when p_c <= alpha / N. ``log10_p`` is its
    exact logarithm (finite where p underflows).

Stopping rule
    Stop with "match" as soon as some customer is named; stop with
    "no_match" as soon as no customer could reach N / alpha even if every
    remaining trigger that the budget still allows matched its codeword.
    (Futility only needs the all-match path: a match multiplies every L_f by
    1 + f (k - 1) >= 1, a miss by 1 - f <= 1, so the all-match path is the best
    case. With keys of several sizes, the best case takes the remaining keys
    with the largest k, whose matches weigh most: pass their sizes as
    ``remaining_ks``.)

    Early futility (key pools: ``futility_z`` and ``futility_base``, journaled with the session).
    A key pool pays for every key sent. A pool session may draw more keys
    (128 by default) than the plain rule would want to spend on an endpoint that
    answers like chance, so it also stops with "no_match" once both hold:
    (a) the plain rule with only ``futility_base`` (64) trigger answers in all
    would have stopped already, and (b) no customer could be named even if the
    remaining answers matched at an optimistic rate, the Wilson upper
    confidence bound (z = ``futility_z``) on that customer's match rate so far.
    So a session stops no earlier than a 64-key probe would, and goes on past
    it only while the evidence leans toward some customer. The stopping rule
    never enters the error bound: the e-process is valid at any stopping time,
    whatever rule picks it, so stopping earlier can cost power, never validity.
    What it buys (bench/results/probe_budget.txt, two-label keys, alpha 1e-6,
    3 customers): at 128 keys an innocent endpoint costs 26.4 keys, against
    23.6 under the plain rule at 64, while a copy answering 85 % of its keys
    right is named 99.4 % of the time instead of 57.7 %.

THE TRAP
    No key and no label set may be selected by looking at codeword values
    (for instance, keeping the keys on which some label "survived best"): the
    argument above needs S_t and the keys scored to be independent of c's
    labels. In a simulation such a selection turned a true 1/3 match rate
    into 0.42 (0.46 in the one kept in tests/test_stats_keys.py). Filtering candidate keys must be
    label-agnostic, done once, before any customer exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["DEFAULT_GRID", "EProcess", "FUTILITY_BASE", "FUTILITY_Z", "METHOD", "METHOD_KEYS", "mixture_log_e", "mixture_log_e_keys", "wilson_upper"]

#: The alternatives, as fractions f of the way from chance (1/C) to a perfect copy: q = p0 + f (1 - p0).
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.85, 0.93, 0.97, 1.0)

#: The early-futility rule of new key-pool sessions (see "Early futility"): no stop before the plain rule at
#: FUTILITY_BASE trigger answers would stop, then the Wilson bound at FUTILITY_Z (bench/results/probe_budget.txt).
FUTILITY_Z, FUTILITY_BASE = 2.5, 64

METHOD = (
    "anytime-valid sequential test: per customer an e-process, the uniform mixture of likelihood ratios "
    "L_q = (q/p0)^k ((1-q)/(1-p0))^(t-k) over a grid of match rates q in (1/C, 1], a test martingale under "
    "H0 'not derived from this customer' (each trigger answer matches the secret codeword with probability "
    "exactly p0 = 1/C); Ville's inequality keeps it valid under optional stopping; a customer is named when "
    "E >= N/alpha (Bonferroni over the N customers whose copies embed the probe set); p = min(1, 1/max E), "
    "uncorrected"
)

METHOD_KEYS = (
    "anytime-valid sequential test: per customer an e-process, the uniform mixture over a grid of f in (0, 1] of "
    "likelihood ratios prod_t (q_t/p0_t)^m_t ((1-q_t)/(1-p0_t))^(1-m_t), q_t = p0_t + f (1 - p0_t), where key t's "
    "label set has k_t classes and p0_t = 1/k_t bounds its match probability under H0 'not derived from this "
    "customer' (the customer's label is uniform on the key's label set, fixed before any codeword); a test "
    "supermartingale, so Ville's inequality keeps it valid under optional stopping; a customer is named when "
    "E >= N/alpha (Bonferroni over the N customers whose copies carry the keys); p = min(1, 1/max E), uncorrected"
)


@functools.lru_cache(maxsize=64)
def _components(num_classes: int, grid: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per alternative: log(q/p0), log((1-q)/(1-p0)) (0 where q = 1), whether q = 1, log weight."""
    p0 = 1.0 / num_classes
    q = np.array([p0 + f * (1.0 - p0) for f in grid], dtype=np.float64)
    if np.any(q <= p0) or np.any(q > 1.0):
        raise ValueError("alternatives must lie in (1/C, 1]")
    perfect = q >= 1.0
    log_match = np.log(q / p0)
    log_miss = np.log(np.where(perfect, 1.0 - p0, 1.0 - q) / (1.0 - p0))  # 0 for q = 1; masked below
    log_w = np.full(q.size, -math.log(q.size))
    return log_match, log_miss, perfect, log_w


def mixture_log_e(k: np.ndarray, t: np.ndarray, num_classes: int, grid: tuple[float, ...] = DEFAULT_GRID) -> np.ndarray:
    """log E(k, t) of the mixture e-process, vectorized over any shape of (k, t)."""
    log_match, log_miss, perfect, log_w = _components(num_classes, tuple(grid))
    k = np.asarray(k, dtype=np.float64)[..., None]
    misses = np.asarray(t, dtype=np.float64)[..., None] - k
    terms = log_w + k * log_match + misses * log_miss
    terms = np.where(perfect & (misses > 0), -np.inf, terms)  # q = 1 is ruled out by a single miss
    top = terms.max(axis=-1, keepdims=True)  # finite: the q < 1 alternatives never vanish
    return np.log(np.exp(terms - top).sum(axis=-1)) + top[..., 0]


def mixture_log_e_keys(matches: ArrayLike, trials: ArrayLike, ks: Sequence[int], grid: tuple[float, ...] = DEFAULT_GRID) -> np.ndarray:
    """log E of the mixture e-process over keys of several label-set sizes, vectorized.

    ``matches[..., g]`` and ``trials[..., g]`` count the matches and the trigger answers on keys whose
    label sets have ``ks[g]`` classes (p0 = 1/ks[g]). With one size it equals :func:`mixture_log_e` bit for bit.
    """
    m = np.asarray(matches, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if m.shape[-1] != len(ks) or n.shape[-1] != len(ks):
        raise ValueError("matches and trials need one column per label-set size")
    perfect = np.zeros(len(grid), dtype=bool)
    terms: np.ndarray = np.full(len(grid), -math.log(len(grid)))
    for g, k in enumerate(ks):
        log_match, log_miss, perfect_k, _ = _components(int(k), tuple(grid))
        perfect = perfect | perfect_k
        terms = terms + m[..., g, None] * log_match + (n[..., g, None] - m[..., g, None]) * log_miss
    misses = (n - m).sum(axis=-1)[..., None]
    terms = np.where(perfect & (misses > 0), -np.inf, terms)  # q = 1 is ruled out by a single miss
    top = terms.max(axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # only a grid of f = 1 alone can vanish everywhere
    with np.errstate(divide="ignore"):
        return np.log(np.exp(terms - top).sum(axis=-1)) + top[..., 0]


def wilson_upper(matches: ArrayLike, trials: int, z: float) -> np.ndarray:
    """The Wilson score interval's upper end for a rate seen as ``matches`` in ``trials`` (1 where there are none)."""
    m = np.asarray(matches, dtype=np.float64)
    if trials <= 0:
        return np.ones_like(m)
    n, p = float(trials), m / trials
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.minimum(1.0, (centre + half) / (1 + z * z / n))


@dataclass
class EProcess:
    """The running test over N customers at once (vectorized), fed one trigger answer at a time.

    Every key has p0 = 1/num_classes unless ``update`` is given the key's label-set size ``k``
    (in-distribution keys); then the futility check wants the remaining keys' sizes, ``remaining_ks``.
    ``futility_z``, ``futility_base``: also stop for futility early (module docstring, "Early futility");
    ``futility_z`` None: only when even a perfect run could not name anyone.
    """

    num_classes: int
    customers: int
    alpha: float
    grid: tuple[float, ...] = DEFAULT_GRID
    futility_z: float | None = None
    futility_base: int = FUTILITY_BASE

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if self.num_classes < 2:
            raise ValueError("need at least 2 classes")
        self.k = np.zeros(self.customers, dtype=np.int64)  # matches, all key sizes together
        self.t = 0  # trigger answers scored (the same for every customer in the family)
        self.ks: list[int] = []  # the label-set sizes seen, in order of first appearance: the columns below
        self.matches_by_k = np.zeros((self.customers, 0), dtype=np.int64)
        self.trials_by_k = np.zeros(0, dtype=np.int64)
        self.log_e = np.zeros(self.customers)
        self.max_log_e = np.zeros(self.customers)  # running max: E(0) = 1
        self.log_threshold = math.log(max(self.customers, 1)) - math.log(self.alpha)

    @property
    def threshold(self) -> float:
        """N / alpha: the e-value a customer must reach to be named."""
        return math.exp(self.log_threshold)

    def _column(self, k: int) -> int:
        if k < 2:
            raise ValueError("a key's label set needs at least 2 classes")
        if k not in self.ks:
            self.ks.append(k)
            self.matches_by_k = np.concatenate([self.matches_by_k, np.zeros((self.customers, 1), np.int64)], axis=1)
            self.trials_by_k = np.append(self.trials_by_k, 0)
        return self.ks.index(k)

    def update(self, matched: np.ndarray, k: int | None = None) -> None:
        """Score one trigger answer: ``matched[c]`` says whether it equals customer c's label on the key.

        ``k``: the key's label-set size (its p0 is 1/k); default ``num_classes``, a noise probe.
        """
        col = self._column(self.num_classes if k is None else int(k))
        hit = np.asarray(matched, dtype=bool)
        self.k += hit
        self.t += 1
        self.matches_by_k[:, col] += hit
        self.trials_by_k[col] += 1
        self.log_e = mixture_log_e_keys(self.matches_by_k, np.broadcast_to(self.trials_by_k, self.matches_by_k.shape), self.ks, self.grid)
        np.maximum(self.max_log_e, self.log_e, out=self.max_log_e)

    @property
    def named(self) -> np.ndarray:
        """Customers whose e-process has reached N / alpha (at any time so far)."""
        return self.max_log_e >= self.log_threshold - 1e-12

    def _best_case(self, remaining: int, remaining_ks: ArrayLike | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Counts after the best future: the ``remaining`` answers on the largest remaining keys all match."""
        if remaining_ks is None:
            sizes = np.full(remaining, self.num_classes, dtype=np.int64)
        else:
            sizes = np.sort(np.asarray(remaining_ks, dtype=np.int64))[::-1][:remaining]
        ks = list(self.ks) + sorted({int(v) for v in sizes} - set(self.ks))
        extra = np.array([np.count_nonzero(sizes == v) for v in ks], dtype=np.int64)
        pad = len(ks) - len(self.ks)
        matches = np.pad(self.matches_by_k, ((0, 0), (0, pad))) + extra
        trials = np.pad(self.trials_by_k, (0, pad)) + extra
        return matches, np.broadcast_to(trials, matches.shape), ks

    def can_reach(self, remaining: int, remaining_ks: ArrayLike | None = None) -> np.ndarray:
        """Whether each customer could still be named if ``remaining`` more trigger answers all matched.

        ``remaining_ks``: the label-set sizes of the keys those answers may come from (default: all
        ``num_classes``); the best case takes the ``remaining`` largest of them.
        """
        if remaining <= 0 or (remaining_ks is not None and len(np.atleast_1d(remaining_ks)) == 0):
            return self.named.copy()
        matches, trials, ks = self._best_case(remaining, remaining_ks)
        best = mixture_log_e_keys(matches, trials, ks, self.grid)
        return self.named | (best >= self.log_threshold - 1e-12)

    def plausibly_reachable(self, remaining: int, remaining_ks: ArrayLike | None = None) -> np.ndarray:
        """Whether each customer is still in play under the early-futility rule: named, or reachable within
        ``futility_base`` answers in all by the plain rule, or reachable if the ``remaining`` answers matched at
        the Wilson upper bound (``futility_z``) on its match rate so far; :meth:`can_reach` where the rule is off."""
        hard = self.can_reach(remaining, remaining_ks)
        if self.futility_z is None or self.t == 0 or remaining <= 0 or not hard.any():
            return hard
        within_base = self.can_reach(min(remaining, max(0, self.futility_base - self.t)), remaining_ks)  # a 64-key probe goes on
        matches, trials, ks = self._best_case(remaining, remaining_ks)
        extra = trials[0] - np.pad(self.trials_by_k, (0, len(ks) - len(self.ks)))  # the remaining answers, per key size
        rate = wilson_upper(self.k, self.t, self.futility_z)[:, None]
        hits = matches - extra + np.floor(rate * extra + 0.5).astype(np.int64)
        likely = mixture_log_e_keys(hits, trials, ks, self.grid) >= self.log_threshold - 1e-12
        return self.named | (hard & (within_base | likely))

    def decided(self, remaining: int, remaining_ks: ArrayLike | None = None) -> str | None:
        """"match", "no_match" (nobody can reach the threshold with ``remaining`` triggers, or with
        ``futility_z`` set nobody plausibly can), or None."""
        if self.customers == 0:
            return "no_match"
        if self.named.any():
            return "match"
        if not self.plausibly_reachable(remaining, remaining_ks).any():
            return "no_match"
        return None

    def p_values(self) -> np.ndarray:
        """Anytime-valid p-values min(1, 1/max E), uncorrected."""
        return np.minimum(1.0, np.exp(-self.max_log_e))

    def log10_p(self) -> np.ndarray:
        return np.minimum(0.0, -self.max_log_e / math.log(10)) + 0.0  # + 0.0: no "-0.0" for p = 1

    def run(self, matches: np.ndarray, ks: ArrayLike | None = None) -> tuple[str, int]:
        """Feed the rows of ``matches`` [T, N] (trigger t matched customer c) with the probe's stopping rule.

        ``ks`` [T]: each trigger's label-set size (default: every one ``num_classes``). The same rule
        the HTTP probe applies (there, "remaining" also counts the budget): returns (verdict, trigger
        answers used). For simulations and tests.
        """
        matches = np.asarray(matches, dtype=bool)
        total = len(matches)
        sizes = None if ks is None else np.asarray(ks, dtype=np.int64)
        for t in range(total + 1):
            verdict = self.decided(total - t, None if sizes is None else sizes[t:])
            if verdict is not None:
                return verdict, t
            self.update(matches[t], None if sizes is None else int(sizes[t]))
        return "no_match", total  # pragma: no cover - decided(0) always decides

    def triggers_needed(self, rate: float = 1.0, k: int | None = None) -> int:
        """Trigger answers a copy matching with probability ``rate`` needs in expectation (rate 1: exactly), keys of size k."""
        size = self.num_classes if k is None else int(k)
        t = 0
        while t < 100000:
            t += 1
            hits = round(rate * t)
            if mixture_log_e(np.array([hits]), np.array([t]), size, self.grid)[0] >= self.log_threshold:
                return t
        return t
