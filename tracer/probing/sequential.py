"""The sequential test behind `tracer probe`: valid at whatever moment the probe stops.

Null hypothesis, per issued customer c
    H0(c): "the endpoint's model is not derived from customer c's copy".
    c's codeword is exactly uniform over the C classes and independent of
    everything the endpoint knows, so whatever the endpoint answers (even
    adaptively, even after seeing earlier triggers and answers), each new
    trigger answer agrees with c's codeword label with probability exactly
    p0 = 1/C given the past. An answer that is no class at all agrees with
    probability 0, which only helps.

Test statistic: an e-process (a test martingale), not a fixed-size p-value
    For one alternative match rate q in (1/C, 1], the likelihood ratio after t
    trigger answers with k matches is

        L_q(k, t) = (q / p0) ** k * ((1 - q) / (1 - p0)) ** (t - k),

    a nonnegative martingale with mean 1 under H0(c). We do not know how
    strongly a copy keeps its watermark (an unmodified copy answers almost
    every trigger with its codeword, a fine-tuned one fewer), so the
    statistic is the uniform mixture over a fixed grid of alternatives,
    E_c(t) = mean_j L_{q_j}(k, t): still a test martingale with mean 1.
    Ville's inequality gives P_H0[ sup_t E_c(t) >= 1/a ] <= a for every a,
    so the test stays valid under optional stopping: the probe may look
    after every answer and stop whenever it likes.

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
    (Futility only needs the all-match path: every alternative has q > p0, so
    a match never lowers any L_q and the all-match path is the best case.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_GRID", "EProcess", "METHOD", "mixture_log_e"]

#: The alternatives, as fractions f of the way from chance (1/C) to a perfect copy: q = p0 + f (1 - p0).
DEFAULT_GRID: tuple[float, ...] = (0.1, 0.2, 0.3, 0.45, 0.6, 0.75, 0.85, 0.93, 0.97, 1.0)

METHOD = (
    "anytime-valid sequential test: per customer an e-process, the uniform mixture of likelihood ratios "
    "L_q = (q/p0)^k ((1-q)/(1-p0))^(t-k) over a grid of match rates q in (1/C, 1], a test martingale under "
    "H0 'not derived from this customer' (each trigger answer matches the secret codeword with probability "
    "exactly p0 = 1/C); Ville's inequality keeps it valid under optional stopping; a customer is named when "
    "E >= N/alpha (Bonferroni over the N customers whose copies embed the probe set); p = min(1, 1/max E), "
    "uncorrected"
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


@dataclass
class EProcess:
    """The running test over N customers at once (vectorized), fed one trigger answer at a time."""

    num_classes: int
    customers: int
    alpha: float
    grid: tuple[float, ...] = DEFAULT_GRID

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if self.num_classes < 2:
            raise ValueError("need at least 2 classes")
        self.k = np.zeros(self.customers, dtype=np.int64)  # matches
        self.t = 0  # trigger answers scored (the same for every customer in the family)
        self.log_e = np.zeros(self.customers)
        self.max_log_e = np.zeros(self.customers)  # running max: E(0) = 1
        self.log_threshold = math.log(max(self.customers, 1)) - math.log(self.alpha)

    @property
    def threshold(self) -> float:
        """N / alpha: the e-value a customer must reach to be named."""
        return math.exp(self.log_threshold)

    def update(self, matched: np.ndarray) -> None:
        """Score one trigger answer: ``matched[c]`` says whether it equals customer c's codeword label."""
        self.k += np.asarray(matched, dtype=bool)
        self.t += 1
        self.log_e = mixture_log_e(self.k, np.full(self.customers, self.t), self.num_classes, self.grid)
        np.maximum(self.max_log_e, self.log_e, out=self.max_log_e)

    @property
    def named(self) -> np.ndarray:
        """Customers whose e-process has reached N / alpha (at any time so far)."""
        return self.max_log_e >= self.log_threshold - 1e-12

    def can_reach(self, remaining: int) -> np.ndarray:
        """Whether each customer could still be named if ``remaining`` more trigger answers all matched."""
        if remaining <= 0:
            return self.named.copy()
        best = mixture_log_e(self.k + remaining, np.full(self.customers, self.t + remaining), self.num_classes, self.grid)
        return self.named | (best >= self.log_threshold - 1e-12)

    def decided(self, remaining: int) -> str | None:
        """"match", "no_match" (nobody can reach the threshold with ``remaining`` triggers), or None."""
        if self.customers == 0:
            return "no_match"
        if self.named.any():
            return "match"
        if not self.can_reach(remaining).any():
            return "no_match"
        return None

    def p_values(self) -> np.ndarray:
        """Anytime-valid p-values min(1, 1/max E), uncorrected."""
        return np.minimum(1.0, np.exp(-self.max_log_e))

    def log10_p(self) -> np.ndarray:
        return np.minimum(0.0, -self.max_log_e / math.log(10)) + 0.0  # + 0.0: no "-0.0" for p = 1

    def run(self, matches: np.ndarray) -> tuple[str, int]:
        """Feed the rows of ``matches`` [T, N] (trigger t matched customer c) with the probe's stopping rule.

        The same rule the HTTP probe applies (there, "remaining" also counts the budget):
        returns (verdict, trigger answers used). For simulations and tests.
        """
        matches = np.asarray(matches, dtype=bool)
        total = len(matches)
        for t in range(total + 1):
            verdict = self.decided(total - t)
            if verdict is not None:
                return verdict, t
            self.update(matches[t])
        return "no_match", total  # pragma: no cover - decided(0) always decides

    def triggers_needed(self, rate: float = 1.0) -> int:
        """Trigger answers a copy matching with probability ``rate`` needs in expectation (rate 1: exactly)."""
        t = 0
        while t < 100000:
            t += 1
            k = round(rate * t)
            if mixture_log_e(np.array([k]), np.array([t]), self.num_classes, self.grid)[0] >= self.log_threshold:
                return t
        return t
