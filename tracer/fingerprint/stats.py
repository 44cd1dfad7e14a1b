"""The statistics of identification, exact or conservative by construction.

Null hypothesis H0(c): "the suspect model was not derived from customer c's
copy". Under H0(c) the model's answers are independent of c's secret codeword,
which is exactly uniform, so each probe agrees with probability exactly 1/C,
independently: matches ~ Binomial(n, 1/C).

* Fixed-size test (``tracer identify``): the exact upper binomial tail
  P[X >= m], computed with integer arithmetic (no approximation).
* Several customers: Holm's step-down procedure over all issued customers
  controls the family-wise error rate at alpha under any dependence: the
  probability of naming *any* innocent customer is at most alpha.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["binomial_tail", "binomial_tails", "holm", "log10_tail"]


def binomial_tails(n: int, num_classes: int) -> np.ndarray:
    """Array t with t[m] = P[Binomial(n, 1/C) >= m] for m = 0..n+1 (t[n+1] = 0), exact then rounded.

    Computed with exact integers: P[X = k] = binom(n, k) * (C-1)**(n-k) / C**n.
    Values below the float64 range round to 0.0; use :func:`log10_tail` to print them.
    """
    if n < 0 or num_classes < 2:
        raise ValueError("need n >= 0 and C >= 2")
    c = num_classes
    denom = c**n
    tails = np.zeros(n + 2, dtype=np.float64)
    acc = 0
    for k in range(n, -1, -1):
        acc += math.comb(n, k) * (c - 1) ** (n - k)
        tails[k] = float(Fraction(acc, denom))
    return tails


def binomial_tail(m: int, n: int, num_classes: int) -> float:
    """P[Binomial(n, 1/C) >= m], exact (rounded to the nearest float)."""
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    c = num_classes
    acc = sum(math.comb(n, k) * (c - 1) ** (n - k) for k in range(m, n + 1))
    return float(Fraction(acc, c**n))


def log10_tail(m: int, n: int, num_classes: int) -> float:
    """log10 P[Binomial(n, 1/C) >= m], exact even where the float p-value underflows."""
    if m <= 0:
        return 0.0
    if m > n:
        return -math.inf
    c = num_classes
    acc = sum(math.comb(n, k) * (c - 1) ** (n - k) for k in range(m, n + 1))
    return math.log10(acc) - n * math.log10(c)  # math.log10 takes arbitrarily large ints


def holm(p_values: np.ndarray, alpha: float) -> np.ndarray:
    """Boolean mask of hypotheses rejected by Holm's step-down procedure at FWER alpha."""
    p = np.asarray(p_values, dtype=np.float64)
    n = p.size
    order = np.argsort(p, kind="stable")
    rejected = np.zeros(n, dtype=bool)
    for rank, idx in enumerate(order):
        if p[idx] <= alpha / (n - rank):
            rejected[idx] = True
        else:
            break
    return rejected
